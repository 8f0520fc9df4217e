"""DiT backbone: published parameter counts, adaLN-Zero, embeddings, patching, hooks, windows."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from probe.cli import cli
from probe.config import ModelConfig
from probe.errors import ProbeError
from probe.models import zoo
from probe.models.dit import DiT, TimestepEmbedder, sincos_2d
from probe.models.hooks import capture, hook_points, hooks, resolve
from tests.helpers import randomize

# (arch, published parameters in millions): Peebles & Xie, Table 4, on a 32x32x4 latent with
# 1000 classes and learned sigma.
PUBLISHED = [("dit-s/2", 33.0), ("dit-b/2", 130.5), ("dit-xl/2", 675.1)]


@pytest.mark.parametrize("arch, millions", PUBLISHED)
def test_parameter_counts_match_the_paper(arch, millions):
    cfg = ModelConfig(arch=arch, image_size=32, channels=4, num_classes=1000, learn_sigma=True)
    with torch.device("meta"):  # shapes only: XL/2 would take 2.7 GB and seconds to fill
        model = zoo.build(cfg)
    assert round(zoo.count_parameters(model) / 1e6, 1) == millions


def dit_parameters(depth: int, width: int, patch: int, image: int, channels: int,
                   num_classes: int = 0, learn_sigma: bool = False) -> int:
    """A DiT's parameter count written out: embedders + blocks + final layer (Peebles & Xie's
    layout; the frozen sin-cos position table counts, as in the reference)."""
    d, tokens, out = width, (image // patch) ** 2, channels * (2 if learn_sigma else 1)
    patch_embed = channels * patch**2 * d + d  # conv kernel = stride = patch, with bias
    positions = tokens * d
    timestep = 256 * d + d + d * d + d  # 256 frequencies -> MLP(d, d)
    labels = (num_classes + 1) * d if num_classes else 0  # + the null class (label dropout)
    block = ((3 * d * d + 3 * d) + (d * d + d)  # qkv, output projection
             + (4 * d * d + 4 * d) + (4 * d * d + d)  # MLP, ratio 4
             + (6 * d * d + 6 * d))  # adaLN-Zero: shift/scale/gate for attention and MLP
    final = (2 * d * d + 2 * d) + (d * patch**2 * out + patch**2 * out)
    return patch_embed + positions + timestep + labels + depth * block + final


@pytest.mark.parametrize("arch, depth, width, heads, patch, image, channels", [
    ("dit-xs/1", 12, 252, 4, 1, 32, 3),  # An et al.'s pixel-space DiT-XS/1 (CelebA, 32x32 RGB)
    ("dit-s/1", 12, 384, 6, 1, 32, 3),  # ... and DiT-S/1
    ("dit-xs/2", 12, 252, 4, 2, 32, 1),
    ("dit-tiny/2", 4, 128, 4, 2, 16, 1),  # ours, CPU-sized
])
def test_parameter_counts_match_the_analytic_formula(arch, depth, width, heads, patch, image,
                                                     channels):
    cfg = ModelConfig(arch=arch, image_size=image, channels=channels)
    with torch.device("meta"):
        model = zoo.build(cfg)
    assert (len(model.blocks), model.blocks[0].attn.heads, model.patch) == (depth, heads, patch)
    assert zoo.count_parameters(model) == dit_parameters(depth, width, patch, image, channels)
    cfg = ModelConfig(arch=arch, image_size=image, channels=channels, num_classes=10,
                      learn_sigma=True)
    with torch.device("meta"):
        model = zoo.build(cfg)
    assert zoo.count_parameters(model) == dit_parameters(depth, width, patch, image, channels,
                                                         num_classes=10, learn_sigma=True)


def test_published_counts_follow_from_the_formula():
    # DiT-XL/2 of Table 4: 32x32x4 latent, 1000 classes, learned sigma -> 675.1M.
    assert round(dit_parameters(28, 1152, 2, 32, 4, 1000, True) / 1e6, 1) == 675.1


def test_an_et_al_sizes():
    """The paper's XS is 252 wide with 4 heads (head dim 63), its S 384 with 6; our tiny model
    does not take the paper's name."""
    for arch, width, heads in (("dit-xs/1", 252, 4), ("dit-s/1", 384, 6)):
        with torch.device("meta"):
            attn = zoo.build(ModelConfig(arch=arch, image_size=32)).blocks[0].attn
        assert (attn.qkv.in_features, attn.heads) == (width, heads)
    assert "An et al." in zoo.preset("dit-xs/1").description
    assert "ours" in zoo.preset("dit-tiny/1").description


