"""`probe generalization`: did a run generalize or memorize?

Per run, into probes/<run-id>/generalization.h5 (each group resumable, see ResumableH5):
- `psnr`: denoising PSNR [sigma, image] on fixed images of its own training subset (`train`)
  and of the held-out set (`test`), fixed noise per (image, sigma) (An et al.'s PSNR gap);
- `samples`: images drawn from the noise of (seed, i), the same for every run;
- `neighbours`: each sample's nearest training images, l2 (`l2_rows`, `l2_distances`, up to 50
  for Carlini et al.'s ratio; rows are data-set rows) and cosine (`cosine_rows`,
  `cosine_similarities`), `nearest_image` (uint8 [n, H, W, C], the l2-nearest);
- `quality/<weights-sha>`: FID, KID, precision/recall against held-out images (attrs), when a
  feature extractor is given;
- `pairs/<other-run-id>`: `cosine` [n] between this run's sample i and the other run's sample i
  (Kadkhodaie et al.'s same-noise reproducibility).
The tidy table (probes/<run-id>/generalization.parquet/.csv, upserted into tables/generalization)
is built from those arrays: columns run, arch, n, split, dataset, sigma (NaN where it does not
apply), metric, value, pair, note.

Pairs: runs given together that differ only in their split (same data, N, model and objective;
one a, one b) are paired by themselves; --pair adds others (same data set and resolution).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from probe import artifacts
from probe.artifacts import Artifacts
from probe.config import GeneralizationConfig, to_dict
from probe.data.loader import to_uint8
from probe.diffusion.samplers import sampler_sigmas
from probe.errors import ProbeError
from probe.metrics import fid as fidm
from probe.metrics import memorization as mem
from probe.metrics.psnr import denoising_psnr, psnr_gap
from probe.metrics.tables import upsert, write_table
from probe.probes.common import ResumableH5, parse_sigmas, probe_indices
from probe.probes.samples import check_sampling, device, generate, sample_seeds, write_samples

H5, TABLE = "generalization.h5", "generalization"
COLUMNS = ("run", "arch", "n", "split", "dataset", "sigma", "metric", "value", "pair", "note")
NO_WEIGHTS = "skipped: no --fid-weights given (no feature extractor is downloaded)"
QUALITY = ("fid", "kid", "precision", "recall")


# ---------------------------------------------------------------------------------- inputs


def check_config(cfg: GeneralizationConfig) -> GeneralizationConfig:
    parse_sigmas(",".join(repr(float(s)) for s in cfg.sigmas))  # sigma <= 0: one line
    check_sampling(cfg.sampler, cfg.steps, cfg.samples, cfg.seed, cfg.batch)
    if cfg.images < 1:
        raise ProbeError(f"--images must be at least 1, got {cfg.images}")
    if not 0 < cfg.threshold <= 1:
        raise ProbeError(f"--threshold must be in (0, 1], got {cfg.threshold}")
    if cfg.fid_weights is not None:
        if not Path(cfg.fid_weights).is_file():
            raise ProbeError(f"FID weights file not found: {cfg.fid_weights}")
        if cfg.samples <= fidm.PR_K:
            raise ProbeError(f"--samples must exceed {fidm.PR_K} for precision/recall")
    return cfg


def _data_label(run) -> str:
    d = run.config.data
    return f"{d.dataset} {d.size}px"


def check_pair(a, b) -> None:
    """Two runs can be compared sample by sample only on the same images at the same size."""
    if a.directory == b.directory:
        raise ProbeError(f"--pair needs two different runs, got {a.run_id} twice")
    if a.config.model.image_size != b.config.model.image_size or \
            a.config.model.channels != b.config.model.channels:
        raise ProbeError(f"cannot pair runs of different resolutions: {a.run_id} "
                         f"({_data_label(a)}) and {b.run_id} ({_data_label(b)})")
    if a.prepared.sha256 != b.prepared.sha256:
        raise ProbeError(f"cannot pair runs of different data sets: {a.run_id} "
                         f"({_data_label(a)}) and {b.run_id} ({_data_label(b)})")


def _pair_key(run) -> str:
    return json.dumps([run.prepared.sha256, run.n, to_dict(run.config.model),
                       run.config.train.objective], sort_keys=True)


def resolve_pairs(runs: list, explicit: list[tuple] = (), log=None) -> list[tuple]:
    """Explicit pairs (checked), plus the a/b twins among `runs` (unambiguous ones only)."""
    pairs = []
    for a, b in explicit:
        check_pair(a, b)
        pairs.append((a, b))
    groups: dict[str, dict[str, list]] = {}
    for run in runs:
        groups.setdefault(_pair_key(run), {}).setdefault(run.split, []).append(run)
    for splits in groups.values():
        a, b = splits.get("a", []), splits.get("b", [])
        if len(a) == 1 and len(b) == 1:
            pairs.append((a[0], b[0]))
        elif a and b and log:
            log(f"not pairing {len(a)} split-a and {len(b)} split-b runs of N={a[0].n}: "
                "ambiguous, use --pair")
    seen, unique = set(), []
    for a, b in pairs:
        key = frozenset((a.directory, b.directory))
        if key not in seen:
            seen.add(key)
            unique.append((a, b))
    return unique


# ---------------------------------------------------------------------------------- probing


class _TrainingRows:
    """A run's training images, read chunk by chunk by `nearest_neighbours`."""

    def __init__(self, run):
        self.run, self.indices = run, run.train_indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        return self.run.images(self.indices[key])


