"""Denoisers researchers already hold, read from their files: `--model PATH` on every probe.

The format is detected from the files, never from a flag, and is named in every probe output's
provenance (`format`, with the file and its sha256):

- `probe-run`: a run directory of this tool (`config.json` holding the run's config): [-1, 1],
  its own objective (probe.runs.load_run).
- `diffusers`: a `UNet2DModel` / `DiTTransformer2DModel` model folder (`config.json` + weights,
  `scheduler_config.json` beside it, as the public DDPM CIFAR-10 repository has them) or a
  pipeline folder (`model_index.json`, `unet/` or `transformer/`, `scheduler/`, as
  `DDPMPipeline.save_pretrained` writes it): [-1, 1]; schedule and prediction type from the
  scheduler config (probe.models.diffusers_local).
- `mohan2020`: a `.pt` of Mohan et al. (ICLR 2020): a dict with `model` (a list of one state
  dict) and `args` (an argparse.Namespace; `args.model` is `dncnn` or `unet`): [0, 1], blind
  (probe.models.mohan).
- `kadkhodaie-unet`: a `model.pt` of Kadkhodaie et al. (ICLR 2024): the DataParallel state
  dict (`module.encoder.0.0.weight`, ...) of their bias-free UNet, read into the `bf-unet`
  presets (probe.models.unet): [0, 1], blind, predicts the noise.
- `kadkhodaie-bf-cnn`: their `BF_CNN` state dict (`conv_layers.{i}.weight`,
  `BN_layers.{i}.running_sd`, `.gammas`): [0, 1], blind, predicts the noise (`BFCNN` below).
- `python`: `module.py:factory` with `--weights FILE.safetensors`: `factory()` returns an
  nn.Module mapping the noisy image (and its noise level, per `--noise-input`) to the clean
  one, in `--value-range` (probe.models.native states the conventions).

`.pt` files are read with `torch.load(weights_only=True)` inside
`torch.serialization.safe_globals([argparse.Namespace])`: tensors, containers and that one class
and nothing else, so a pickle that would run code is refused, never run. A truncated file, a
state dict of another architecture (the architecture is inferred from the tensor names and
shapes and loaded strictly), a diffusers folder without weights or scheduler config, or a
`--value-range` that contradicts what the format says, is one line (ProbeError). Only the
`python` format executes user code, the module the user names.

Every model comes back behind D(x_noisy, sigma) on [-1, 1] (probe.models.native for the [0, 1]
networks, probe.models.diffusers_local.ScheduledDenoiser for diffusers), with `native_range`
telling the Jacobian probe where the network's own zero lies.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from probe import artifacts, checkpoints
from probe.errors import ProbeError

FORMATS = ("probe-run", "diffusers", "mohan2020", "kadkhodaie-unet", "kadkhodaie-bf-cnn",
           "python")
VALUE_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
TORCH_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    """What `--model` and its companions say about one outside model."""

    path: str
    weights: str | None = None  # python format: the safetensors file
    value_range: tuple[float, float] | None = None  # None: what the format says
    noise_input: str | None = None  # python format: none | sigma | t


@dataclass
class LoadedModel:
    """A model read from its files, behind D(x_noisy, sigma) on [-1, 1] (eval, CPU)."""

    denoiser: nn.Module
    arch: str
    format: str
    weights: Path
    sha256: str
    native_range: tuple[float, float]
    channels: int
    image_size: int | None  # None: any size (fully convolutional)
    objective: str
    details: dict = field(default_factory=dict)  # more provenance (diffusers: the schedule)


def parse_value_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    key = text.replace(" ", "")
    if key not in VALUE_RANGES:
        raise ProbeError(f"--value-range must be 0,1 or -1,1, got {text!r}")
    return VALUE_RANGES[key]


def is_python_spec(path: str) -> bool:
    return bool(re.fullmatch(r".+\.py:[A-Za-z_][A-Za-z0-9_]*", str(path)))


def safe_torch_load(path: Path):
    """A torch.save file read without executing code (see the module doc)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines()
                       if "Unsupported" in line or "GLOBAL" in line), "not plain tensors")
        raise ProbeError(f"{path} holds more than weights and was not unpickled "
                         f"({reason.split('. ')[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProbeError(f"cannot read {path}: truncated or not a torch checkpoint ({first})"
                         ) from None


