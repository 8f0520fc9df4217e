"""captum attributions of a denoiser: effective receptive fields, head importance, and which
training images a generated sample owes most to. Writes probes/<run-id>/attribution.h5.

- Receptive field: captum Saliency (or IntegratedGradients from the zero image) on
  `PixelOutputs`, a wrapper whose outputs are D(y, sigma) at the chosen output pixels, so one
  captum target is one (output channel, pixel). The probe image is repeated along the batch,
  one copy per target, so a single backward pass yields up to `batch` maps.
- Head importance: captum LayerFeatureAblation at each `*.heads_out` hook point
  ([B, head, token, head_dim], before the output projection) with one feature group per head
  and a zero baseline: the increase of the denoising loss ||D(x0 + sigma n) - x0||^2 when that
  head's output is removed.
- Influence: captum TracInCP, one checkpoint at a time (memory: one checkpoint's gradients) and
  summed: sum_k lr * grad L_k(sample) . grad L_k(train image), L the denoising loss at one fixed
  sigma with one noise draw shared by every image (common random numbers, so two gradients
  differ only through their images). Gradients are taken w.r.t. the parameters of every leaf
  module that runs in the forward pass (a container's own parameters, such as DiT's frozen
  position embedding, are left out). Samples come from the run's EMA denoiser (Euler/DDIM);
  checkpoints are the raw weights kept by `train-split --keep-checkpoints`.

File layout (one unit of work per group, resumable):

    /sigmas [S], /pixels [P, 2] (y, x), /images [I] (data-set rows)
    /rf/s{si}/i{k}/maps       float32 [pixel, C_out, C_in, H, W] signed attributions
    /rf_mean/s{si}/mass       float32 [pixel, H, W] image mean of the absolute mass
    /heads/s{si}/importance   float32 [image, layer, head] (NaN pads layers with fewer heads),
                 /loss        float32 [image]; attrs hooks (JSON, forward order)
    /influence/samples        samples [S, C, H, W], train_rows [N], nn [S], nn_distance [S, 2]
    /influence/ckpt{j}/scores float32 [sample, train] one checkpoint's term; attrs checkpoint
    /influence/total/scores   their sum; attrs sigma
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn

from probe import artifacts, seeding
from probe import checkpoints as ckpt
from probe.config import ATTRIBUTION_METHODS, AttributionConfig, to_dict
from probe.errors import ProbeError
from probe.formats.h5 import ResumableH5, up_to_date
from probe.metrics import attribution as metrics
from probe.metrics.attribution import channel_mass, nearest_two, pixel_label
from probe.models.hooks import hook_points, hooks
from probe.probes.common import check_inputs, probe_indices
from probe.seeding import fixed_noise

GRID = 3  # --pixels grid: the centres of a GRID x GRID tiling of the image


# ------------------------------------------------------------------------------- pixels


def parse_pixels(specs, height: int, width: int) -> list[tuple[int, int]]:
    """"center", "grid" and "x,y" (column x, row y; several per spec, space-separated) ->
    distinct (y, x) pixels in the order given."""
    pixels: list[tuple[int, int]] = []
    for spec in specs:
        for token in str(spec).replace(";", " ").split():
            if token == "center":
                found = [(height // 2, width // 2)]
            elif token == "grid":
                ys = [(2 * k + 1) * height // (2 * GRID) for k in range(GRID)]
                xs = [(2 * k + 1) * width // (2 * GRID) for k in range(GRID)]
                found = [(y, x) for y in ys for x in xs]
            else:
                match = re.fullmatch(r"(-?\d+),(-?\d+)", token)
                if not match:
                    raise ProbeError(f"bad pixel {token!r}: expected center, grid or x,y")
                x, y = int(match[1]), int(match[2])
                if not (0 <= x < width and 0 <= y < height):
                    raise ProbeError(f"pixel {token} lies outside the {width}x{height} image "
                                     f"(x in 0..{width - 1}, y in 0..{height - 1})")
                found = [(y, x)]
            pixels += [p for p in found if p not in pixels]
    if not pixels:
        raise ProbeError("--pixels is empty")
    return pixels


# ------------------------------------------------------------------------- receptive field


class PixelOutputs(nn.Module):
    """x [B, C, H, W] -> D(x, sigma) at `pixels` (y, x), flat [B, C_out * P]: index c * P + p."""

    def __init__(self, denoiser: nn.Module, sigma: float, pixels: list[tuple[int, int]]):
        super().__init__()
        self.denoiser, self.sigma = denoiser, float(sigma)
        self.register_buffer("ys", torch.tensor([p[0] for p in pixels]), persistent=False)
        self.register_buffer("xs", torch.tensor([p[1] for p in pixels]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, self.sigma)[:, :, self.ys, self.xs].flatten(1)


def receptive_field_maps(denoiser: nn.Module, x_noisy: torch.Tensor, sigma: float,
                         pixels: list[tuple[int, int]], method: str = "saliency",
                         ig_steps: int = 32, batch: int = 16) -> np.ndarray:
    """Attribution of each output pixel (and output channel) to every input pixel of one image.

    x_noisy [C, H, W] -> float32 [pixel, C_out, C_in, H, W]. Saliency gives the Jacobian rows
    dD_p/dy; IntegratedGradients gives y * (path-averaged gradient) from the zero image, whose
    sum is D_p(y) - D_p(0) (completeness)."""
    from captum.attr import IntegratedGradients, Saliency

    if method not in ATTRIBUTION_METHODS:
        raise ProbeError(f"--method must be one of {', '.join(ATTRIBUTION_METHODS)}")
    wrapper = PixelOutputs(denoiser, sigma, pixels).to(x_noisy.device)
    with torch.no_grad():
        c_out = wrapper(x_noisy[None]).shape[1] // len(pixels)
    targets = list(range(c_out * len(pixels)))
    maps = torch.empty(len(targets), *x_noisy.shape)
    for start in range(0, len(targets), batch):
        chunk = targets[start:start + batch]
        inputs = x_noisy.detach()[None].repeat(len(chunk), 1, 1, 1).requires_grad_(True)
        if method == "saliency":
            out = Saliency(wrapper).attribute(inputs, target=chunk, abs=False)
        else:
            out = IntegratedGradients(wrapper).attribute(
                inputs, baselines=0.0, target=chunk, n_steps=ig_steps,
                internal_batch_size=batch)
        maps[start:start + len(chunk)] = out.detach().cpu()
    # target c * P + p -> [P, C_out, C_in, H, W]
    return maps.reshape(c_out, len(pixels), *x_noisy.shape).transpose(0, 1).numpy()


# ---------------------------------------------------------------------------- head importance


def denoising_loss(denoiser: nn.Module, x_noisy: torch.Tensor, x0: torch.Tensor, sigma: float
                   ) -> torch.Tensor:
    """Per-image mean squared error of D(x_noisy, sigma) against x0, [B]."""
    return (denoiser(x_noisy, sigma) - x0).pow(2).flatten(1).mean(1)


@torch.no_grad()
def head_layers(denoiser: nn.Module, shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """(hook name, heads) of every `*.heads_out` hook point of the backbone, in forward order
    (the order the attention-locality probe numbers its layers in)."""
    backbone = getattr(denoiser, "backbone", denoiser)
    names = [n for n in hook_points(backbone) if n.endswith("heads_out")]
    if not names:
        raise ProbeError("this model has no attention heads (no *.heads_out hook points); "
                         "drop --heads")
    seen: dict[str, int] = {}

    def record(x: torch.Tensor, name: str) -> None:
        seen.setdefault(name, int(x.shape[1]))

    with hooks(backbone, {n: record for n in names}):
        denoiser(torch.zeros(1, *shape), 1.0)
    return list(seen.items())


def head_importance(denoiser: nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigma: float,
                    batch: int = 16) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Loss increase when one head's output is zeroed, per image, layer and head.

    Returns (hook names, importance float32 [B, layer, max heads] with NaN beyond a layer's
    heads, base loss [B]). captum's attribution is loss(original) - loss(ablated); we negate it
    so that a head the model needs scores positive."""
    from captum.attr import LayerFeatureAblation

    backbone = getattr(denoiser, "backbone", denoiser)
    layers = head_layers(denoiser, tuple(x0.shape[1:]))
    x_noisy = x0 + sigma * noise

    def loss(xn: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return denoising_loss(denoiser, xn, target, sigma)

    with torch.no_grad():
        base = loss(x_noisy, x0)
    importance = np.full((len(x0), len(layers), max(h for _, h in layers)), np.nan, np.float32)
    for index, (name, heads) in enumerate(layers):
        ablation = LayerFeatureAblation(loss, backbone.get_submodule(name))
        mask = torch.arange(heads, device=x0.device).reshape(1, heads, 1, 1)
        attr = ablation.attribute(x_noisy, additional_forward_args=(x0,), layer_mask=mask,
                                  perturbations_per_eval=max(1, batch // len(x0)))
        importance[:, index, :heads] = -attr[:, :, 0, 0].detach().cpu().numpy()
    return [n for n, _ in layers], importance, base.cpu().numpy()


# -------------------------------------------------------------------------------- influence


class AtSigma(nn.Module):
    """D(., sigma) at one fixed noise level: the model TracInCP differentiates."""

    def __init__(self, denoiser: nn.Module, sigma: float):
        super().__init__()
        self.denoiser, self.sigma = denoiser, float(sigma)

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_noisy, self.sigma)


def per_image_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).flatten(1).mean(1)


def gradient_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Leaf modules that own only trainable parameters and run in a forward pass on `example`:
    the `layers` TracInCP takes gradients of (an unused parameter would stop autograd)."""
    leaves = {m: n for n, m in model.named_modules()
              if not list(m.children()) and list(m.parameters())
              and all(p.requires_grad for p in m.parameters())}
    fired: set[nn.Module] = set()
    handles = [m.register_forward_hook(lambda m, i, o: fired.add(m)) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [n for m, n in leaves.items() if m in fired]


def tracin_scores(model: nn.Module, checkpoint: str | Path,
                  load: Callable[[nn.Module, str], float], train: torch.Tensor,
                  test: torch.Tensor, sigma: float, noise: torch.Tensor, batch: int = 16
                  ) -> np.ndarray:
    """One checkpoint's TracInCP term lr * grad L(test) . grad L(train), [test, train].

    `model`: a denoiser (forward(x_noisy, sigma)) whose weights `load(model, path)` replaces
    with the checkpoint's, returning the learning rate used after it. L is the denoising loss
    at `sigma` with the shared `noise` [C, H, W]."""
    from captum.influence import TracInCP

    at = AtSigma(model, sigma).eval()
    layers = gradient_layers(at, test[:1] + sigma * noise)
    train_set = torch.utils.data.TensorDataset(train + sigma * noise, train)
    with warnings.catch_warnings():  # captum warns while it switches gradients on
        warnings.simplefilter("ignore")
        tracin = TracInCP(at, train_set, [str(checkpoint)],
                          checkpoints_load_func=lambda m, path: load(m.denoiser, path),
                          layers=layers, loss_fn=per_image_loss, batch_size=batch)
        scores = tracin.influence((test + sigma * noise, test))
    return scores.detach().cpu().numpy().astype(np.float32)


def influence_checkpoints(run) -> list[Path]:
    """The raw-weight files of a run's kept checkpoints, oldest first (at least two)."""
    found = list(run.training.checkpoints) if run.training is not None else []
    if len(found) < 2:
        raise ProbeError(f"{run.run_id}: --influence needs the intermediate checkpoints that "
                         f"`probe train-split --keep-checkpoints` keeps; this run has "
                         f"{len(found)}")
    return found


def sample_noise(shape: tuple[int, ...], seed: int, count: int) -> torch.Tensor:
    """Initial noise of generated sample j, independent of how many samples are drawn."""
    return torch.stack([seeding.normal(shape, seed, "influence-sample", j)
                        for j in range(count)])


def loss_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The one noise draw every influence loss shares."""
    return seeding.normal(shape, seed, "influence-loss")


# ------------------------------------------------------------------------------- the probe


def validate(cfg: AttributionConfig) -> None:
    check_inputs(cfg.sigmas, cfg.source, cfg.seed)
    if cfg.method not in ATTRIBUTION_METHODS:
        raise ProbeError(f"--method must be one of {', '.join(ATTRIBUTION_METHODS)}")
    if min(cfg.images, cfg.ig_steps, cfg.batch, cfg.samples, cfg.sample_steps) < 1:
        raise ProbeError("--images, --ig-steps, --batch, --samples and --sample-steps must be "
                         "positive")
    if not (cfg.influence_sigma > 0 and np.isfinite(cfg.influence_sigma)):
        raise ProbeError(f"--influence-sigma must be positive, got {cfg.influence_sigma:g}")


def plan_run(run, cfg: AttributionConfig) -> dict:
    """What probing `run` does, validated before any work: pixels, images, checkpoints."""
    _, height, width = run.image_shape
    out = {"run": run.run_id, "pixels": parse_pixels(cfg.pixels, height, width),
           "images": probe_indices(run, cfg.images, cfg.source, cfg.seed).tolist()}
    if cfg.heads:
        try:
            layers = head_layers(run.denoiser, tuple(run.image_shape))
        except ProbeError as exc:
            raise ProbeError(f"{run.run_id} ({run.arch}): {exc}") from None
        out["heads"] = [n for n, _ in layers]
    if cfg.influence:
        out["checkpoints"] = [str(p) for p in influence_checkpoints(run)]
    return out


def _identity(run, cfg: AttributionConfig, p: dict) -> dict:
    """The options that change results (not --batch), the inputs and the weights."""
    options = {k: v for k, v in to_dict(cfg).items() if k != "batch"}
    return {"config": options, "pixels": [list(px) for px in p["pixels"]],
            "images": p["images"], "checkpoint_sha256": run.checkpoint_sha256,
            "checkpoints": [Path(c).parent.name for c in p.get("checkpoints", [])]}


def _dataset(group: h5py.Group, name: str, data) -> None:
    if name in group:
        del group[name]
    group.create_dataset(name, data=data)


def probe_run(run, p: dict, cfg: AttributionConfig, path: Path, command: str = "",
              log: Callable[[str], None] = lambda msg: None) -> Path:
    """Write the attribution.h5 of one loaded run at `path` (resuming a killed probe)."""
    identity = _identity(run, cfg, p)
    if up_to_date(path, identity):
        log(f"{run.run_id}: {path.name} is up to date")
        return path
    pixels, rows = p["pixels"], np.asarray(p["images"], np.int64)
    attrs = {**run.provenance(), "command": command, "config": to_dict(cfg),
             "windows": ";".join(run.windows), "method": cfg.method,
             "pixel_labels": [pixel_label(*px) for px in pixels]}
    denoiser, clean = run.denoiser, run.images(rows)
    with ResumableH5(path, attrs, identity) as out:
        _dataset(out.file, "sigmas", np.asarray(cfg.sigmas, np.float64))
        _dataset(out.file, "pixels", np.asarray(pixels, np.int64))
        _dataset(out.file, "images", rows)
        for si, sigma in enumerate(cfg.sigmas):
            noise = torch.stack([fixed_noise(tuple(clean.shape[1:]), cfg.seed, r, si)
                                 for r in rows])
            _receptive_fields(out, denoiser, clean, noise, si, sigma, pixels, cfg, run, log)
            if cfg.heads and not out.done(f"heads/s{si}"):
                hook_names, importance, base = head_importance(denoiser, clean, noise, sigma,
                                                               cfg.batch)
                group = out.begin(f"heads/s{si}")
                group.create_dataset("importance", data=importance)
                group.create_dataset("loss", data=base.astype(np.float32))
                group.attrs.update({"sigma": sigma, "hooks": json.dumps(hook_names)})
                out.complete(group)
                log(f"{run.run_id}: sigma {sigma:g}: head importance of "
                    f"{len(hook_names)} layers")
        if cfg.influence:
            _influence(out, run, cfg, [Path(c) for c in p["checkpoints"]], log)
    return path


def _receptive_fields(out: ResumableH5, denoiser, clean, noise, si, sigma, pixels, cfg, run,
                      log) -> None:
    for k in range(len(clean)):
        key = f"rf/s{si}/i{k}"
        if out.done(key):
            continue
        start = time.perf_counter()
        maps = receptive_field_maps(denoiser, clean[k] + sigma * noise[k], sigma, pixels,
                                    cfg.method, cfg.ig_steps, cfg.batch)
        group = out.begin(key)
        group.create_dataset("maps", data=maps.astype(np.float32))
        group.attrs.update({"sigma": sigma, "image": int(out.file["images"][k]),
                            "seconds": time.perf_counter() - start})
        out.complete(group)
    key = f"rf_mean/s{si}"
    if not out.done(key):
        mass = np.mean([channel_mass(out.file[f"rf/s{si}/i{k}/maps"][()])
                        for k in range(len(clean))], axis=0)
        group = out.begin(key)
        group.create_dataset("mass", data=mass.astype(np.float32))
        group.attrs["sigma"] = sigma
        out.complete(group)
        log(f"{run.run_id}: sigma {sigma:g}: {len(clean)} images x {len(pixels)} pixels "
            f"({cfg.method})")


def _influence(out: ResumableH5, run, cfg: AttributionConfig, paths: list[Path], log) -> None:
    from probe.diffusion.samplers import default_sigmas, euler

    train_rows = run.train_indices
    train = run.images(train_rows)
    shape = tuple(train.shape[1:])
    if not out.done("influence/samples"):
        samples = euler(run.denoiser, sample_noise(shape, cfg.seed, cfg.samples),
                        default_sigmas(run.denoiser, cfg.sample_steps))
        nn_index, nn_distance = nearest_two(samples.numpy(), train.numpy())
        group = out.begin("influence/samples")
        for name, data in (("samples", samples.numpy()), ("train_rows", train_rows),
                           ("nn", nn_index), ("nn_distance", nn_distance)):
            group.create_dataset(name, data=data)
        out.complete(group)
    samples = torch.from_numpy(out.file["influence/samples/samples"][()])
    noise = loss_noise(shape, cfg.seed)
    model = run.training.fresh_denoiser()
    lr = run.training.lr

    def load(denoiser, path: str) -> float:
        ckpt.load_weights(Path(path), denoiser.backbone)
        return lr

    for j, path in enumerate(paths):
        key = f"influence/ckpt{j}"
        if out.done(key):
            continue
        start = time.perf_counter()
        scores = tracin_scores(model, path, load, train, samples, cfg.influence_sigma, noise,
                               cfg.batch)
        group = out.begin(key)
        group.create_dataset("scores", data=scores)
        group.attrs.update({"checkpoint": str(path), "lr": lr,
                            "seconds": time.perf_counter() - start})
        out.complete(group)
        log(f"{run.run_id}: influence at {path.parent.name} ({len(train)} training images, "
            f"{len(samples)} samples)")
    total = sum(out.file[f"influence/ckpt{j}/scores"][()].astype(np.float64)
                for j in range(len(paths)))
    group = out.begin("influence/total")
    group.create_dataset("scores", data=total)
    group.attrs.update({"sigma": cfg.influence_sigma, "checkpoints": len(paths)})
    out.complete(group)


class Attribution:
    """The attribution probe (protocol: probe.probes.protocol)."""

    name = "attribution"
    filename = artifacts.ATTRIBUTION_H5
    table = artifacts.ATTRIBUTION_TABLE

    def validate(self, cfg: AttributionConfig) -> None:
        validate(cfg)

    def training_images(self, cfg: AttributionConfig) -> str:
        needs = (["training-image influence (--influence)"] if cfg.influence else []) + \
            (["attributions of training images (--from train)"] if cfg.source == "train" else [])
        return " and ".join(needs)

    def plan(self, runs, cfg: AttributionConfig, paths, log) -> list[dict]:
        return [plan_run(run, cfg) for run in runs]

    def probe(self, run, plan: dict, cfg: AttributionConfig, path: Path, command: str,
              log) -> None:
        probe_run(run, plan, cfg, path, command, log)

    def tidy(self, runs, paths: list[Path], cfg: AttributionConfig) -> pd.DataFrame:
        return pd.concat([metrics.table(p) for p in paths], ignore_index=True)


PROBE = Attribution()