@dataclass
class _Session:
    cfg: GeneralizationConfig
    store: Artifacts
    command: str
    log: object
    dev: torch.device
    extractor: object = None
    samples: dict = field(default_factory=dict)  # run directory -> samples tensor

    def samples_of(self, run) -> torch.Tensor:
        """The run's samples: from memory, from its finished file of the same settings, or
        drawn now (and kept for its own turn)."""
        if run.directory not in self.samples:
            stored = _stored_samples(self.store.probe_dir(run.run_id) / H5,
                                     _identity(run, self.cfg))
            if stored is not None:
                self.samples[run.directory] = stored
                return stored
            c = self.cfg
            self.log(f"{run.run_id}: sampling {c.samples} images ({c.sampler}"
                     + ("" if c.sampler == "kadkhodaie" else f", {c.steps} steps") + ")")
            self.samples[run.directory] = generate(
                run.denoiser, sample_seeds(c.seed, c.samples), c.sampler, c.steps, c.batch,
                self.dev)
        return self.samples[run.directory]


def _identity(run, cfg: GeneralizationConfig) -> dict:
    core = {k: v for k, v in to_dict(cfg).items()
            if k not in ("batch", "threshold", "fid_weights")}
    return {"checkpoint_sha256": run.checkpoint_sha256, "data_sha256": run.prepared.sha256,
            **core}


def _stored_samples(path: Path, identity: dict) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("_identity") != json.dumps(identity, sort_keys=True, default=str):
                return None
            if not ("samples" in f and f["samples"].attrs.get("complete", False)):
                return None
            return torch.from_numpy(f["samples/images"][:])
    except OSError:
        return None


def _reopen(out: ResumableH5) -> None:
    """Continue a finished file of the same settings (new pairs or weights add groups)."""
    if out.path.is_file() and not out.partial.exists():
        try:
            with h5py.File(out.path, "r") as f:
                same = f.attrs.get("_identity") == out.identity
        except OSError:
            same = False
        if same:
            shutil.copyfile(out.path, out.partial)


def _probe_psnr(run, s: _Session, out: ResumableH5) -> None:
    c = s.cfg
    group = out.begin("psnr")
    group.create_dataset("sigmas", data=np.asarray(c.sigmas, np.float64))
    for source in ("train", "test"):
        rows = probe_indices(run, c.images, source, c.seed)
        s.log(f"{run.run_id}: PSNR on {len(rows)} {source} images x {len(c.sigmas)} sigmas")
        values = denoising_psnr(run.denoiser.to(s.dev), run.images(rows), rows, c.sigmas,
                                c.seed, c.batch, s.dev)
        group.create_dataset(source, data=values)
        group.create_dataset(f"{source}_rows", data=rows)
    out.complete(group)


