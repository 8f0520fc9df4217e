"""Local attention windows (sliding and partitioned) and the two backends: masks, locality, and
backend equivalence."""

from __future__ import annotations

import copy

import pytest
import torch

from probe.errors import ProbeError
from probe.models.attention import (
    Attention,
    Partition,
    Partitions,
    WindowTiles,
    explicit_attention,
    partition_mask,
    set_backend,
    window_mask,
)
from probe.models.dit import DiT
from probe.models.hooks import capture, hooks
from probe.models.zoo import parse_windows
from tests.helpers import randomize


def in_window(height: int, width: int, window: int, query: int) -> torch.Tensor:
    """Bool [height * width]: the keys a query may see, written out coordinate by coordinate."""
    qy, qx = divmod(query, width)
    r = window // 2
    return torch.tensor([abs(y - qy) <= r and abs(x - qx) <= r
                         for y in range(height) for x in range(width)])


def test_window_mask_is_the_clipped_square():
    for h, w, window in [(4, 4, 3), (5, 7, 5), (3, 6, 1), (6, 6, 11)]:
        mask = window_mask(h, w, window)
        assert mask.shape == (h * w, h * w)
        for q in range(h * w):
            assert torch.equal(mask[q], in_window(h, w, window, q))


def test_captured_patterns_have_zero_mass_outside_the_window():
    torch.manual_seed(0)
    windows = (3, 5, 0)
    model = randomize(DiT(image_size=7, patch=1, width=32, depth=3, heads=2,
                          windows=windows)).eval()
    with capture(model, "blocks.*.attn.pattern") as cache:
        model(torch.randn(2, 1, 7, 7), torch.tensor([5.0, 500.0]))
    for layer, window in enumerate(windows):
        pattern = cache[f"blocks.{layer}.attn.pattern"]  # [2, 2, 49, 49]
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 2, 49))
        for q in range(49):
            inside = in_window(7, 7, window, q) if window else torch.ones(49, dtype=torch.bool)
            assert torch.all(pattern[..., q, ~inside] == 0)  # exactly zero, not just small
            assert torch.all(pattern[..., q, inside] > 0)


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
@pytest.mark.parametrize("windows, reach", [((3,), 3), ((3, 3), 5), ((5, 3), 7)])
def test_output_depends_only_on_inputs_inside_the_window(backend, windows, reach):
    """d out[q] / d x is nonzero exactly on the receptive field: one w-window after one layer,
    the (sum of radii)-square after several (patch 1, so a token is a pixel)."""
    torch.manual_seed(0)
    size = 9
    model = randomize(DiT(image_size=size, patch=1, width=16, depth=len(windows), heads=2,
                          windows=windows)).double()
    set_backend(model, backend)
    t = torch.tensor([100.0], dtype=torch.float64)
    for q in (0, 4, 40, 44, 80):  # corners, an edge and the centre of the 9x9 grid
        x = torch.randn(1, 1, size, size, dtype=torch.float64, requires_grad=True)
        out = model(x, t)
        out.flatten()[q].backward()
        support = x.grad.flatten() != 0
        assert torch.equal(support, in_window(size, size, reach, q)), (q, backend)


def _qkv(b, h, length, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, length, d, generator=g, dtype=dtype).requires_grad_()
            for _ in range(3)]


# Odd and rectangular grids, windows from 1 to the largest allowed (2 * side - 1), grids below,
# at and above the query tile (8), so the tile padding and the halo clipping are all exercised.
TILE_CASES = [(1, 1, 1), (3, 3, 1), (3, 3, 3), (3, 3, 5), (5, 5, 9), (7, 7, 7), (7, 7, 13),
              (9, 9, 3), (9, 9, 17), (11, 5, 21), (5, 11, 7), (13, 13, 11), (17, 17, 5),
              (17, 9, 15)]


