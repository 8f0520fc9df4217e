"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import math

import torch


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every trainable weight (adaLN-Zero's zeros too) with small noise, so a fresh
    model computes something non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                fan_in = p.shape[-1] if p.ndim > 1 else 10
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(fan_in))
    return model


def build_preset(arch: str, channels: int = 1, learn_sigma: bool = False, num_classes: int = 0,
                 image_size: int = 16, windows=()) -> torch.nn.Module:
    """A zoo preset, deterministically initialised."""
    from probe.config import ModelConfig
    from probe.models import zoo

    torch.manual_seed(0)
    return zoo.build(ModelConfig(arch=arch, image_size=image_size, channels=channels,
                                 learn_sigma=learn_sigma, num_classes=num_classes,
                                 windows=windows))


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Move every weight off its initial value (zero-initialised heads would hide the rest)."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


class FakeRun:
    """A `probe.runs.Run` around any denoiser and random images: what a probe may read, and no
    more (a run trained here, a diffusers folder and an analytic denoiser offer the same)."""

    def __init__(self, denoiser, run_id: str = "fake", arch: str = "dit-tiny/2",
                 n: int | None = 10, split: str = "a", pixels: torch.Tensor | None = None,
                 train: int = 2):
        import numpy as np

        self.denoiser, self.run_id, self.arch, self.n, self.split = denoiser, run_id, arch, n, split
        self.pixels = pixels if pixels is not None else torch.rand(6, 1, 8, 8) * 2 - 1
        self.image_shape = tuple(self.pixels.shape[1:])
        self.value_range = (-1.0, 1.0)
        self.dataset, self.objective, self.windows = "fake", "ddpm", ()
        self.data_sha256, self.checkpoint_sha256 = "d", "0" * 64
        self.test_indices = np.arange(len(self.pixels))
        self.train_indices = np.arange(train)
        self.training = None

    def images(self, indices):
        import numpy as np

        return self.pixels[torch.as_tensor(np.asarray(indices))]

    def provenance(self) -> dict:
        return {"run_id": self.run_id, "arch": self.arch, "n": self.n, "split": self.split,
                "dataset": self.dataset, "objective": self.objective, "checkpoint": "none",
                "checkpoint_sha256": self.checkpoint_sha256, "data_sha256": self.data_sha256,
                "subset_sha256": "s", "format": "fake"}


def probe_one(probe, run, store, cfg, command: str = ""):
    """Plan and probe one run into its file under `store` (what the driver does for each run);
    returns the file's path."""
    path = store.probe_file(run.run_id, probe.filename)
    (plan,) = probe.plan([run], cfg, [path], lambda msg: None)
    probe.probe(run, plan, cfg, path, command, lambda msg: None)
    return path


def assert_one_line_error(result, *fragments: str) -> None:
    """A click CliRunner result that failed as the CLI promises: exit code 2, one line on
    stderr starting "error: " and holding every fragment, no traceback, no escaped exception."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr,
                                   result.exception)
    assert isinstance(result.exception, SystemExit)  # not an escaped exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
