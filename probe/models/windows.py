"""Named local-attention layouts, usable wherever `--window` takes a spec: `--window an-default`.

A preset is a list of window sides and a placement rule. For a model of `depth` attention layers
it expands into ordinary per-layer specs ("0:3", "1:5", ...), which
`probe.models.zoo.parse_windows` validates against the model's depth and token grid like specs
written by hand; later specs still override earlier ones (`--window an-default --window 0:5`).

Source: An et al., "On Inductive Biases That Enable Generalization of Diffusion Transformers"
(arXiv 2410.21273). Their default local attention puts windows 3, 5, 7, 9, 11, 13 on the first
six layers (layer 0 attends within 3x3 tokens, layer 1 within 5x5, ...); "Local*" uses nine
layers, three each of 3x3, 5x5 and 7x7; head / mix / tail place the default windows on
different layers. What is ours, not quoted from the paper:
- mix: the six windows spread evenly over the depth, on layers i * depth // 6 (every other
  layer of 12: 0, 2, ..., 10), so windowed and global layers interleave. That is our reading of
  "mix"; the paper's own layer list was not available to us.
- tail keeps the default's order: the first of the last six layers gets 3x3, the last 13x13.
- the larger/smaller variants shift the default progression by one of its own steps (+-2 per
  side, never below 3): an-large 5..15, an-small 3, 3, 5, 7, 9, 11. The paper reports that the
  window size matters; these are our sizes to probe that, not the paper's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from probe.errors import ProbeError

AN_DEFAULT = (3, 5, 7, 9, 11, 13)  # An et al.'s default: one window per layer, growing by 2
AN_LOCAL_STAR = (3, 3, 3, 5, 5, 5, 7, 7, 7)  # their "Local*"


def head(depth: int, count: int) -> list[int]:
    return list(range(count))


def tail(depth: int, count: int) -> list[int]:
    return list(range(depth - count, depth))


def mix(depth: int, count: int) -> list[int]:
    return [i * depth // count for i in range(count)]


@dataclass(frozen=True)
class WindowPreset:
    name: str
    sizes: tuple[int, ...]  # window sides, in the order they are placed
    place: Callable[[int, int], list[int]]  # (depth, len(sizes)) -> layer indices
    description: str

    def layers(self, depth: int) -> dict[int, int]:
        """Layer index -> window side for a model of `depth` attention layers."""
        if depth < len(self.sizes):
            raise ProbeError(f"window preset {self.name} places {len(self.sizes)} windows; "
                             f"this model has {depth} attention layers")
        return dict(zip(self.place(depth, len(self.sizes)), self.sizes))

    def specs(self, depth: int) -> list[str]:
        return [f"{layer}:{size}" for layer, size in self.layers(depth).items()]


WINDOW_PRESETS: dict[str, WindowPreset] = {}


def register(name: str, sizes: tuple[int, ...], place, description: str) -> None:
    WINDOW_PRESETS[name] = WindowPreset(name, sizes, place, description)


register("an-default", AN_DEFAULT, head,
         "An et al.'s default local attention: 3x3 ... 13x13 on the first six layers")
register("an-head", AN_DEFAULT, head, "An et al.'s head placement (= an-default)")
register("an-mix", AN_DEFAULT, mix,
         "An et al.'s mix placement, our reading: the default windows on every other layer "
         "(layers i*depth//6)")
register("an-tail", AN_DEFAULT, tail,
         "An et al.'s tail placement: the default windows on the last six layers")
register("an-local-star", AN_LOCAL_STAR, head,
         "An et al.'s Local*: 3x3, 5x5, 7x7 on three layers each, the first nine layers")
register("an-large", tuple(s + 2 for s in AN_DEFAULT), head,
         "ours: the default windows one step larger, 5x5 ... 15x15 on the first six layers")
register("an-small", tuple(max(3, s - 2) for s in AN_DEFAULT), head,
         "ours: the default windows one step smaller (never below 3), 3, 3, 5, 7, 9, 11")


def expand(specs, depth: int) -> list[tuple[str, str]]:
    """(spec, the spec it came from) for every per-layer spec: a preset name is replaced by its
    specs for this depth, other specs pass through as their own origin."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        preset = WINDOW_PRESETS.get(spec.strip())
        out += [(one, spec) for one in preset.specs(depth)] if preset else [(spec, spec)]
    return out