@pytest.mark.parametrize("h, w, window", TILE_CASES)
def test_window_tiles_equal_masked_explicit_attention(h, w, window):
    q, k, v = _qkv(2, 3, h * w, 4)
    tiles = WindowTiles(h, w, window)
    fast = tiles(q, k, v)
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    ref = explicit_attention(q, k, v, mask=window_mask(h, w, window))
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.allclose(fast, ref, atol=1e-12, rtol=0)
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, atol=1e-11, rtol=0)


@pytest.mark.parametrize("grid, window", [((6, 6), 0), ((6, 6), 3), ((5, 7), 5), ((9, 9), 0),
                                          ((9, 9), 17), ((4, 4), 1), ((8, 8), Partition(4)),
                                          ((6, 7), Partition(4)), ((5, 5), Partition(1))])
def test_sdpa_equals_explicit_forward_and_gradients(grid, window):
    torch.manual_seed(0)
    fast = Attention(16, 4, grid, window=window, backend="sdpa").double()
    slow = copy.deepcopy(fast)
    slow.backend = "explicit"
    x = torch.randn(3, grid[0] * grid[1], 16, dtype=torch.float64)
    outs, grads = [], []
    for module in (fast, slow):
        xi = x.clone().requires_grad_()
        out = module(xi)
        out.square().sum().backward()
        outs.append(out)
        grads.append([xi.grad, *(p.grad for p in module.parameters())])
    assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=0)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


def test_sdpa_equals_explicit_in_a_whole_dit_float32():
    torch.manual_seed(0)
    model = randomize(DiT(image_size=16, patch=2, width=64, depth=3, heads=4,
                          windows=(3, 5, 0))).eval()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([1.0, 10.0, 100.0, 999.0])
    fast = model(x, t)
    assert set_backend(model, "explicit") == "sdpa"
    slow = model(x, t)
    assert set_backend(model, "sdpa") == "explicit"
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        set_backend(model, "flash")


def test_pattern_hook_can_replace_the_probabilities():
    """An identity attention pattern makes every token attend to itself: out = proj(v)."""
    torch.manual_seed(0)
    attn = Attention(8, 2, (3, 3), window=3)
    x = torch.randn(2, 9, 8)
    eye = torch.eye(9)
    with hooks(attn, {"pattern": lambda p, name: eye.expand_as(p)}):
        out = attn(x)
    v = x @ attn.qkv.weight[16:].T + attn.qkv.bias[16:]  # the value rows of the qkv projection
    assert torch.allclose(out, attn.proj(v), atol=1e-6)


def test_window_goes_into_each_layer():
    model = DiT(image_size=8, patch=1, width=16, depth=4, heads=2,
                windows=parse_windows(["0-1:3", "3:5"], 4, (8, 8)))
    assert [b.attn.window for b in model.blocks] == [3, 3, 0, 5]
    assert model.blocks[2].attn.mask is None


def test_partition_mask_is_the_square_of_the_query():
    for h, w, size in [(4, 4, 2), (8, 8, 4), (5, 7, 3), (6, 6, 6)]:
        mask = partition_mask(h, w, size)
        for q in range(h * w):
            qy, qx = divmod(q, w)
            expected = torch.tensor([y // size == qy // size and x // size == qx // size
                                     for y in range(h) for x in range(w)])
            assert torch.equal(mask[q], expected)


# Whole and cut-short partitions (the grid's last row/column of squares is smaller).
PARTITION_CASES = [(4, 4, 2), (8, 8, 4), (8, 12, 4), (6, 7, 4), (5, 5, 3), (3, 9, 4), (7, 7, 1)]


