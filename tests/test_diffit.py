"""DiffiT: shapes, zero-initialised heads, TMSA (time dependence, relative position bias, an
explicit recomputation), hook points, per-layer windows, the zoo and the Denoiser interface."""

from __future__ import annotations

import pytest
import torch

from probe.config import ModelConfig
from probe.diffusion.losses import training_loss
from probe.errors import ProbeError
from probe.models import zoo
from probe.models.attention import Partition, partition_mask, set_backend
from probe.models.denoiser import Denoiser
from probe.models.diffit import TMSA, DiffiT, LatentDiffiT
from probe.models.hooks import capture
from tests.helpers import build_preset, perturb

SIZE = 16
ARCHS = ("diffit-xs", "diffit-latent-xs")


def build(arch, channels=1, learn_sigma=False, image_size=SIZE, **kwargs):
    return build_preset(arch, channels, learn_sigma, image_size=image_size, **kwargs)



@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return perturb(build(request.param)).eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(2, 1, SIZE, SIZE, generator=gen), torch.tensor([10.0, 700.0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels,learn_sigma", [(1, False), (3, False), (3, True)])
def test_output_shape(arch, channels, learn_sigma):
    net = build(arch, channels, learn_sigma)
    out = net(torch.randn(2, channels, SIZE, SIZE), torch.rand(2) * 999)
    assert out.shape == (2, channels * (2 if learn_sigma else 1), SIZE, SIZE)


@pytest.mark.parametrize("arch", ARCHS)
def test_class_conditional(arch):
    net = perturb(build(arch, num_classes=4)).eval()
    x, t = torch.randn(2, 1, SIZE, SIZE), torch.ones(2)
    assert net(x, t, torch.tensor([0, 3])).shape == (2, 1, SIZE, SIZE)
    assert torch.allclose(net(x, t), net(x, t, torch.tensor([4, 4])))  # None = the null class


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_output_at_init(arch):
    """Image space: zero-initialised head conv (ours); latent: zero-initialised final linear
    (as released)."""
    net = build(arch, channels=3, learn_sigma=True)
    out = net(torch.randn(2, 3, SIZE, SIZE), torch.tensor([0.0, 999.0]))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic_construction_and_plain_state_dict(arch):
    a, b = build(arch), build(arch)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert set(sa) == {name for name, _ in a.named_parameters()}  # no saved buffers
    assert "blocks.0.attn.qkv_temb.weight" in sa
    assert "blocks.0.attn.relative_position_bias_table" in sa


def test_layer_plan_of_the_image_space_u():
    net = build("diffit-xs", image_size=32)
    assert isinstance(net, DiffiT)
    # mults 1-2-2, one ResBlock per level: encoder 32, 16, 8; decoder 16, 32.
    assert net.layer_grids == ((32, 32), (16, 16), (8, 8), (16, 16), (32, 32))
    widths = [block.attn.proj.in_features for block in net.blocks]
    assert widths == [32, 64, 64, 64, 32]
    assert [block.attn.grid for block in net.blocks] == list(net.layer_grids)


def test_pattern_hooks_sum_to_one(model, inputs):
    x, t = inputs
    with capture(model, "blocks.*.attn.pattern") as cache:
        model(x, t)
    assert len(cache) == len(model.blocks)
    for i, block in enumerate(model.blocks):
        probs = cache[f"blocks.{i}.attn.pattern"]
        n = block.attn.grid[0] * block.attn.grid[1]
        assert probs.shape == (2, block.attn.heads, n, n)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)


def test_capture_does_not_change_output(model, inputs):
    x, t = inputs
    reference = model(x, t)
    with capture(model) as cache:
        hooked = model(x, t)
    assert any(name.endswith("heads_out") for name in cache)
    assert torch.allclose(hooked, reference, atol=1e-5)


@pytest.mark.parametrize("arch,windows", [("diffit-xs", ()), ("diffit-xs", ("0-1:3", "4:5")),
                                          ("diffit-latent-xs", ()),
                                          ("diffit-latent-xs", ("1-2:3",))])
def test_explicit_backend_equals_sdpa(arch, windows, inputs):
    net = perturb(build(arch, windows=windows)).eval()
    x, t = inputs
    reference = net(x, t)
    previous = set_backend(net, "explicit")
    explicit = net(x, t)
    set_backend(net, previous)
    assert torch.allclose(explicit, reference, atol=1e-5)
    assert reference.abs().max() > 1e-3


def test_windows_follow_the_execution_order_and_mask_the_pattern(inputs):
    net = perturb(build("diffit-xs", windows=("0:3", "2-4:9"))).eval()
    # Layer grids 16, 8, 4, 8, 16: a 9x9 window covers the whole 4x4 grid (global there); layer
    # 1 keeps the preset's 4x4 partitions.
    assert net.windows == (3, Partition(4), 0, 9, 9)
    x, t = inputs
    with capture(net, "blocks.0.attn.pattern") as cache:
        net(x, t)
    probs = cache["blocks.0.attn.pattern"]
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    outside = ((ys[:, None] - ys[None]).abs() > 1) | ((xs[:, None] - xs[None]).abs() > 1)
    assert torch.count_nonzero(probs[..., outside]) == 0
    latent = build("diffit-latent-xs", windows=("all:3",))
    assert latent.windows == (3, 3, 3, 3)
    with pytest.raises(ProbeError, match="layers must lie"):
        build("diffit-xs", windows=("5:3",))  # diffit-xs has 5 transformer layers, 0..4


def tmsa(window=0, seed=3):
    torch.manual_seed(seed)
    attn = TMSA(dim=16, temb_dim=8, heads=2, grid=(4, 5), window=window)
    perturb(attn, scale=0.3, seed=seed)
    return attn


def test_tmsa_matches_explicit_recomputation():
    attn = tmsa()
    gen = torch.Generator().manual_seed(4)
    x, temb = torch.randn(3, 20, 16, generator=gen), torch.randn(3, 8, generator=gen)
    # q, k, v = x W_s + t W_t, the time token added before the heads split.
    q = x @ attn.qkv.weight[:16].T + attn.qkv.bias[:16] + (
        temb @ attn.qkv_temb.weight[:16].T + attn.qkv_temb.bias[:16])[:, None]
    k = x @ attn.qkv.weight[16:32].T + attn.qkv.bias[16:32] + (
        temb @ attn.qkv_temb.weight[16:32].T + attn.qkv_temb.bias[16:32])[:, None]
    v = x @ attn.qkv.weight[32:].T + attn.qkv.bias[32:] + (
        temb @ attn.qkv_temb.weight[32:].T + attn.qkv_temb.bias[32:])[:, None]
    q, k, v = (z.reshape(3, 20, 2, 8).transpose(1, 2) for z in (q, k, v))
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    table = attn.relative_position_bias_table  # [(2*4-1) * (2*5-1), heads]
    bias = table[(ys[:, None] - ys[None] + 3) * 9 + (xs[:, None] - xs[None] + 4)]
    scores = q @ k.transpose(-1, -2) / 8**0.5 + bias.permute(2, 0, 1)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, 20, 16)
    expected = attn.proj(out)
    for backend in ("sdpa", "explicit"):
        attn.backend = backend
        assert torch.allclose(attn(x, temb), expected, atol=1e-5)


