"""U-DiT: shapes, adaLN-Zero, token-downsampled cosine attention and its hook points, the fixed
eval() behaviour, the zoo and the Denoiser interface."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from probe.config import ModelConfig
from probe.diffusion.losses import training_loss
from probe.errors import ProbeError
from probe.models import zoo
from probe.models.attention import set_backend
from probe.models.denoiser import Denoiser
from probe.models.hooks import capture, hooks
from probe.models.udit import DownsampledAttention, FeedForward, UDiT, apply_rope, rope_2d
from tests.helpers import build_preset, perturb

SIZE = 16


def build(channels=1, learn_sigma=False, image_size=SIZE, arch="udit-xs", **kwargs):
    return build_preset(arch, channels, learn_sigma, image_size=image_size, **kwargs)



@pytest.fixture(scope="module")
def model():
    return perturb(build()).eval()


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(2, 1, SIZE, SIZE, generator=gen), torch.tensor([10.0, 700.0])


@pytest.mark.parametrize("channels,learn_sigma", [(1, False), (3, False), (1, True), (3, True)])
def test_output_shape(channels, learn_sigma):
    net = build(channels, learn_sigma)
    out = net(torch.randn(2, channels, SIZE, SIZE), torch.rand(2) * 999)
    assert out.shape == (2, channels * (2 if learn_sigma else 1), SIZE, SIZE)


def test_class_conditional_shape_and_null_class():
    net = build(num_classes=5).eval()
    perturb(net)
    x, t = torch.randn(2, 1, SIZE, SIZE), torch.ones(2)
    out = net(x, t, torch.tensor([0, 4]))
    assert out.shape == (2, 1, SIZE, SIZE)
    assert torch.allclose(net(x, t), net(x, t, torch.tensor([5, 5])))  # None = the null class


def test_zero_output_at_init():
    """adaLN-Zero: the final layer's modulation and output conv start at zero."""
    net = build(channels=3, learn_sigma=True)
    out = net(torch.randn(2, 3, SIZE, SIZE), torch.tensor([0.0, 999.0]))
    assert torch.count_nonzero(out) == 0


def test_deterministic_construction_and_plain_state_dict():
    a, b = build(), build()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Only parameters are saved (all buffers are derived from the config, non-persistent).
    assert set(sa) == {name for name, _ in a.named_parameters()}
    for key in ("x_embedder.proj.weight", "t_embedder_3.mlp.0.weight",
                "encoder_level_1.0.attn1.to_qkv.weight", "latent.0.attn2.logit_scale",
                "encoder_level_2.0.attn1.downsampler.layer.weight",
                "decoder_level_1.0.mlp2.project_in.1.weight",
                "decoder_level_1.0.mlp2.dwconv.2.bias",
                "down1_2.body.0.weight", "up2_1.body.0.weight", "reduce_chan_level1.weight",
                "output.weight", "final_layer.out_proj.weight",
                "final_layer.adaLN_modulation.1.weight"):
        assert key in sa, key  # the released model's names


def test_level_widths_and_grids():
    net = build(image_size=32)
    width = 32
    assert net.encoder_level_1[0].attn1.grid == (32, 32)
    assert net.encoder_level_2[0].attn1.grid == (16, 16)
    assert net.latent[0].attn1.grid == (8, 8)
    assert net.latent[0].attn1.to_qkv.in_features == 4 * width
    assert net.decoder_level_2[0].attn1.to_qkv.in_features == 2 * width
    assert net.decoder_level_1[0].attn1.to_qkv.in_features == 2 * width  # as released