def detect(path: str | Path) -> str:
    """The format of the model at `path` (see the module doc); a one-line error if none fits."""
    if is_python_spec(str(path)):
        return "python"
    p = Path(path)
    if not p.exists():
        raise ProbeError(f"--model {path}: no such file or folder")
    if p.is_dir():
        config = p / "config.json"
        if config.is_file():
            info = artifacts.read_json(config)
            if isinstance(info, dict) and "model" in info and "train" in info:
                return "probe-run"
            return "diffusers"
        if (p / "model_index.json").is_file():
            return "diffusers"
        raise ProbeError(f"--model {path}: a folder with neither a run's nor a diffusers "
                         "config.json (nor a pipeline's model_index.json)")
    if p.suffix.lower() in TORCH_SUFFIXES:
        return _torch_format(p, safe_torch_load(p))[0]
    raise ProbeError(f"--model {path}: unknown file type (a .pt checkpoint, a run or diffusers "
                     "folder, or module.py:factory with --weights)")


def _torch_format(path: Path, obj) -> tuple[str, dict]:
    """(format, state dict) of a loaded torch file."""
    if isinstance(obj, dict) and "model" in obj and "args" in obj:
        states = obj["model"]
        state = states[0] if isinstance(states, list | tuple) and states else states
        if isinstance(state, dict) and isinstance(obj["args"], argparse.Namespace):
            return "mohan2020", state
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = checkpoints.clean_state_dict(obj)
        if any(k.startswith("encoder.0.") for k in state) and "mid_block.0.weight" in state:
            return "kadkhodaie-unet", state
        if "conv_layers.0.weight" in state and any(k.startswith("BN_layers.") for k in state):
            return "kadkhodaie-bf-cnn", state
        raise ProbeError(f"{path} is a state dict of no known architecture (first key "
                         f"{next(iter(state))!r}); for your own model use --model "
                         "module.py:factory --weights FILE")
    raise ProbeError(f"{path} is not a checkpoint this tool reads (a Mohan et al. .pt, a "
                     "Kadkhodaie et al. model.pt state dict)")


