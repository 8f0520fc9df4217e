"""Weights in safetensors (config in the metadata), training state loaded with weights_only=True.

A periodic checkpoint is a directory `checkpoints/step-XXXXXXX/` (model, EMA, optimizer state)
written under a temporary name and renamed into place, so it is either complete or absent; the
newest complete one is where a killed run resumes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from probe import artifacts
from probe.errors import ProbeError

PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value.detach().cpu().contiguous()
    return out


def unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def save_weights(path: Path, model: nn.Module, metadata: dict) -> None:
    """Atomic safetensors save; metadata values are JSON strings (safetensors takes str only)."""
    state = clean_state_dict(unwrap(model).state_dict())
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in metadata.items()}
    artifacts.check_space(Path(path).parent, _nbytes(state), path)
    with artifacts.atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata=meta)
        except Exception as exc:  # noqa: BLE001 - SafetensorError wraps the OS's ENOSPC
            if "No space left" in str(exc):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            raise
        canonical_header(tmp)


def _nbytes(state) -> int:
    """Bytes of the tensors in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(_nbytes(v) for v in state)
    return 0


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with sorted keys, in place. safetensors writes its metadata
    in hash-map order, so the same weights would otherwise hash differently from save to save;
    tensor offsets are relative to the data, so only the header's own bytes change."""
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode()
        if len(text) <= length:  # pad with spaces, as safetensors does, to the same length
            f.seek(8)
            f.write(text + b" " * (length - len(text)))
            return
        data = f.read()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.write(data)


def _loads(value: str):
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError):  # not JSON, or nested absurdly deep
        return value


def read_metadata(path: Path) -> dict:
    """The metadata of a safetensors file, JSON values parsed; a damaged file is one line."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise ProbeError(f"cannot read weights {path}: {exc}") from None
    return {key: _loads(value) for key, value in meta.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged file is a one-line ProbeError."""
    try:
        return clean_state_dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise ProbeError(f"cannot read weights {path}: {exc}") from None


def load_weights(path: Path, model: nn.Module) -> None:
    """Load into `model`, with a one-line error when the checkpoint is another architecture."""
    load_state_dict(read_state_dict(path), model, path)


def load_state_dict(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """Load tensors read from `path` into `model`; another architecture's are one line."""
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        arch = read_metadata(path).get("arch", "another architecture")
        detail = (missing or unexpected or shapes)[0]
        raise ProbeError(f"{path} holds {arch}, which does not fit this model "
                         f"(first mismatch: {detail})")
    target.load_state_dict(state)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, ema: nn.Module,
                    optimizer: torch.optim.Optimizer, metadata: dict, keep: bool) -> Path:
    root = run_dir / artifacts.CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{artifacts.CHECKPOINT_PREFIX}{step:07d}"
    need = _nbytes(unwrap(model).state_dict()) + _nbytes(unwrap(ema).state_dict()) + \
        _nbytes(optimizer.state_dict())
    artifacts.check_space(root, need, final)  # one line, and the last checkpoint kept
    tmp = artifacts.make_temp_dir(root, final.name)  # a dead writer's is removed next time
    try:
        meta = {**metadata, "step": step}
        save_weights(tmp / artifacts.MODEL_WEIGHTS, model, meta)
        save_weights(tmp / artifacts.EMA_WEIGHTS, ema, meta)
        with artifacts.atomic_path(tmp / artifacts.TRAINING_STATE) as state_tmp:
            torch.save({"step": step, "optimizer": optimizer.state_dict()}, state_tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if not keep:
        for old in checkpoints(run_dir):
            if old != final:
                shutil.rmtree(old)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete periodic checkpoints, oldest first."""
    root = run_dir / artifacts.CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{artifacts.CHECKPOINT_PREFIX}*")
                  if (p / artifacts.TRAINING_STATE).is_file())


def load_state(checkpoint: Path) -> dict:
    """A checkpoint's training state; a damaged (truncated) file is a one-line ProbeError."""
    path = checkpoint / artifacts.TRAINING_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - RuntimeError, EOFError, ...
        raise ProbeError(f"checkpoint {checkpoint} is damaged ({path.name}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                         ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) \
            or "optimizer" not in state:
        raise ProbeError(f"checkpoint {checkpoint} is damaged ({path.name} holds no step)")
    return state
