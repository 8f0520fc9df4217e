"""The training loop of `probe train-split`: one denoiser on one subset, resumable.

Determinism is what makes resume exact: the batch at step s is a pure function of (seed, s)
(`StepBatches`), the global RNG is reseeded from (seed, s) before every step, and the optimiser
and EMA state are checkpointed. So a killed run, resumed from its last checkpoint, ends with
the same weights as an uninterrupted one (on CPU; tested).

CUDA, bf16 autocast and torch.compile switch on by themselves when a GPU is present; launched
under torchrun / `accelerate launch` (WORLD_SIZE > 1) it runs DDP, each rank taking its slice of
every global batch, with rank 0 writing all files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from probe import artifacts, checkpoints, locks, seeding
from probe.artifacts import Artifacts
from probe.config import RunConfig, check_run_config, run_config_from_dict, to_dict
from probe.data.loader import StepBatches, gather, to_model_range, to_uint8
from probe.data.prepare import Prepared, peek, prepare
from probe.data.subsets import make_subsets, max_n, subset_indices, write_subsets
from probe.diffusion.losses import training_loss
from probe.diffusion.samplers import default_sampler, sample_from_seeds
from probe.errors import ProbeError
from probe.formats.images import save_grid
from probe.models import zoo
from probe.models.denoiser import Denoiser
from probe.optim import ema_beta, lr_at, recalibrate_norms, update_ema
from probe.progress import reporter
from probe.seeding import fixed_noise

CONFIG, STATS, SUBSET = artifacts.RUN_CONFIG, artifacts.RUN_STATS, artifacts.RUN_SUBSET


def run_id(cfg: RunConfig) -> str:
    """Readable and deterministic: rerunning the same command finds (and resumes) the same run.
    The other subset sizes trained beside it (`subsets.ns`) do not change a run's subset (S_N is
    a prefix of one permutation), so they are not part of its name: commands that train the same
    N with different companions share the run."""
    m, t, d = cfg.model, cfg.train, cfg.data
    name = f"{d.dataset}{d.size}-{m.arch.replace('/', 'p')}-n{t.n}{t.split}-{t.objective}"
    if m.windows:
        # "0-3:5" -> "0to3x5"; a preset name ("an-default") stays as it is
        name += "-w" + "_".join(w.replace(":", "x").replace("-", "to") if ":" in w else w.strip()
                                for w in m.windows)
    identity = to_dict(cfg)
    identity["subsets"].pop("ns", None)
    return f"{name}-s{t.seed}-{artifacts.sha256_json(identity)[:8]}"


def resolve(cfg: RunConfig, prepared: Prepared) -> RunConfig:
    """Fill in what the data decides: image size and channels."""
    model = dataclasses.replace(cfg.model, image_size=prepared.manifest["size"],
                                channels=prepared.manifest["channels"])
    return dataclasses.replace(cfg, model=model)


def dry_run(cfg: RunConfig, store: Artifacts, resume: Path | None = None) -> RunConfig:
    """What `train_run` would train, resolved, with what it would refuse (a config out of range,
    N larger than the split, --resume of another run) refused the same way; nothing is
    written and the data set is neither decoded nor prepared."""
    check_run_config(cfg)
    channels, partition, _ = peek(cfg.data, store)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, image_size=cfg.data.size, channels=channels))
    t = cfg.train
    pool = make_subsets(partition, dataclasses.replace(cfg.subsets, ns=(1,)), "", "")
    most = max_n(pool["pool_size"], t.split)
    if t.n > most:
        raise ProbeError(f"N={t.n} is not available: split {t.split} holds at most {most}")
    if resume:
        if not (Path(resume) / CONFIG).is_file():
            raise ProbeError(f"--resume {resume}: not a run directory (no {CONFIG})")
        _check_resume(Path(resume), cfg)
    return cfg


def _device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _check_resume(run_dir: Path, cfg: RunConfig) -> None:
    """A run directory may be resumed only by the configuration that made it (steps may grow)."""
    saved = artifacts.read_json(run_dir / CONFIG)
    saved = to_dict(run_config_from_dict(saved, str(run_dir / CONFIG)))  # damaged: one line
    if saved["model"].get("arch") != cfg.model.arch:
        raise ProbeError(f"{run_dir} is a checkpoint of {saved['model'].get('arch')}, "
                         f"not {cfg.model.arch}")
    mine = to_dict(cfg)
    for section in ("data", "model"):
        if saved[section] != mine[section]:
            raise ProbeError(f"{run_dir} was trained with another {section} configuration")


def sample_grid(denoiser: Denoiser, count: int, steps: int, seed: int, device) -> torch.Tensor:
    """The end-of-training grid, drawn with the sampler that fits the objective
    (probe.diffusion.samplers.default_sampler)."""
    seeds = [(seed, i) for i in range(count)]
    return sample_from_seeds(denoiser, seeds, default_sampler(denoiser.objective), steps,
                             device=device)


class EvalImages:
    """Fixed training and held-out images and fixed noise for the memorization curves: the
    denoising error at a few noise levels, on images the model trains on and on images it
    never sees. Train error falling below test error is memorization showing."""

    def __init__(self, images, train_rows, test_rows, cfg, device):
        count = cfg.eval_images
        self.rows = {"train": np.asarray(train_rows[:count], np.int64),
                     "test": np.asarray(test_rows[:count], np.int64)}
        self.clean = {k: to_model_range(gather(images, v)).to(device)
                      for k, v in self.rows.items() if len(v)}
        self.sigmas, self.seed = tuple(cfg.eval_sigmas), cfg.seed

    @torch.no_grad()
    def __call__(self, denoiser: Denoiser) -> dict:
        was_training = denoiser.training
        denoiser.eval()
        out = {"eval_sigmas": list(self.sigmas)}
        for source, x0 in self.clean.items():
            mse = []
            for si, sigma in enumerate(self.sigmas):
                noise = torch.stack([fixed_noise(tuple(x0.shape[1:]), self.seed, int(r), si)
                                     for r in self.rows[source]]).to(x0)
                mse.append(float((denoiser(x0 + sigma * noise, sigma) - x0).pow(2).mean()))
            out[f"eval_{source}_mse"] = mse
        if len(self.clean) == 2:  # PSNR gap on the [-1, 1] scale (peak-to-peak 2)
            gaps = [10 * math.log10(te / max(tr, 1e-20))
                    for tr, te in zip(out["eval_train_mse"], out["eval_test_mse"])]
            out["eval_psnr_gap"] = sum(gaps) / len(gaps)
        denoiser.train(was_training)
        return out


def train_run(cfg: RunConfig, store: Artifacts, command: str = "", resume: Path | None = None,
              log=None, progress: bool = True) -> Path:
    """Train (or resume, or find finished) the run described by `cfg`; returns its directory."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    rank, world = _distributed()
    check_run_config(cfg)
    t = cfg.train
    if t.split not in ("a", "b"):
        raise ProbeError(f"--split must be a or b, got {t.split!r}")
    if t.n <= 0:
        raise ProbeError(f"--n must be positive, got {t.n}")
    if t.batch % world:
        raise ProbeError(f"--batch {t.batch} is not divisible by {world} processes")

    prepared = prepare(cfg.data, store, command)
    cfg = resolve(cfg, prepared)
    doc_path, doc = write_subsets(prepared, dataclasses.replace(
        cfg.subsets, ns=tuple(sorted({*cfg.subsets.ns, t.n}))), write=rank == 0)
    indices = subset_indices(doc, t.split, t.n)
    if len(indices) != t.n:
        raise ProbeError(f"N={t.n} is not available: split {t.split} holds at most "
                         f"{max_n(doc['pool_size'], t.split)}")

    run_dir = Path(resume) if resume else store.run_dir(run_id(cfg))
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise ProbeError(f"--resume {run_dir}: not a run directory (no {CONFIG})")
        _check_resume(run_dir, cfg)
    if rank == 0:  # one trainer per run: a second one is refused in one line
        lock = locks.hold(store.lock("run", run_dir.name), f"run {run_dir.name} is being trained")
        with lock:
            return _train_locked(cfg, run_dir, prepared, doc, doc_path, indices, command,
                                 log, progress, rank, world)
    return _train_locked(cfg, run_dir, prepared, doc, doc_path, indices, command, log,
                         progress, rank, world)