def test_tmsa_pattern_depends_on_the_time_token():
    attn = tmsa()
    gen = torch.Generator().manual_seed(5)
    x, t1, t2 = torch.randn(1, 20, 16, generator=gen), *torch.randn(2, 1, 8, generator=gen)

    def pattern(temb):
        with capture(attn, "pattern") as cache:
            attn(x, temb)
        return cache["pattern"]

    assert (pattern(t1) - pattern(t2)).abs().max() > 1e-2
    with torch.no_grad():  # control: without W_t the time token cannot reach the pattern
        attn.qkv_temb.weight.zero_()
    assert torch.allclose(pattern(t1), pattern(t2))


@pytest.mark.parametrize("arch", ARCHS)
def test_model_pattern_depends_on_noise_level(arch, inputs):
    net = perturb(build(arch)).eval()
    x, _ = inputs
    patterns = []
    for level in (5.0, 900.0):
        with capture(net, "blocks.0.attn.pattern") as cache:
            net(x, torch.full((2,), level))
        patterns.append(cache["blocks.0.attn.pattern"])
    assert (patterns[0] - patterns[1]).abs().max() > 1e-4


def test_relative_position_bias_is_translation_equivariant():
    attn = tmsa()
    bias = attn.position_bias()  # [heads, L, L] on the 4x5 grid
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    offsets = torch.stack([ys[:, None] - ys[None], xs[:, None] - xs[None]], -1).reshape(-1, 2)
    flat = bias.reshape(2, -1)
    distinct = torch.unique(offsets, dim=0)
    assert len(distinct) == 7 * 9 == len(torch.unique(attn.relative_position_index))
    values = []
    for offset in distinct:
        same = (offsets == offset).all(-1)
        chosen = flat[:, same]
        assert torch.equal(chosen, chosen[:, :1].expand_as(chosen))  # equal offsets, equal bias
        values.append(chosen[:, 0])
    assert len(torch.unique(torch.stack(values), dim=0)) == len(distinct)  # one entry per offset


def test_bad_sizes_are_rejected():
    with pytest.raises(ProbeError, match="divisible"):
        build("diffit-s", image_size=10)  # three levels need a multiple of 4
    with pytest.raises(ProbeError, match="patch"):
        build("diffit-latent-xs", image_size=15)
    with pytest.raises(ValueError, match="norm groups"):
        DiffiT(image_size=16, width=24, mults=(1, 2), blocks=(1, 1), heads=2, norm_groups=16)