def _probe_neighbours(run, s: _Session, out: ResumableH5, samples: torch.Tensor) -> None:
    c = s.cfg
    group = out.begin("neighbours")
    reference = _TrainingRows(run)
    s.log(f"{run.run_id}: nearest neighbours of {len(samples)} samples among "
          f"{len(reference)} training images")
    l2_idx, l2_dist = mem.nearest_neighbours(samples, reference, mem.CARLINI_K, "l2",
                                             c.mean_removed, device=s.dev)
    cos_idx, cos_sim = mem.nearest_neighbours(samples, reference, 2, "cosine", c.mean_removed,
                                              device=s.dev)
    rows = reference.indices
    group.create_dataset("l2_rows", data=rows[l2_idx.numpy()])
    group.create_dataset("l2_distances", data=l2_dist.numpy())
    group.create_dataset("cosine_rows", data=rows[cos_idx.numpy()])
    group.create_dataset("cosine_similarities", data=cos_sim.numpy())
    group.create_dataset("nearest_image", data=to_uint8(run.images(rows[l2_idx[:, 0].numpy()])))
    group.create_dataset("nn_ratio", data=mem.nn_ratio(l2_dist.numpy()))
    group.create_dataset("carlini_ratio", data=mem.carlini_ratio(l2_dist.numpy()))
    group.attrs["mean_removed"] = c.mean_removed
    out.complete(group)


def _probe_quality(run, s: _Session, out: ResumableH5, key: str, samples: torch.Tensor) -> None:
    group = out.begin(key)
    test = run.test_indices
    s.log(f"{run.run_id}: features of {len(samples)} samples and {len(test)} held-out images "
          f"({s.extractor.kind})")
    real = s.extractor(run.images(test))
    fake = s.extractor(samples)
    group.attrs["fid"] = fidm.fid(real, fake)
    group.attrs["kid"], group.attrs["kid_std"] = fidm.kid(real, fake, seed=s.cfg.seed)
    group.attrs["precision"], group.attrs["recall"] = fidm.precision_recall(real, fake)
    group.attrs["extractor"] = f"{s.extractor.kind}: {s.extractor.path}"
    group.attrs["n_real"], group.attrs["n_fake"] = len(real), len(fake)
    out.complete(group)


def _probe_pair(run, other, s: _Session, out: ResumableH5, samples: torch.Tensor) -> None:
    group = out.begin(f"pairs/{other.run_id}")
    group.create_dataset("cosine", data=mem.pair_cosine(samples, s.samples_of(other),
                                                        s.cfg.mean_removed))
    group.attrs["other_split"], group.attrs["other_n"] = other.split, other.n
    out.complete(group)


def probe_run(run, partners: list, s: _Session) -> pd.DataFrame:
    """All groups of one run's generalization.h5, then its table rows."""
    c = s.cfg
    path = s.store.probe_dir(run.run_id) / H5
    attrs = {**run.provenance(), "command": s.command, "config": to_dict(c),
             "sample_sigmas": sampler_sigmas(c.sampler, run.denoiser, c.steps).tolist()}
    quality_key = None
    if s.extractor is not None:
        quality_key = f"quality/{artifacts.sha256_file(s.extractor.path)[:16]}"
    out = ResumableH5(path, attrs, _identity(run, c))
    _reopen(out)
    with out:
        if not out.done("psnr"):
            _probe_psnr(run, s, out)
        if out.done("samples"):
            s.samples.setdefault(run.directory, torch.from_numpy(out.file["samples/images"][:]))
        else:
            write_samples(out.begin("samples"), s.samples_of(run),
                          sample_seeds(c.seed, c.samples), c.sampler, c.steps)
            out.complete(out.file["samples"])
        samples = s.samples[run.directory]
        if not out.done("neighbours"):
            _probe_neighbours(run, s, out, samples)
        if quality_key and not out.done(quality_key):
            _probe_quality(run, s, out, quality_key, samples)
        for other in partners:
            if not out.done(f"pairs/{other.run_id}"):
                _probe_pair(run, other, s, out, samples)
        table = _table(run, out.file, c, quality_key, [o.run_id for o in partners])
    write_table(table, s.store.probe_dir(run.run_id) / TABLE)
    return table


# ------------------------------------------------------------------------------------ table