def test_preset_sizes_follow_the_paper():
    # depth, width, heads of S/B/L/XL and the patch of the name, read back from built models.
    sizes = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
    for size, (depth, width, heads) in sizes.items():
        for patch in (1, 2, 4, 8):
            with torch.device("meta"):
                model = zoo.build(ModelConfig(arch=f"dit-{size}/{patch}", image_size=32))
            assert len(model.blocks) == depth and model.patch == patch
            attn = model.blocks[0].attn
            assert attn.heads == heads and attn.qkv.in_features == width
            assert model.grid == (32 // patch, 32 // patch)


@pytest.mark.parametrize("num_classes, learn_sigma, channels",
                         [(0, False, 1), (10, True, 3), (5, False, 3)])
def test_fresh_dit_outputs_exactly_zero(num_classes, learn_sigma, channels):
    torch.manual_seed(0)
    model = DiT(image_size=8, in_channels=channels, patch=2, width=32, depth=2, heads=2,
                num_classes=num_classes, learn_sigma=learn_sigma, windows=(3, 0))
    x = torch.randn(3, channels, 8, 8) * 5
    labels = torch.tensor([0, 1, 2]) if num_classes else None
    out = model(x, torch.tensor([0.0, 10.0, 999.0]), labels)
    assert out.shape == (3, channels * (2 if learn_sigma else 1), 8, 8)
    assert torch.equal(out, torch.zeros_like(out))
    # ... and the gradient reaches only the zero-initialised final layer (adaLN-Zero).
    out.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert grads == {"final_layer.linear.weight", "final_layer.linear.bias"}


def test_position_embedding_is_the_2d_sincos_formula():
    dim, h, w = 16, 3, 5
    emb = sincos_2d(dim, h, w)
    assert emb.shape == (h * w, dim)
    quarter = dim // 4
    for y in range(h):
        for x in range(w):
            row = emb[y * w + x]
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                # First half encodes the column (x), second half the row (y): sin then cos.
                assert row[k] == pytest.approx(math.sin(x * omega), abs=1e-6)
                assert row[quarter + k] == pytest.approx(math.cos(x * omega), abs=1e-6)
                assert row[2 * quarter + k] == pytest.approx(math.sin(y * omega), abs=1e-6)
                assert row[3 * quarter + k] == pytest.approx(math.cos(y * omega), abs=1e-6)
    model = DiT(image_size=8, patch=2, width=16, depth=1, heads=2)
    assert not model.pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_2d(16, 4, 4))


def test_timestep_features_are_cos_then_sin():
    t = torch.tensor([0.0, 1.0, 523.25])
    feats = TimestepEmbedder.features(t, 8)
    freqs = [math.exp(-math.log(10000) * k / 4) for k in range(4)]
    for i, tv in enumerate(t.tolist()):
        expected = [math.cos(tv * f) for f in freqs] + [math.sin(tv * f) for f in freqs]
        assert feats[i].tolist() == pytest.approx(expected, abs=1e-4)