def test_pattern_hooks_sum_to_one_and_full_grid_layout(model, inputs):
    x, t = inputs
    names = ["encoder_level_1.0.attn1.pattern", "encoder_level_1.0.attn1.pattern_full",
             "latent.0.attn2.pattern", "latent.0.attn2.pattern_full"]
    with capture(model, names) as cache:
        model(x, t)
    for prefix, side in (("encoder_level_1.0.attn1", SIZE), ("latent.0.attn2", SIZE // 4)):
        groups, full = cache[f"{prefix}.pattern"], cache[f"{prefix}.pattern_full"]
        n = side * side
        assert groups.shape == (2, 2, 4, n // 4, n // 4)
        assert full.shape == (2, 2, n, n)
        assert torch.allclose(groups.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(full.sum(-1), torch.ones(()), atol=1e-5)
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        group_of = (2 * (ys % 2) + xs % 2).flatten()  # row-major positions
        other = group_of[:, None] != group_of[None, :]
        assert torch.count_nonzero(full[..., other]) == 0
        assert torch.all(full[..., ~other] > 0)
        # Group g = 2*dy + dx, token n = i * side/2 + j at (2i + dy, 2j + dx).
        i, j = torch.meshgrid(torch.arange(side // 2), torch.arange(side // 2), indexing="ij")
        for g, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            pos = ((2 * i + dy) * side + 2 * j + dx).flatten()
            assert torch.equal(full[:, :, pos][:, :, :, pos], groups[:, :, g])


def test_capture_does_not_change_output(model, inputs):
    x, t = inputs
    reference = model(x, t)
    with capture(model) as cache:  # every hook point, both pattern layouts included
        hooked = model(x, t)
    assert any(name.endswith("pattern_full") for name in cache)
    assert torch.allclose(hooked, reference, atol=1e-5)


def test_explicit_backend_equals_sdpa(model, inputs):
    x, t = inputs
    reference = model(x, t)
    previous = set_backend(model, "explicit")
    try:
        explicit = model(x, t)
    finally:
        set_backend(model, previous)
    assert previous == "sdpa"
    assert torch.allclose(explicit, reference, atol=1e-5)
    assert reference.abs().max() > 1e-3  # the comparison is not between zeros


def test_pattern_full_edits_feed_back(model, inputs):
    x, t = inputs
    reference = model(x, t)
    with hooks(model, {"encoder_level_1.0.attn1.pattern_full": lambda p, name: p.clone()}):
        assert torch.allclose(model(x, t), reference, atol=1e-5)
    with hooks(model, {"encoder_level_1.0.attn1.pattern_full": lambda p, name: p * 0}):
        assert not torch.allclose(model(x, t), reference, atol=1e-4)


def reference_attention(attn: DownsampledAttention, x: torch.Tensor) -> torch.Tensor:
    """Token-downsampled attention written the slow, obvious way: slice each polyphase sub-grid,
    attend inside it (complex-number RoPE as in the release), write it back to its positions."""
    b, c, height, width = x.shape
    heads, d = attn.heads, c // attn.heads
    gh, gw = height // 2, width // 2
    x = attn.downsampler(x)
    merged = torch.zeros_like(x)
    n = torch.arange(gh * gw)
    freqs = 1.0 / 10000.0 ** (torch.arange(0, d, 4)[: d // 4].float() / d)
    angles = torch.stack([torch.outer((n % gw).float(), freqs),
                          torch.outer((n // gw).float(), freqs)], dim=-1).reshape(gh * gw, -1)
    rotation = torch.polar(torch.ones_like(angles), angles)

    def rope(z):  # [B, n, heads, d]
        z = torch.view_as_complex(z.reshape(*z.shape[:-1], -1, 2)) * rotation[:, None]
        return torch.view_as_real(z).flatten(-2)

    for dy in (0, 1):
        for dx in (0, 1):
            tokens = x[:, :, dy::2, dx::2].flatten(2).transpose(1, 2)  # [B, n, C]
            q, k, v = (z.reshape(b, -1, heads, d) for z in attn.to_qkv(tokens).chunk(3, -1))
            q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
            logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
            logits = logits * attn.logit_scale.clamp(max=math.log(100)).exp()
            out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, gh, gw, c)
            merged[:, :, dy::2, dx::2] = out.permute(0, 3, 1, 2)
    return attn.to_out(merged)


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_attention_matches_slicing_reference(backend):
    torch.manual_seed(3)
    attn = DownsampledAttention(32, 2, (8, 8))
    with torch.no_grad():
        attn.logit_scale.copy_(torch.tensor([[[1.0]], [[5.0]]]))  # the second head is clamped
    attn.backend = backend
    x = torch.randn(2, 32, 8, 8)
    assert torch.allclose(attn(x), reference_attention(attn, x), atol=1e-5)
    assert torch.allclose(attn.logit_scales(), torch.tensor([math.e, 100.0]))


def test_rope_is_relative_in_both_axes():
    cos, sin = rope_2d(16, 6, 6)
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 16, generator=gen)
    everywhere_q = apply_rope(q.expand(36, 16), cos, sin)
    everywhere_k = apply_rope(k.expand(36, 16), cos, sin)
    assert torch.allclose(everywhere_q.norm(dim=-1), q.norm().expand(36), atol=1e-5)

    def score(pq, pk):  # positions (y, x) on the 6x6 grid
        return everywhere_q[pq[0] * 6 + pq[1]] @ everywhere_k[pk[0] * 6 + pk[1]]

    assert torch.allclose(score((1, 2), (3, 1)), score((2, 4), (4, 3)), atol=1e-5)
    assert not torch.allclose(score((1, 2), (3, 1)), score((1, 2), (1, 3)), atol=1e-3)


def test_train_eval_agree_and_mode_switches_never_touch_weights():
    net = perturb(build())
    x, t = torch.randn(2, 1, SIZE, SIZE), torch.tensor([3.0, 600.0])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train_out = net.train()(x, t)
    for _ in range(3):
        net.eval()
        net.eval()
        eval_out = net(x, t)
        net.train()
        net.train()
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(train_out, eval_out)


def test_rep_feed_forward_is_branches_and_fuses_out_of_place():
    torch.manual_seed(5)
    ffn = FeedForward(8, 2.0, rep=True)
    perturb(ffn, scale=0.2)
    x = torch.randn(2, 8, 6, 6)
    before = {k: v.clone() for k, v in ffn.state_dict().items()}
    fused = ffn.fused()
    fused_again = ffn.fused()
    assert all(torch.equal(before[k], v) for k, v in ffn.state_dict().items())
    assert torch.allclose(ffn(x), ffn.branches(x), atol=1e-5)
    assert torch.allclose(ffn(x[:1, :, :2, :2]), ffn.branches(x[:1, :, :2, :2]), atol=1e-5)
    assert torch.allclose(fused(x), ffn.branches(x), atol=1e-5)
    assert torch.allclose(fused_again(x), fused(x))
    # Gradients reach every branch.
    ffn(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ffn.parameters())


def test_merged_model_computes_the_same_function(model, inputs):
    merged = model.merged()
    assert all(not block.mlp1.rep and not block.mlp2.rep for block in merged.blocks())
    assert all(block.mlp1.rep for block in model.blocks())  # the original is left as it was
    with torch.no_grad():
        assert torch.allclose(merged(*inputs), model(*inputs), atol=1e-5)
    assert zoo.count_parameters(merged) < zoo.count_parameters(model)


def test_windows_and_bad_sizes_are_rejected():
    with pytest.raises(ProbeError, match="windows"):
        build(windows=("0:3",))
    with pytest.raises(ProbeError, match="divisible by 8"):
        build(image_size=12)
    with pytest.raises(ValueError, match="head width"):
        UDiT(image_size=16, width=24, heads=4)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_denoiser_and_training_loss_backward(learn_sigma):
    net = build(learn_sigma=learn_sigma).train()
    denoiser = Denoiser(net, "ddpm", 1)
    x0 = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    assert denoiser(x0, 0.5).shape == x0.shape
    loss = training_loss(denoiser, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert net.final_layer.out_proj.weight.grad.abs().sum() > 0


def test_merged_sizes_match_the_paper():
    """rep=False is the merged (published) form: U-DiT-B has 204M parameters (latent 32x32x4,
    1000 classes, learned sigma)."""
    with torch.device("meta"):
        net = UDiT(32, 4, 192, 8, (2, 5, 8, 5, 2), rep=False, num_classes=1000, learn_sigma=True)
    assert round(zoo.count_parameters(net) / 1e6) == 204


def test_zoo_presets_and_macs():
    for name in ("udit-xs", "udit-s", "udit-b", "udit-l"):
        assert zoo.preset(name).family == "udit"
    cfg = ModelConfig(arch="udit-xs", image_size=SIZE)
    net = zoo.build(cfg)
    assert zoo.count_parameters(net) > 0
    assert zoo.macs_per_image(net, cfg) > 0