def _table(run, f: h5py.File, cfg: GeneralizationConfig, quality_key, partners) -> pd.DataFrame:
    rows = []

    def add(metric, value, sigma=math.nan, pair="", note=""):
        rows.append({"sigma": float(sigma), "metric": metric, "value": float(value),
                     "pair": pair, "note": note})

    sigmas, train, test = f["psnr/sigmas"][:], f["psnr/train"][:], f["psnr/test"][:]
    gap = psnr_gap(train, test)
    for sigma, tr, te, g in zip(sigmas, train.mean(1), test.mean(1), gap):
        add("psnr_train", tr, sigma)
        add("psnr_test", te, sigma)
        add("psnr_gap", g, sigma)
    add("psnr_gap_mean", gap.mean())
    distances = f["neighbours/l2_distances"][:]
    add("memorized_fraction", mem.memorized_fraction(distances),
        note=f"||x - NN1|| / ||x - NN2|| < {mem.NN_RATIO_THRESHOLD:.3g}")
    add("nn_ratio_mean", np.nanmean(f["neighbours/nn_ratio"][:]))
    add("carlini_ratio", f["neighbours/carlini_ratio"][:].mean(),
        note=f"mean over samples; k = {min(mem.CARLINI_K, distances.shape[1])}")
    add("nn_cosine_mean", f["neighbours/cosine_similarities"][:, 0].mean())
    for other in partners:
        cos = f[f"pairs/{other}/cosine"][:]
        add("reproducibility", cos.mean(), pair=other, note="mean cosine, same noise")
        add("reproducible_fraction", mem.reproducible_fraction(cos, cfg.threshold), pair=other,
            note=f"cosine > {cfg.threshold:g}")
    if quality_key is None:
        for metric in QUALITY:
            add(metric, math.nan, note=NO_WEIGHTS)
    else:
        g = f[quality_key]
        note = f"{g.attrs['extractor']}; {g.attrs['n_fake']} samples vs " \
               f"{g.attrs['n_real']} held-out images"
        for metric in QUALITY:
            add(metric, g.attrs[metric], note=note)
    df = pd.DataFrame(rows)
    df.insert(0, "dataset", run.config.data.dataset)
    df.insert(0, "split", run.split)
    df.insert(0, "n", run.n)
    df.insert(0, "arch", run.arch)
    df.insert(0, "run", run.run_id)
    return df[list(COLUMNS)]


# ---------------------------------------------------------------------------------- driver


def run_generalization(runs, store: Artifacts, cfg: GeneralizationConfig | None = None,
                       pairs=(), command: str = "", log=None) -> pd.DataFrame:
    """Probe `runs` (paths, ids or loaded Runs) and the runs of `pairs` ((a, b) likewise);
    returns the tidy table of them all (also written per run and upserted into
    tables/generalization)."""
    from probe.runs import load_run

    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = check_config(cfg or GeneralizationConfig())
    loaded: dict[Path, object] = {}

    def get(ref):  # a path or id, or a loaded Run (e.g. with its denoiser swapped for a test)
        run = ref if hasattr(ref, "denoiser") else load_run(ref, store)
        return loaded.setdefault(run.directory.resolve(), run)

    for ref in runs:
        get(ref)
    explicit = [(get(a), get(b)) for a, b in pairs]
    if not loaded:
        raise ProbeError("give at least one run")
    resolved = resolve_pairs(list(loaded.values()), explicit, log)
    extractor = fidm.load_feature_extractor(cfg.fid_weights) if cfg.fid_weights else None
    session = _Session(cfg, store, command, log, device(), extractor)
    tables = []
    for run in loaded.values():
        partners = [b for a, b in resolved if a is run] + [a for a, b in resolved if b is run]
        tables.append(probe_run(run, partners, session))
    table = pd.concat(tables, ignore_index=True)
    upsert(store, TABLE, table)
    return table


def text_report(table: pd.DataFrame) -> str:
    """PSNR gap and memorization per run, one line each (plus reproducibility per pair)."""
    lines = [f"{'run':48s} {'N':>7s} {'split':>5s} {'PSNR gap (dB)':>13s} {'memorized':>9s} "
             f"{'Carlini':>7s} {'reproducible':>12s} {'FID':>8s}"]
    def first(rows, metric):
        v = rows.loc[rows.metric == metric, "value"]
        return float(v.iloc[0]) if len(v) else math.nan

    for run, rows in table.groupby("run", sort=False):
        repro = rows.loc[rows.metric == "reproducible_fraction", "value"]
        repro_text = f"{repro.mean():12.2f}" if len(repro) else f"{'-':>12s}"
        fid_value = first(rows, "fid")
        fid_text = f"{fid_value:8.2f}" if math.isfinite(fid_value) else f"{'-':>8s}"
        lines.append(f"{run:48s} {int(rows.n.iloc[0]):>7d} {rows.split.iloc[0]:>5s} "
                     f"{first(rows, 'psnr_gap_mean'):13.2f} "
                     f"{first(rows, 'memorized_fraction'):9.2f} "
                     f"{first(rows, 'carlini_ratio'):7.2f} {repro_text} {fid_text}")
    if table.metric.isin(QUALITY).any() and table.loc[table.metric == "fid", "value"].isna().all():
        lines.append(f"FID/KID/precision/recall {NO_WEIGHTS}")
    return "\n".join(lines)