def test_unpatchify_puts_each_token_back_on_its_patch():
    model = DiT(image_size=6, in_channels=2, patch=3, width=16, depth=1, heads=2)
    p, c, (gh, gw) = 3, 2, model.grid
    tokens = torch.arange(gh * gw * p * p * c, dtype=torch.float32).reshape(1, gh * gw, -1)
    image = model.unpatchify(tokens)[0]
    for i in range(gh):
        for j in range(gw):
            for a in range(p):
                for b in range(p):
                    for ch in range(c):
                        # token (i, j), feature (a, b, channel): the reference's p-q-c order.
                        value = tokens[0, i * gw + j, (a * p + b) * c + ch]
                        assert image[ch, i * p + a, j * p + b] == value


def test_label_dropout_uses_the_null_class():
    torch.manual_seed(0)
    model = randomize(DiT(image_size=4, patch=2, width=16, depth=1, heads=2, num_classes=3,
                          class_dropout=1.0))
    x, t, labels = torch.randn(2, 1, 4, 4), torch.tensor([5.0, 50.0]), torch.tensor([0, 2])
    dropped = model.train()(x, t, labels)  # dropout 1: every label becomes the null class 3
    null = model.eval()(x, t, None)
    assert torch.allclose(dropped, null, atol=1e-6)
    assert not torch.allclose(model(x, t, labels), null, atol=1e-3)


def test_hook_point_names():
    model = zoo.build(ModelConfig(arch="dit-tiny/2", image_size=8))
    names = set(hook_points(model))
    depth = len(model.blocks)
    expected = {f"blocks.{i}.attn.{p}" for i in range(depth) for p in ("pattern", "heads_out")}
    assert names == expected
    assert set(resolve(model, "blocks.*.attn.pattern")) == {
        f"blocks.{i}.attn.pattern" for i in range(depth)}
    with pytest.raises(ProbeError, match="no hook point"):
        resolve(model, "blocks.99.attn.pattern")


def test_models_hooks_cli_lists_the_names():
    result = CliRunner().invoke(cli, ["models", "hooks", "dit-tiny/4", "--image-size", "8"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.split()
    assert [n for n in lines if n.endswith(".pattern")] == [
        f"blocks.{i}.attn.pattern" for i in range(4)]


def test_capture_shapes_and_does_not_change_outputs():
    torch.manual_seed(0)
    model = randomize(DiT(image_size=8, patch=2, width=32, depth=3, heads=4,
                          windows=(3, 0, 5))).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0])
    plain = model(x, t)
    with capture(model, "blocks.*.attn.*") as cache:
        inside = model(x, t)
    assert torch.allclose(inside, plain, atol=1e-5)
    assert set(cache) == {f"blocks.{i}.attn.{p}" for i in range(3)
                          for p in ("pattern", "heads_out")}
    for i in range(3):
        pattern = cache[f"blocks.{i}.attn.pattern"]
        assert pattern.shape == (2, 4, 16, 16)  # [batch, head, query, key]
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 16), atol=1e-5)
        assert cache[f"blocks.{i}.attn.heads_out"].shape == (2, 4, 16, 8)
    # The hook points are gone after the block: a new forward neither fills nor needs them.
    kept = {k: v.clone() for k, v in cache.items()}
    model(torch.randn(2, 1, 8, 8), t)
    assert all(torch.equal(cache[k], kept[k]) for k in kept)
    assert not any(p.active for p in hook_points(model).values())


def test_hooks_can_edit_a_value():
    torch.manual_seed(0)
    model = randomize(DiT(image_size=4, patch=2, width=16, depth=2, heads=2)).eval()
    x, t = torch.randn(1, 1, 4, 4), torch.tensor([10.0])
    with hooks(model, {"blocks.*.attn.heads_out": lambda v, name: torch.zeros_like(v)}):
        ablated = model(x, t)
    # With every head's output zeroed, attention contributes only its projection bias.
    for block in model.blocks:
        block.attn.qkv.weight.data.zero_()
        block.attn.qkv.bias.data.zero_()  # v = 0 as well: attention output = proj.bias
    assert torch.allclose(ablated, model(x, t), atol=1e-5)
