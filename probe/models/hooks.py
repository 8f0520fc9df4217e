"""Named hook points, in the spirit of TransformerLens: identities that can be watched or edited.

A `HookPoint` sits where a probe may want to look (`blocks.3.attn.pattern`, shape
[batch, head, query, key]). Outside `capture`/`hooks` it is a plain identity and costs nothing;
attention modules use the fused SDPA kernel unless one of their hook points is active, so a
pattern only exists (and is only materialised) inside the context manager.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from probe.errors import ProbeError

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity that passes its input through the functions registered on it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self._fns: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self._fns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self._fns:
            out = fn(x, self.name)
            x = x if out is None else out
        return x


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every hook point of `model` by its module path, names stamped on the points."""
    points = {}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def resolve(model: nn.Module, names: Iterable[str] | str | None) -> dict[str, HookPoint]:
    """Hook points matching exact names or glob patterns (`blocks.*.attn.pattern`); None = all."""
    points = hook_points(model)
    if names is None:
        return points
    if isinstance(names, str):
        names = [names]
    chosen: dict[str, HookPoint] = {}
    for pattern in names:
        hits = [n for n in points if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ProbeError(f"no hook point matches {pattern!r}; this model has "
                             f"{len(points)} (see `probe models hooks`)")
        chosen.update({n: points[n] for n in hits})
    return chosen


@contextlib.contextmanager
def hooks(model: nn.Module, fns: dict[str, HookFn]) -> Iterator[None]:
    """Run `fn(tensor, name)` at each named hook point; a returned tensor replaces the value."""
    added = []
    try:
        for pattern, fn in fns.items():
            for point in resolve(model, pattern).values():
                point._fns.append(fn)
                added.append((point, fn))
        yield
    finally:
        for point, fn in added:
            point._fns.remove(fn)


@contextlib.contextmanager
def capture(model: nn.Module, names: Iterable[str] | str | None = None, *, detach: bool = True,
            device: str | torch.device | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """`with capture(model, "blocks.*.attn.pattern") as cache: model(...)` fills `cache`.

    Values are detached (and moved to `device` if given); a hook point hit twice in one forward
    keeps the last value.
    """
    cache: dict[str, torch.Tensor] = {}

    def store(x: torch.Tensor, name: str) -> None:
        value = x.detach() if detach else x
        cache[name] = value.to(device) if device is not None else value

    with hooks(model, {name: store for name in resolve(model, names)}):
        yield cache
