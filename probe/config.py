"""Frozen configuration dataclasses and their TOML round-trip: the only home of defaults.

Every command resolves its options into these objects, prints them with ``--dry-run`` and writes
them next to its outputs, so any output can be traced to the exact settings that made it.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field

import tomli_w

from probe.errors import ProbeError

# ---------------------------------------------------------------------------------------- data

DATASETS = (
    "mnist", "lfw", "digits", "patches", "disks", "c-alpha",
    "fashion-mnist", "celeba", "lsun", "imagenet", "folder",
)
CROPS = ("center", "dit", "kadkhodaie", "none")
SYNTHETIC_COUNT = 10_000  # images of a synthetic set or of `patches` when --count is not given
FID_DIGITS_STEPS = 1500  # training steps of the fid-digits network (batch 128)


@dataclass(frozen=True)
class DataConfig:
    """Which images, at what size: everything that changes the cached uint8 array."""

    dataset: str = "mnist"
    root: str | None = None  # real-format sets only; embedded and synthetic sets need none
    size: int = 32  # output height = width, in pixels
    channels: int | None = None  # 1 or 3; None keeps the source's own channel count
    crop: str = "center"  # center: largest centred square; dit: CelebA centre 140; kadkhodaie:
    # rows 29:-29, cols 9:-9 (CelebA); none: squash the whole image
    dedup: float | None = None  # drop one of each pair of 20x20 thumbnails correlating above
    classes: tuple[str, ...] = ()  # imagenet: keep only these wnids
    count: int | None = None  # synthetic sets and patches: how many (None: SYNTHETIC_COUNT)
    alpha: float = 2.0  # c-alpha: regularity of the contours
    generator_seed: int = 0  # synthetic sets and patches: seed of the generator


@dataclass(frozen=True)
class SubsetConfig:
    """Nested training subsets S_N (split a), disjoint twins (split b) and a held-out test set."""

    ns: tuple[int, ...] = (10, 100, 1000)
    seed: int = 0
    test_size: int = 512  # capped at a fifth of a set that has no test partition of its own


# ------------------------------------------------------------------------------ TOML round-trip


def to_dict(cfg) -> dict:
    """Plain dict of a (nested) config dataclass; tuples become lists, None values are dropped."""

    def clean(value):
        if dataclasses.is_dataclass(value):
            return {f.name: clean(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if getattr(value, f.name) is not None}
        if isinstance(value, tuple | list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items() if v is not None}
        return value

    return clean(cfg)


def _coerce(tp, value):
    """Turn a TOML/JSON value back into the annotated field type (tuples, nested dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else typing.Any
        return tuple(_coerce(inner, v) for v in value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls, data: dict):
    """Build ``cls`` from a dict, filling missing keys with defaults; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


def dumps_toml(cfg) -> str:
    return tomli_w.dumps(to_dict(cfg))


def loads_toml(cls, text: str):
    return from_dict(cls, tomllib.loads(text))


# --------------------------------------------------------------------------------------- model

OBJECTIVES = ("ddpm", "edm", "blind")


@dataclass(frozen=True)
class ModelConfig:
    """A backbone: a zoo preset plus what the data decides (size, channels, classes)."""

    arch: str = "dit-tiny/2"  # a preset name from `probe models list`
    image_size: int = 32
    channels: int = 1
    num_classes: int = 0  # 0: unconditional
    learn_sigma: bool = False  # ddpm: also predict the variance (2C outputs, iDDPM hybrid loss)
    windows: tuple[str, ...] = ()  # attention windows: "0-3:5", "all:p4", "an-default", ...


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained on one subset. The recipe fields (objective, lr, warm-up,
    schedule, batch, EMA) default per model family: `RECIPES` below."""

    n: int = 1000
    split: str = "a"  # a | b
    objective: str = "ddpm"
    steps: int = 2000  # optimiser steps; `kimg` (images seen) sets them instead when given
    kimg: float | None = None  # training budget in thousands of images seen: equal compute
    # for every N of a sweep, whatever the batch
    batch: int = 64
    lr: float = 1e-4  # AdamW, DiT recipe
    lr_warmup_kimg: float = 0.0  # linear ramp of the lr over the first images (EDM lr_rampup)
    lr_schedule: str = "constant"  # constant | cosine (to 0 at the last step, after warm-up)
    weight_decay: float = 0.0
    ema_halflife_kimg: float = 500.0  # EMA half-life in thousands of images (EDM's default)
    ema_rampup: float | None = 0.05  # half-life at most this x images seen so far (EDM's
    # ramp-up: a short run averages its last 5 %, a long one its last 500 kimg); None: no ramp
    ema_decay: float | None = None  # a fixed per-step EMA decay instead (e.g. DiT's 0.9999)
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: bool = False  # keep every periodic checkpoint (training-image influence)
    log_every: int = 50
    eval_every: int = 0  # steps between memorization curves in stats.jsonl (0: off)
    eval_images: int = 64  # fixed training and held-out images of the curves
    eval_sigmas: tuple[float, ...] = (0.05, 0.2, 1.0)  # noise levels of the curves, [-1, 1]
    sample_grid: int = 16  # images in the final sample grid (0: none)
    sample_steps: int = 50
    compile: str = "auto"  # auto (on CUDA) | on | off
    precision: str = "auto"  # auto (bf16 autocast on CUDA) | fp32 | bf16

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the run: from `kimg` when given, else `steps`."""
        if self.kimg is None:
            return self.steps
        return max(1, math.ceil(self.kimg * 1000 / self.batch))


RECIPE_FIELDS = ("objective", "lr", "lr_warmup_kimg", "lr_schedule", "batch",
                 "ema_halflife_kimg", "ema_rampup", "ema_decay")

# Per-family training defaults (a `train-split` option given on the command line wins). Source
# next to each: a paper's published recipe, or a measurement made with this tool.
RECIPES: dict[str, dict] = {
    # Peebles & Xie (DiT): AdamW lr 1e-4, no weight decay, constant lr, EMA 0.9999 per step at
    # batch 256, DDPM epsilon-prediction. The EMA is written as its half-life (0.9999 at batch
    # 256 halves every ~1774 kimg) with EDM's ramp-up, so a short run is not an average of its
    # first (blurry) steps. Batch 64 instead of 256: CPU-sized. On a CPU a DiT learns little in
    # minutes (dit-tiny/2, 600 steps: samples are blobs; measured here).
    "dit": {"objective": "ddpm", "lr": 1e-4, "lr_warmup_kimg": 0.0, "lr_schedule": "constant",
            "batch": 64, "ema_halflife_kimg": 1774.0, "ema_rampup": 0.05, "ema_decay": None},
    # U-DiT (Tian et al.) and DiffiT (Hatamizadeh et al.) train with DiT's recipe.
    "udit": {"objective": "ddpm", "lr": 1e-4, "lr_warmup_kimg": 0.0, "lr_schedule": "constant",
             "batch": 64, "ema_halflife_kimg": 1774.0, "ema_rampup": 0.05, "ema_decay": None},
    "diffit": {"objective": "ddpm", "lr": 1e-4, "lr_warmup_kimg": 0.0,
               "lr_schedule": "constant", "batch": 64, "ema_halflife_kimg": 1774.0,
               "ema_rampup": 0.05, "ema_decay": None},
    # Ho et al. (DDPM, CIFAR-10): lr 2e-4 after 5000 warm-up steps at batch 128 (640 kimg), EMA
    # 0.9999 (half-life ~887 kimg at batch 128), epsilon-prediction.
    "unet": {"objective": "ddpm", "lr": 2e-4, "lr_warmup_kimg": 640.0,
             "lr_schedule": "constant", "batch": 64, "ema_halflife_kimg": 887.0,
             "ema_rampup": 0.05, "ema_decay": None},
    # Measured here (benchmarks/bench_recipes.py, MNIST 16x16, one CPU thread): bf-unet-xs with
    # EDM preconditioning, lr 1e-3, batch 32, EDM's EMA (500 kimg, ramp-up 0.05) copies N = 10
    # digits at full contrast (memorized fraction >= 0.9) and draws new digits at N = 1000 (PSNR
    # gap ~0.1 dB) within 2000 steps, ~45 it/s. The blind objective of Kadkhodaie et al. on the
    # same network samples faint (contrast 0.34 after 3000 steps): a bias-free network cannot
    # set the brightness of a sample that starts at mean grey.
    "bf-unet": {"objective": "edm", "lr": 1e-3, "lr_warmup_kimg": 0.0,
                "lr_schedule": "constant", "batch": 32, "ema_halflife_kimg": 500.0,
                "ema_rampup": 0.05, "ema_decay": None},
}


def recipe(family: str) -> dict:
    """The training defaults of a model family (the DiT recipe for a family without one)."""
    return dict(RECIPES.get(family, RECIPES["dit"]))


@dataclass(frozen=True)
class RunConfig:
    """Everything that made a run: written as its config.json, read back by every probe."""

    data: DataConfig = field(default_factory=DataConfig)
    subsets: SubsetConfig = field(default_factory=SubsetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ------------------------------------------------------------------------------------- probes

PROBE_SOURCES = ("test", "train")  # probe images: the held-out set or the run's own subset


def check_sigmas(sigmas) -> tuple[float, ...]:
    """Positive, finite noise levels, at least one (every probe's --sigmas)."""
    sigmas = tuple(float(s) for s in sigmas)
    bad = [s for s in sigmas if not (s > 0 and math.isfinite(s))]
    if not sigmas or bad:
        raise ProbeError(f"noise levels must be positive, got {bad[0] if bad else 'none'}")
    return sigmas

ATTENTION_MAPS = ("all", "mean-heads", "none")  # what attention-locality keeps of the maps


@dataclass(frozen=True)
class AttentionConfig:
    """`probe attention-locality`: which inputs, what is stored, and the output size limit."""

    sigmas: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    images: int = 16  # fixed, seeded images per run
    source: str = "test"  # test | train: the run's held-out set or its own training subset
    seed: int = 0  # image choice and fixed noise (same for every run of a data set)
    maps: str = "all"  # keep the maps of all heads | their mean (mean-heads) | none
    max_gb: float = 2.0  # refuse to write more attention maps than this (uncompressed, 1e9 B)
    queries: tuple[str, ...] = ("center",)  # figure queries: "center" or "y,x" (finest grid)
    radii: tuple[int, ...] = (1, 2, 4)  # mass within these Chebyshev radii, in tokens
    batch_mb: float = 256.0  # images per forward pass: as many as fit this many MB of maps


# ------------------------------------------------------------------------------------ jacobian

JACOBIAN_METHODS = ("auto", "full", "lanczos")


@dataclass(frozen=True)
class JacobianConfig:
    """`probe jacobian-basis`: where J = dD(y, sigma)/dy is taken and how it is decomposed."""

    sigmas: tuple[float, ...] = (0.05, 0.15, 0.5)
    images: int = 4  # probe images per run
    source: str = "test"  # test | train: where the probe images come from
    method: str = "auto"  # full | lanczos | auto (full when d is small enough, see jacobian.py)
    k: int = 64  # eigen- and singular vectors kept (and all that lanczos computes)
    seed: int = 0  # choice of images and of the noise z in y = x + sigma z
    probes: int = 16  # lanczos: Hutchinson probes (deflated) for the trace and asymmetry
    tol: float = 1e-4  # lanczos: stop when every top-k residual ||S x - theta x|| <= tol |theta|


# --------------------------------------------------------------------------------- attribution

ATTRIBUTION_METHODS = ("saliency", "integrated-gradients")


@dataclass(frozen=True)
class AttributionConfig:
    """`probe attribution`: effective receptive fields, head importance, training-image influence.
    """

    sigmas: tuple[float, ...] = (0.05, 0.2, 1.0)
    images: int = 8  # fixed, seeded probe images per run
    source: str = "test"  # test | train: the run's held-out set or its own training subset
    seed: int = 0  # image choice and fixed noise (same for every run of a data set)
    pixels: tuple[str, ...] = ("center",)  # output pixels: center | grid | "x,y"
    method: str = "saliency"  # saliency | integrated-gradients
    ig_steps: int = 32  # integrated gradients: points on the path from the zero image
    batch: int = 16  # images per forward pass (output pixels, ablations, per-sample gradients)
    heads: bool = False  # head importance: loss change when one head's output is removed
    influence: bool = False  # training-image influence (TracInCP over kept checkpoints)
    samples: int = 16  # influence: generated samples to explain
    sample_steps: int = 50  # influence: Euler (DDIM) steps per sample
    influence_sigma: float = 0.25  # influence: noise level of the denoising loss


# ------------------------------------------------------------------------------ generalization

SAMPLER_CHOICES = ("auto", "ddim", "ddpm", "heun", "kadkhodaie")
# `auto`: the sampler that fits the objective (measured: probe.diffusion.samplers.default_sampler)


@dataclass(frozen=True)
class SampleConfig:
    """`probe sample`: images drawn from per-sample seeded noise (sample i uses (seed, i))."""

    n: int = 64
    sampler: str = "auto"  # auto (by objective) | ddim | ddpm | heun | kadkhodaie
    steps: int = 50  # kadkhodaie ignores it: it runs until its noise estimate is below sigma_inf
    seed: int = 0
    batch: int = 64


@dataclass(frozen=True)
class GeneralizationConfig:
    """`probe generalization`: PSNR gap, memorization, reproducibility, FID/KID/PR."""

    sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # on the [-1, 1] scale
    images: int = 256  # fixed images per source (own training subset, held-out set) for PSNR
    samples: int = 256
    sampler: str = "auto"  # auto: the sampler that fits the objective
    steps: int = 50
    seed: int = 0  # seeds the image choice, the PSNR noise and the samples (sample i: (seed, i))
    batch: int = 64
    mean_removed: bool = False  # nearest neighbours / cosines after removing each image's mean
    threshold: float = 0.9  # a pair of same-noise samples is "reproducible" above this cosine
    fid_weights: str | None = None  # FID Inception state dict or TorchScript feature extractor
    pairs: tuple[tuple[str, str], ...] = ()  # run ids compared sample by sample (with twins)


# ------------------------------------------------------------------------------ validation


def _type_error(tp, value, where: str) -> str | None:
    """Why `value` is not of annotated type `tp` (None when it is)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _type_error(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(tp):
        if not dataclasses.is_dataclass(value):
            return f"{where} must be a table, got {value!r}"
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            why = _type_error(hints[f.name], getattr(value, f.name), f"{where}.{f.name}")
            if why:
                return why
        return None
    if origin is tuple:
        if not isinstance(value, tuple):
            return f"{where} must be a list, got {value!r}"
        inner = typing.get_args(tp)[0]
        return next((w for w in (_type_error(inner, v, f"{where}[{i}]")
                                 for i, v in enumerate(value)) if w), None)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(tp, lambda v: True)
    return None if ok(value) else f"{where} must be {tp.__name__}, got {value!r}"


def _range_errors(cfg: RunConfig):
    """Why each field of a well-typed RunConfig is out of range, one reason at a time."""
    d, s, m, t = cfg.data, cfg.subsets, cfg.model, cfg.train

    def finite(v):
        return v is not None and math.isfinite(v)

    checks = [
        ("data.dataset", d.dataset, d.dataset in DATASETS, f"one of {', '.join(DATASETS)}"),
        ("data.size", d.size, 2 <= d.size <= 4096, "in 2..4096"),
        ("data.channels", d.channels, d.channels in (None, 1, 3), "1 or 3"),
        ("data.crop", d.crop, d.crop in CROPS, f"one of {', '.join(CROPS)}"),
        ("data.dedup", d.dedup, d.dedup is None or (finite(d.dedup) and 0 < d.dedup <= 1),
         "in (0, 1]"),
        ("data.count", d.count, d.count is None or d.count >= 1, ">= 1"),
        ("data.alpha", d.alpha, finite(d.alpha) and d.alpha > 0, "a finite number > 0"),
        ("data.generator_seed", d.generator_seed, d.generator_seed >= 0, ">= 0"),
        ("subsets.ns", s.ns, bool(s.ns) and min(s.ns) >= 1, "one or more sizes >= 1"),
        ("subsets.seed", s.seed, s.seed >= 0, ">= 0"),
        ("subsets.test_size", s.test_size, s.test_size >= 0, ">= 0"),
        ("model.arch", m.arch, bool(m.arch.strip()), "a preset name"),
        ("model.image_size", m.image_size, 2 <= m.image_size <= 4096, "in 2..4096"),
        ("model.channels", m.channels, m.channels in (1, 3), "1 or 3"),
        ("model.num_classes", m.num_classes, m.num_classes >= 0, ">= 0"),
        ("train.n", t.n, t.n >= 1, ">= 1"),
        ("train.split", t.split, t.split in ("a", "b"), "a or b"),
        ("train.objective", t.objective, t.objective in OBJECTIVES,
         f"one of {', '.join(OBJECTIVES)}"),
        ("train.steps", t.steps, t.steps >= 1, ">= 1"),
        ("train.kimg", t.kimg, t.kimg is None or (finite(t.kimg) and t.kimg > 0),
         "a finite number > 0"),
        ("train.batch", t.batch, t.batch >= 1, ">= 1"),
        ("train.lr", t.lr, finite(t.lr) and t.lr > 0, "a finite number > 0"),
        ("train.lr_warmup_kimg", t.lr_warmup_kimg,
         finite(t.lr_warmup_kimg) and t.lr_warmup_kimg >= 0, "a finite number >= 0"),
        ("train.lr_schedule", t.lr_schedule, t.lr_schedule in LR_SCHEDULES,
         f"one of {', '.join(LR_SCHEDULES)}"),
        ("train.weight_decay", t.weight_decay, finite(t.weight_decay) and t.weight_decay >= 0,
         "a finite number >= 0"),
        ("train.ema_halflife_kimg", t.ema_halflife_kimg,
         finite(t.ema_halflife_kimg) and t.ema_halflife_kimg > 0, "a finite number > 0"),
        ("train.ema_rampup", t.ema_rampup,
         t.ema_rampup is None or (finite(t.ema_rampup) and t.ema_rampup >= 0),
         "a finite number >= 0"),
        ("train.ema_decay", t.ema_decay,
         t.ema_decay is None or (finite(t.ema_decay) and 0 <= t.ema_decay <= 1), "in [0, 1]"),
        ("train.grad_clip", t.grad_clip, finite(t.grad_clip) and t.grad_clip >= 0,
         "a finite number >= 0"),
        ("train.seed", t.seed, t.seed >= 0, ">= 0"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 1, ">= 1"),
        ("train.log_every", t.log_every, t.log_every >= 1, ">= 1"),
        ("train.eval_every", t.eval_every, t.eval_every >= 0, ">= 0"),
        ("train.eval_images", t.eval_images, t.eval_images >= 1, ">= 1"),
        ("train.eval_sigmas", t.eval_sigmas,
         bool(t.eval_sigmas) and all(finite(v) and v > 0 for v in t.eval_sigmas),
         "finite numbers > 0"),
        ("train.sample_grid", t.sample_grid, t.sample_grid >= 0, ">= 0"),
        ("train.sample_steps", t.sample_steps, t.sample_steps >= 1, ">= 1"),
        ("train.compile", t.compile, t.compile in ("auto", "on", "off"), "auto, on or off"),
        ("train.precision", t.precision, t.precision in ("auto", "fp32", "bf16"),
         "auto, fp32 or bf16"),
    ]
    for name, value, good, want in checks:
        if not good:
            yield f"{name} must be {want}, got {value!r}"


def check_run_config(cfg: RunConfig, where: str = "") -> RunConfig:
    """A one-line ProbeError for the first field of `cfg` of the wrong type or out of range
    (`where` prefixes it: the file it came from); returns `cfg`. Run once on every config a run
    is trained from and on every config.json a probe loads."""
    prefix = f"{where}: " if where else ""
    why = _type_error(RunConfig, cfg, "config") or next(_range_errors(cfg), None)
    if why:
        raise ProbeError(prefix + why.removeprefix("config."))
    return cfg


def run_config_from_dict(data, where: str = "") -> RunConfig:
    """A RunConfig from a run's config.json, checked (`check_run_config`): a damaged or
    hand-edited file is one line naming what is wrong."""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise ProbeError(f"{prefix}not a run configuration (a JSON object)")
    sections = {k: data[k] for k in ("data", "subsets", "model", "train") if k in data}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise ProbeError(f"{prefix}{key} must be a table, got {value!r}")
    try:
        cfg = from_dict(RunConfig, sections)
    except (ValueError, TypeError, AttributeError) as exc:  # unknown fields, wrong shapes
        raise ProbeError(f"{prefix}{exc}") from None
    return check_run_config(cfg, where)


# ------------------------------------------------------------------- analytic denoisers

BASELINE_KINDS = ("ideal", "wiener", "ls", "els")
BOUNDARIES = ("zeros", "periodic")  # ls/els padding: zeros as conv nets, or circular


@dataclass(frozen=True)
class BaselineConfig:
    """`probe baseline KIND`: an analytic denoiser built from a training subset
    (probe.baselines)."""

    kind: str = "els"  # ideal | wiener | ls | els
    patch: int = 5  # ls/els: the P x P neighbourhood, odd, at most the image size
    schedule: tuple[tuple[float, int], ...] = ()  # ls/els: (sigma, patch) knots; wins over patch
    boundary: str = "zeros"  # ls/els: zeros (as the conv nets) or periodic
    stationary: bool = False  # wiener: circulant (Fourier-diagonal) covariance
    chunk: int = 0  # stream training images from disk this many at a time (0: hold in memory)


COMPARE_THEORIES = ("ideal", "wiener", "ls", "els")


@dataclass(frozen=True)
class CompareConfig:
    """`probe compare RUN --to ...`: a trained model against analytic denoisers of its own
    training subset: one-step r^2 / cosine per sigma and trajectory r^2 from the same noise."""

    theories: tuple[str, ...] = ("ideal", "wiener", "els")
    sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
    images: int = 32  # fixed noisy images per source (training subset, held-out set)
    samples: int = 16  # trajectories from the noise of (seed, i)
    sampler: str = "ddim"  # deterministic: measured median ELS r^2 0.76 (ddim) vs 0.47 (the
    # ancestral ddpm that auto picks for edm) at N = 1000 (docs/results/baselines.md)
    steps: int = 50
    seed: int = 0
    batch: int = 16
    patch: int = 0  # ls/els patch; 0: calibrated per sigma against the model
    patches: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 13, 15)  # calibration candidates (<= image)
    calibration_images: int = 8  # noisy training images per sigma for the calibration
    boundary: str = "zeros"
    stationary: bool = False
    chunk: int = 0