@pytest.mark.parametrize("h, w, size", PARTITION_CASES)
def test_partitions_equal_masked_explicit_attention(h, w, size):
    q, k, v = _qkv(2, 3, h * w, 4)
    fast = Partitions(h, w, size)(q, k, v)
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    ref = explicit_attention(q, k, v, mask=partition_mask(h, w, size))
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.allclose(fast, ref, atol=1e-12, rtol=0)
    for a, b in zip(grads_fast, grads_ref):
        assert torch.allclose(a, b, atol=1e-11, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_partitioned_layer_is_global_attention_inside_each_partition(backend):
    torch.manual_seed(0)
    part = Attention(16, 2, (8, 12), window=Partition(4), backend=backend).double()
    whole = Attention(16, 2, (4, 4), backend=backend).double()
    whole.load_state_dict(part.state_dict())  # the same weights
    x = torch.randn(3, 96, 16, dtype=torch.float64)
    out = part(x)
    for top in range(0, 8, 4):
        for left in range(0, 12, 4):
            tokens = torch.tensor([y * 12 + x for y in range(top, top + 4)
                                   for x in range(left, left + 4)])
            assert torch.allclose(out[:, tokens], whole(x[:, tokens]), atol=1e-12, rtol=0)


def test_partitioned_patterns_have_zero_mass_outside_the_partition():
    torch.manual_seed(0)
    model = randomize(DiT(image_size=8, patch=1, width=16, depth=2, heads=2,
                          windows=(Partition(4), Partition(3)))).eval()
    with capture(model, "blocks.*.attn.pattern") as cache:
        model(torch.randn(2, 1, 8, 8), torch.tensor([5.0, 500.0]))
    for layer, size in enumerate((4, 3)):  # 3 does not divide 8: squares cut short at the edge
        pattern = cache[f"blocks.{layer}.attn.pattern"]  # [2, 2, 64, 64] over the full grid
        inside = partition_mask(8, 8, size)
        assert torch.count_nonzero(pattern[..., ~inside]) == 0  # exactly zero, not just small
        assert torch.all(pattern[..., inside] > 0)
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 2, 64))
        attn = model.blocks[layer].attn
        assert (attn.window, attn.partition) == (0, size)


@pytest.mark.parametrize("specs, expected", [
    ([], (0, 0, 0, 0)),
    (["all:p2"], (Partition(2),) * 4),
    (["0-1:p5", "1:3", "3:global"], (Partition(5), 3, 0, 0)),
    (["0-3:5"], (5, 5, 5, 5)),
    (["1:3"], (0, 3, 0, 0)),
    (["all:7"], (7, 7, 7, 7)),
    (["all:3", "2-3:1"], (3, 3, 1, 1)),  # a later spec overrides an earlier one
    ([" 0-1 : 9 "], (9, 9, 0, 0)),
])
def test_parse_windows(specs, expected):
    assert parse_windows(specs, 4, (5, 5)) == expected


@pytest.mark.parametrize("spec, message", [
    ("0-3", "expected LAYERS:SIZE"),
    ("a:3", "expected LAYERS:SIZE"),
    ("0-3:5x5", "expected LAYERS:SIZE"),
    ("4:3", "layers must lie in 0..3"),
    ("2-9:3", "layers must lie in 0..3"),
    ("3-1:3", "layers must lie in 0..3"),
    ("0:4", "size must be odd"),
    ("0:0", "size must be odd"),
    ("0:11", "larger than the 5x5 token grid"),  # 2 * 5 - 1 = 9 already sees the whole grid
    ("0:p6", "partitions must be 1 to 5 tokens wide"),
    ("0:p0", "partitions must be 1 to 5 tokens wide"),
    ("0:q4", "LAYERS:pSIZE"),
])
def test_parse_windows_errors(spec, message):
    with pytest.raises(ProbeError, match=message):
        parse_windows([spec], 4, (5, 5))


def test_a_preset_layout_is_the_default_specs_override():
    assert parse_windows([], 3, (8, 8), default=Partition(4)) == (Partition(4),) * 3
    assert parse_windows(["1:5", "2:global"], 3, (8, 8), default=Partition(4)) == (
        Partition(4), 5, 0)