def _finished(run_dir: Path, total: int) -> bool:
    """A run whose EMA weights (written last) record at least `total` steps."""
    path = run_dir / artifacts.EMA_WEIGHTS
    try:
        return path.is_file() and int(checkpoints.read_metadata(path).get("step", -1)) >= total
    except (ProbeError, TypeError, ValueError):  # damaged final weights: train them again
        return False


def _train_locked(cfg, run_dir, prepared, doc, doc_path, indices, command, log, progress,
                  rank, world) -> Path:
    t = cfg.train
    device = _device()
    total = t.total_steps
    torch.manual_seed(t.seed)
    denoiser = zoo.build_denoiser(cfg).to(device)
    ema = copy.deepcopy(denoiser).requires_grad_(False).eval()
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    subset_doc = {"dataset": doc["dataset"], "data_sha256": doc["data_sha256"],
                  "subsets_sha256": artifacts.sha256_file(doc_path), "split": t.split,
                  "n": t.n, "indices": indices.tolist()}
    config_doc = {**to_dict(cfg), "run_id": run_dir.name, "data_dir": str(prepared.directory),
                  "data_sha256": prepared.sha256,
                  "subset_sha256": artifacts.sha256_json(subset_doc["indices"]),
                  "parameters": zoo.count_parameters(denoiser.backbone), "command": command}
    metadata = {"arch": cfg.model.arch, "config": to_dict(cfg), "run_id": run_dir.name}

    start = 0
    if _finished(run_dir, total):  # without reading checkpoints: one may be damaged
        log(f"{run_dir.name}: already trained ({total} steps)")
        return run_dir
    for last in reversed(checkpoints.checkpoints(run_dir)):
        try:
            state = checkpoints.load_state(last)
            model_sd = checkpoints.read_state_dict(last / artifacts.MODEL_WEIGHTS)
            ema_sd = checkpoints.read_state_dict(last / artifacts.EMA_WEIGHTS)
        except ProbeError as exc:  # a damaged checkpoint: set aside, the one before it used
            log(f"warning: {exc}; set aside, resuming from the one before it")
            last.rename(last.with_name("damaged-" + last.name))
            continue
        checkpoints.load_state_dict(model_sd, denoiser.backbone, last / artifacts.MODEL_WEIGHTS)
        checkpoints.load_state_dict(ema_sd, ema.backbone, last / artifacts.EMA_WEIGHTS)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        log(f"{run_dir.name}: resuming at step {start}")
        break
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(run_dir / CONFIG, config_doc)
        artifacts.write_json(run_dir / SUBSET, subset_doc)
        _truncate_stats(run_dir / STATS, start)

    images = prepared.images
    batches = StepBatches(images, indices, t.batch // world, seed=t.seed, rank=rank, world=world)
    # The loss sees a Denoiser view whose backbone is wrapped (DDP, torch.compile); the plain
    # `denoiser` shares its parameters and is what gets saved.
    backbone = denoiser.backbone
    if world > 1:
        backbone = nn.parallel.DistributedDataParallel(
            backbone, device_ids=[device.index] if device.type == "cuda" else None)
    use_cuda = device.type == "cuda"
    if (t.compile == "on") or (t.compile == "auto" and use_cuda):
        backbone = torch.compile(backbone)
    model = denoiser if backbone is denoiser.backbone else \
        Denoiser(backbone, denoiser.objective, denoiser.channels, denoiser.image_size,
                 denoiser.schedule)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and use_cuda)

    curves = EvalImages(images, indices, doc["test"], t, device) if t.eval_every else None
    bar = reporter(progress and rank == 0, start, total, run_dir.name)  # on stderr
    tick, seen = time.perf_counter(), 0
    finite = torch.ones((), dtype=torch.bool, device=device)  # every loss so far (no sync)
    for step in range(start, total):
        torch.manual_seed(_step_seed(t.seed, step))
        lr = lr_at(t, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0 = batches.batch(step).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            # under DDP each rank keeps its rows of the global batch's noise (losses._draw)
            loss = training_loss(model, x0, **({"shard": (rank, world)} if world > 1 else {}))
        finite &= torch.isfinite(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(params, t.grad_clip) if t.grad_clip else None
        optimizer.step()
        update_ema(ema, denoiser, ema_beta(t, step))
        seen += x0.shape[0] * world
        done_steps = step + 1
        if rank == 0 and (done_steps % t.log_every == 0 or done_steps == total):
            now = time.perf_counter()
            record = {"step": done_steps, "loss": loss.item(), "lr": lr,
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "images_per_s": seen / max(now - tick, 1e-9)}
            if curves is not None and (done_steps % t.eval_every == 0 or done_steps == total):
                record.update(curves(denoiser))
            _append_stats(run_dir / STATS, record)
            tick, seen = time.perf_counter(), 0
            bar(done_steps, record["loss"], record["images_per_s"])
        elif rank == 0 and curves is not None and done_steps % t.eval_every == 0:
            _append_stats(run_dir / STATS, {"step": done_steps, **curves(denoiser)})
        if done_steps % t.checkpoint_every == 0 or done_steps == total:
            _stop_if_diverged(finite, run_dir, done_steps, lr)  # before anything is saved
        if rank == 0 and (done_steps % t.checkpoint_every == 0 or done_steps == total):
            checkpoints.save_checkpoint(run_dir, done_steps, denoiser.backbone, ema.backbone,
                                        optimizer, metadata, t.keep_checkpoints)
    bar(None)
    if rank == 0:
        final = {**metadata, "step": total}
        checkpoints.save_weights(run_dir / artifacts.MODEL_WEIGHTS, denoiser.backbone, final)
        # the EMA's batch-norm statistics, re-estimated with its own weights (probe.optim)
        recalibrate_norms(ema, lambda i: batches.batch(total + i).to(device), training_loss,
                          torch.Generator(device).manual_seed(seeding.state(t.seed,
                                                                             "recalibrate")))
        if t.sample_grid:
            log(f"{run_dir.name}: sampling {t.sample_grid} images")
            samples = sample_grid(ema, t.sample_grid, t.sample_steps, t.seed, device)
            save_grid(run_dir / artifacts.RUN_SAMPLES, to_uint8(samples))
        # ema.safetensors last: its presence marks a finished run.
        checkpoints.save_weights(run_dir / artifacts.EMA_WEIGHTS, ema.backbone, final)
    if world > 1:
        torch.distributed.barrier()
    return run_dir


def _stop_if_diverged(finite: torch.Tensor, run_dir: Path, step: int, lr: float) -> None:
    """A non-finite loss stops the run in one line, before its weights overwrite the last
    finite checkpoint (which stays where a rerun resumes)."""
    if bool(finite):
        return
    kept = checkpoints.checkpoints(run_dir)
    raise ProbeError(f"{run_dir.name}: the loss became non-finite (NaN or inf) before step "
                     f"{step} (lr {lr:g}); stopped, keeping the last finite checkpoint "
                     f"({kept[-1].name if kept else 'none'}); lower --lr or set --grad-clip")


def _truncate_stats(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a line half-written when the run was killed
    artifacts.write_text(path, "".join(ln + "\n" for ln in kept))


def _append_stats(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