def _strict_load(model: nn.Module, state: dict, path: Path, arch: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = (missing or unexpected or shapes)[0]
        raise ProbeError(f"{path} does not fit {arch} (first mismatch: {detail})")
    model.load_state_dict(state)


def _check_range(spec: ModelSpec, native: tuple[float, float], fmt: str) -> None:
    if spec.value_range is not None and tuple(spec.value_range) != tuple(native):
        raise ProbeError(f"--value-range {spec.value_range[0]:g},{spec.value_range[1]:g} does "
                         f"not fit {spec.path}: {fmt} models take data in "
                         f"[{native[0]:g}, {native[1]:g}]")


def _convs(state: dict, prefix: str) -> list[torch.Tensor]:
    """4-D weights under `prefix`, in module order."""
    keys = [k for k in state if k.startswith(prefix) and k.endswith(".weight")
            and state[k].ndim == 4]
    return [state[k] for k in sorted(keys, key=lambda k: [int(p) if p.isdigit() else p
                                                          for p in k.split(".")])]


# ---------------------------------------------------------------------------------- formats


def _mohan(path: Path, spec: ModelSpec) -> LoadedModel:
    from probe.models.mohan import BFDnCNN, BFSmallUNet
    from probe.models.native import RangeDenoiser

    obj = safe_torch_load(path)
    _, state = _torch_format(path, obj)
    args = vars(obj["args"])
    kind = str(args.get("model", ""))
    channels = int(args.get("in_channels", 1))
    if kind == "dncnn":
        net = BFDnCNN(channels, int(args.get("hidden_size", 64)), int(args.get("num_layers", 20)))
        arch = f"mohan2020:bf-dncnn-{net.layers}"
    elif kind == "unet":
        net, arch = BFSmallUNet(channels), "mohan2020:bf-unet"
    else:
        raise ProbeError(f"{path}: Mohan et al. architecture {kind!r} is not one of dncnn, unet")
    if args.get("bias", False):
        raise ProbeError(f"{path} is a network with biases (args.bias = True); only the "
                         "bias-free ones are read")
    _strict_load(net, state, path, arch)
    native = (0.0, 1.0)
    _check_range(spec, native, "mohan2020")
    return _finish(RangeDenoiser(net, native, "none", "x0", channels), arch, "mohan2020", path,
                   native, channels, None)


def _kadkhodaie_unet(path: Path, spec: ModelSpec) -> LoadedModel:
    from probe.models.native import RangeDenoiser
    from probe.models.unet import BiasFreeUNet
    from probe.models.zoo import PRESETS

    _, state = _torch_format(path, safe_torch_load(path))
    blocks = len({k.split(".")[1] for k in state if k.startswith("encoder.")})
    first = state.get("encoder.0.0.weight")
    if first is None or first.ndim != 4:
        raise ProbeError(f"{path} does not fit the bias-free UNet (no encoder.0.0.weight)")
    width, channels = int(first.shape[0]), int(first.shape[1])
    enc = len(_convs(state, "encoder.0."))
    mid = len(_convs(state, "mid_block."))
    dec = len(_convs(state, "decoder.0."))
    try:
        net = BiasFreeUNet(channels, width, blocks, enc, mid, max(dec, 2))
    except ValueError as exc:
        raise ProbeError(f"{path} does not fit the bias-free UNet: {exc}") from None
    names = [name for name, p in PRESETS.items() if p.family == "bf-unet"
             and p.kwargs.get("width") == width and p.kwargs.get("blocks", 3) == blocks
             and name != "bf-unet"]
    arch = names[0] if names and (enc, mid, dec) == (2, 2, 2) else \
        f"bf-unet(width={width},blocks={blocks})"
    _strict_load(net, state, path, arch)
    native = (0.0, 1.0)
    _check_range(spec, native, "kadkhodaie-unet")
    return _finish(RangeDenoiser(net, native, "none", "noise", channels), arch,
                   "kadkhodaie-unet", path, native, channels, None)


class BFCNN(nn.Module):
    """Kadkhodaie et al.'s flat bias-free CNN (their `BF_CNN`, written from its state dict and
    paper): a linear first 3x3 convolution, `layers - 2` blocks of 3x3 convolution, bias-free
    batch norm (running_sd, gammas: probe.models.unet.BiasFreeBatchNorm) and ReLU, a last 3x3
    convolution; it predicts the noise."""

    def __init__(self, channels: int, width: int, layers: int):
        super().__init__()
        from probe.models.unet import BiasFreeBatchNorm

        convs = [nn.Conv2d(channels, width, 3, padding=1, bias=False)]
        convs += [nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(layers - 2)]
        convs.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.conv_layers = nn.ModuleList(convs)
        self.BN_layers = nn.ModuleList(BiasFreeBatchNorm(width) for _ in range(layers - 2))

    def forward(self, x: torch.Tensor, noise_cond=None, class_labels=None) -> torch.Tensor:
        x = self.conv_layers[0](x)
        for conv, bn in zip(self.conv_layers[1:-1], self.BN_layers):
            x = torch.relu(bn(conv(x)))
        return self.conv_layers[-1](x)


def _kadkhodaie_bf_cnn(path: Path, spec: ModelSpec) -> LoadedModel:
    from probe.models.native import RangeDenoiser

    _, state = _torch_format(path, safe_torch_load(path))
    convs = _convs(state, "conv_layers.")
    if len(convs) < 3:
        raise ProbeError(f"{path} does not fit BF_CNN (needs >= 3 convolutions)")
    channels, width = int(convs[0].shape[1]), int(convs[0].shape[0])
    net = BFCNN(channels, width, len(convs))
    arch = f"kadkhodaie:bf-cnn-{len(convs)}"
    _strict_load(net, state, path, arch)
    native = (0.0, 1.0)
    _check_range(spec, native, "kadkhodaie-bf-cnn")
    return _finish(RangeDenoiser(net, native, "none", "noise", channels), arch,
                   "kadkhodaie-bf-cnn", path, native, channels, None)


def _diffusers(path: Path, spec: ModelSpec) -> LoadedModel:
    from probe.models.diffusers_local import ScheduledDenoiser, load_backbone, load_schedule

    schedule, prediction, _ = load_schedule(path)  # before the weights: fail fast
    backbone, info = load_backbone(path)
    native = (-1.0, 1.0)
    _check_range(spec, native, "diffusers")
    denoiser = ScheduledDenoiser(backbone, schedule, prediction, info["channels"],
                                 info["image_size"])
    arch = f"diffusers:{info['class_name']}"
    return _finish(denoiser, arch, "diffusers", info["weights"], native, info["channels"],
                   info["image_size"], {"schedule": schedule.name or "trained_betas",
                                        "prediction_type": prediction})


def _python(path: str, spec: ModelSpec) -> LoadedModel:
    from probe.models.native import RangeDenoiser

    file, factory = str(path).rsplit(":", 1)
    if spec.weights is None:
        raise ProbeError(f"--model {path} needs --weights FILE.safetensors")
    if spec.value_range is None or spec.noise_input is None:
        raise ProbeError(f"--model {path} needs --value-range (0,1 or -1,1) and --noise-input "
                         "(none, sigma or t): a model class says neither")
    if not Path(file).is_file():
        raise ProbeError(f"--model {path}: no such file {file}")
    name = f"probe_user_model_{artifacts.sha256_bytes(str(Path(file).resolve()).encode())[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
        make = getattr(module, factory)
        net = make()
    except AttributeError:
        raise ProbeError(f"--model {path}: {file} defines no {factory}") from None
    except Exception as exc:  # the user's code: any error it raises is reported in one line
        raise ProbeError(f"--model {path}: {factory}() failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(net, nn.Module):
        raise ProbeError(f"--model {path}: {factory}() returned a {type(net).__name__}, "
                         "not a torch.nn.Module")
    weights = Path(spec.weights)
    if not weights.is_file():
        raise ProbeError(f"--weights {weights}: no such file")
    checkpoints.load_weights(weights, net)
    channels = int(getattr(net, "channels", getattr(net, "in_channels", 1)))
    size = getattr(net, "image_size", None)
    denoiser = RangeDenoiser(net, spec.value_range, spec.noise_input, "x0", channels,
                             int(size) if size else None)
    return _finish(denoiser, f"python:{Path(file).stem}.{factory}", "python", weights,
                   tuple(spec.value_range), channels, int(size) if size else None)


def _finish(denoiser, arch, fmt, weights, native, channels, size, details: dict | None = None):
    denoiser.eval().requires_grad_(False)
    weights = Path(weights)
    return LoadedModel(denoiser, arch, fmt, weights, artifacts.sha256_file(weights),
                       tuple(float(v) for v in native), channels, size, denoiser.objective,
                       details or {})


LOADERS = {"diffusers": _diffusers, "mohan2020": _mohan, "kadkhodaie-unet": _kadkhodaie_unet,
           "kadkhodaie-bf-cnn": _kadkhodaie_bf_cnn, "python": _python}


def load_model(spec: ModelSpec | str) -> LoadedModel:
    """The outside model `spec` names, format detected (a probe run: probe.runs.load_run)."""
    spec = ModelSpec(spec) if isinstance(spec, str) else spec
    fmt = detect(spec.path)
    if fmt == "probe-run":
        raise ProbeError(f"{spec.path} is a run of this tool: load it with probe.runs.load_run")
    if fmt == "python":
        return _python(spec.path, spec)
    if spec.weights is not None:
        raise ProbeError(f"--weights is for --model module.py:factory; {spec.path} holds its "
                         "own weights")
    if spec.noise_input is not None and fmt != "python":
        raise ProbeError(f"--noise-input is for --model module.py:factory; {spec.path} says "
                         "its own")
    return LOADERS[fmt](Path(spec.path), spec)