@pytest.mark.parametrize("arch,objective", [("diffit-xs", "ddpm"), ("diffit-latent-xs", "edm")])
def test_denoiser_and_training_loss_backward(arch, objective):
    net = build(arch, learn_sigma=objective == "ddpm").train()
    denoiser = Denoiser(net, objective, 1)
    x0 = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    assert denoiser(x0, 0.5).shape == x0.shape
    loss = training_loss(denoiser, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    head = net.head[-1] if isinstance(net, DiffiT) else net.final_layer.linear
    assert head.weight.grad.abs().sum() > 0
    assert isinstance(net, DiffiT | LatentDiffiT)


def test_zoo_presets_and_macs():
    for name in ("diffit-xs", "diffit-s", "diffit-latent-xs", "diffit-latent-s"):
        assert zoo.preset(name).family == "diffit"
    for arch in ARCHS:
        cfg = ModelConfig(arch=arch, image_size=SIZE)
        net = zoo.build(cfg)
        assert zoo.count_parameters(net) > 0 and zoo.macs_per_image(net, cfg) > 0


# ------------------------------------------------------------------ partitioned TMSA, presets


def partitions_of(height: int, width: int, size: int) -> list[torch.Tensor]:
    """Token indices (row-major on the grid) of each size x size partition, row-major inside."""
    return [torch.tensor([y * width + x for y in range(top, top + size)
                          for x in range(left, left + size)])
            for top in range(0, height, size) for left in range(0, width, size)]


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_partitioned_tmsa_is_global_tmsa_inside_each_partition(backend):
    """Every 4x4 partition of an 8x12 grid is a global TMSA over its own 4x4 grid, with the same
    weights: the bias table is sized to the window, (2*4-1)^2 rows, as the 4x4 layer's is."""
    torch.manual_seed(0)
    part = perturb(TMSA(dim=16, temb_dim=8, heads=2, grid=(8, 12), window=Partition(4)),
                   scale=0.3).double()
    whole = TMSA(dim=16, temb_dim=8, heads=2, grid=(4, 4)).double()
    assert part.relative_position_bias_table.shape == whole.relative_position_bias_table.shape
    whole.load_state_dict(part.state_dict())
    part.backend = whole.backend = backend
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 96, 16, generator=gen, dtype=torch.float64)
    temb = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    out = part(x, temb)
    for tokens in partitions_of(8, 12, 4):
        assert torch.allclose(out[:, tokens], whole(x[:, tokens], temb), atol=1e-12, rtol=0)


def test_partitioned_tmsa_pattern_has_no_mass_outside_the_partition():
    torch.manual_seed(0)
    attn = perturb(TMSA(dim=16, temb_dim=8, heads=2, grid=(8, 8), window=Partition(4)),
                   scale=0.3)
    x, temb = torch.randn(3, 64, 16), torch.randn(3, 8)
    with capture(attn, "pattern") as cache:
        out = attn(x, temb)
    probs = cache["pattern"]  # [batch, head, query, key] over the full 8x8 grid
    assert probs.shape == (3, 2, 64, 64)
    inside = partition_mask(8, 8, 4)
    assert torch.count_nonzero(probs[..., ~inside]) == 0  # exactly zero
    assert torch.all(probs[..., inside] > 0)
    assert torch.allclose(probs.sum(-1), torch.ones(3, 2, 64))
    attn.backend = "sdpa"  # the fast path computes the same function
    assert torch.allclose(attn(x, temb), out, atol=1e-5)


def test_diffit_presets_follow_the_papers_layout():
    """CIFAR-10 DiffiT (Hatamizadeh et al.): 3 levels, 2 DiffiT ResBlocks per stage, every stage
    in 4x4 non-overlapping windows."""
    with torch.device("meta"):
        net = zoo.build(ModelConfig(arch="diffit-s", image_size=32, channels=3))
    assert [g for g, _ in net.layer_grids] == [32, 32, 16, 16, 8, 8, 16, 16, 32, 32]
    assert net.windows == (Partition(4),) * 10
    assert all(b.attn.partition == 4 and b.attn.window == 0 for b in net.blocks)
    assert all(b.attn.relative_position_bias_table.shape == (49, 4) for b in net.blocks)
    # 8x8 windows (FFHQ-64) and plain attention are one spec away.
    with torch.device("meta"):
        ffhq = zoo.build(ModelConfig(arch="diffit-s", image_size=64, windows=("all:p8",)))
        plain = zoo.build(ModelConfig(arch="diffit-s", image_size=32, windows=("all:global",)))
    assert ffhq.windows == (Partition(8),) * 10 and plain.windows == (0,) * 10
    # A partition as large as a layer's grid is global attention there (diffit-xs at 8x8).
    assert build("diffit-xs", image_size=8).windows == (Partition(4), 0, 0, 0, Partition(4))


def test_partitions_cut_short_at_the_edge_of_the_grid():
    """28x28 (MNIST): the 14x14 and 7x7 levels do not split into whole 4x4 squares; the fast and
    explicit paths agree there too."""
    net = perturb(build("diffit-xs", image_size=28)).eval()
    assert net.windows == (Partition(4),) * 5
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10.0, 700.0])
    fast = net(x, t)
    set_backend(net, "explicit")
    assert torch.allclose(net(x, t), fast, atol=1e-5)

