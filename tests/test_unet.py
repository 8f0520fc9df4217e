"""UNet backbones: the hooked diffusers UNet2DModel and the bias-free blind UNet."""

from __future__ import annotations

import pytest
import torch

from probe.config import ModelConfig
from probe.diffusion.losses import training_loss
from probe.errors import ProbeError
from probe.models import zoo
from probe.models.attention import set_backend
from probe.models.denoiser import Denoiser
from probe.models.hooks import capture, hook_points
from probe.models.unet import BiasFreeBatchNorm, BiasFreeUNet, HookedAttnProcessor, UNet


def _unet_xs(channels: int = 1, size: int = 16, **cfg) -> UNet:
    torch.manual_seed(0)
    return zoo.build(ModelConfig(arch="unet-xs", image_size=size, channels=channels, **cfg))


def _inputs(channels: int = 1, size: int = 16, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, channels, size, size, generator=g), torch.tensor([3.0, 517.5])[:batch]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_unet_output_shape(channels, learn_sigma):
    model = _unet_xs(channels, learn_sigma=learn_sigma).eval()
    x, t = _inputs(channels)
    out = model(x, t)
    assert out.shape == (2, channels * (2 if learn_sigma else 1), 16, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_bf_unet_output_shape(channels, learn_sigma):
    cfg = ModelConfig(arch="bf-unet-xs", image_size=16, channels=channels, learn_sigma=learn_sigma)
    model = zoo.build(cfg).eval()
    x, t = _inputs(channels)
    assert model(x, t).shape == (2, channels * (2 if learn_sigma else 1), 16, 16)


@pytest.mark.parametrize("arch, size", [("unet-xs", 18), ("unet-xs", 2), ("unet-idm", 12),
                                        ("bf-unet-xs", 20), ("bf-unet", 4)])
def test_impossible_image_size_is_a_user_error(arch, size):
    with pytest.raises(ProbeError, match="not divisible"):
        zoo.build(ModelConfig(arch=arch, image_size=size))


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="norm groups"):
        UNet(image_size=16, block_out_channels=(24, 48), norm_num_groups=32, attention=(-1,))
    with pytest.raises(ValueError, match="head dim"):
        UNet(image_size=16, block_out_channels=(32, 64), norm_num_groups=8, attention=(0,),
             attention_head_dim=24)
    with pytest.raises(ValueError, match="out of range"):
        UNet(image_size=16, block_out_channels=(32, 64), norm_num_groups=8, attention=(2,))
    with pytest.raises(ProbeError, match="windows"):
        zoo.build(ModelConfig(arch="unet-xs", image_size=16, windows=("0:3",)))
    with pytest.raises(ProbeError, match="unconditional"):
        zoo.build(ModelConfig(arch="bf-unet-xs", image_size=16, num_classes=10))


def test_hook_point_names():
    xs = set(hook_points(_unet_xs()))
    attn = ["down_blocks.2.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",
            "up_blocks.0.attentions.1"]
    assert xs == {f"unet.{a}.processor.{h}" for a in attn for h in ("pattern", "heads_out")}
    idm = zoo.build(ModelConfig(arch="unet-idm", image_size=32))
    patterns = sorted(n for n in hook_points(idm) if n.endswith(".pattern"))
    attn = ["down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "mid_block.attentions.0",
            "up_blocks.2.attentions.0", "up_blocks.2.attentions.1", "up_blocks.2.attentions.2"]
    assert patterns == sorted(f"unet.{a}.processor.pattern" for a in attn)
    assert hook_points(zoo.build(ModelConfig(arch="bf-unet-xs", image_size=16))) == {}


def test_capture_gives_probabilities_and_keeps_the_output():
    model = _unet_xs(size=32).eval()
    x, t = _inputs(size=32)
    with torch.no_grad():
        plain = model(x, t)
        with capture(model, "*.pattern") as cache:
            hooked = model(x, t)
    assert len(cache) == 4
    for name, probs in cache.items():
        assert probs.shape == (2, 2, 64, 64), name  # 64 channels / head dim 32; 8x8 grid
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 64))
        assert (probs >= 0).all()
    torch.testing.assert_close(hooked, plain, rtol=1e-5, atol=1e-5)
    assert not any(p.active for p in hook_points(model).values())  # hooks removed


def test_explicit_backend_matches_sdpa():
    model = _unet_xs(3).eval()
    x, t = _inputs(3)
    with torch.no_grad():
        fused = model(x, t)
        assert set_backend(model, "explicit") == "sdpa"
        explicit = model(x, t)
        set_backend(model, "sdpa")
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    assert not torch.equal(explicit, torch.zeros_like(explicit))


def test_matches_diffusers_default_processor():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    model = _unet_xs().eval()
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert layers and all(isinstance(m.processor, HookedAttnProcessor) for m in layers)
    x, t = _inputs()
    with torch.no_grad():
        ours = model(x, t)
        set_backend(model, "explicit")
        ours_explicit = model(x, t)
        for layer in layers:
            layer.set_processor(AttnProcessor2_0())
        reference = model(x, t)
    assert not hook_points(model)  # processor submodules (and their hook points) are gone
    assert torch.equal(ours, reference)
    torch.testing.assert_close(ours_explicit, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "explicit"])
def test_processor_with_mask_and_cross_attention(backend):
    """The general Attention inputs (token sequence, mask, cross-attention) match diffusers too."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=16, heads=4, dim_head=8, residual_connection=True,
                     rescale_output_factor=2.0).eval()
    x, context = torch.randn(2, 10, 32), torch.randn(2, 7, 16)
    mask = torch.zeros(2, 7)
    mask[0, 5:] = -10000.0  # diffusers' additive mask, one row per batch element
    with torch.no_grad():
        reference = attn(x, context, attention_mask=mask)
        attn.set_processor(HookedAttnProcessor(backend))
        with capture(attn, "processor.pattern") as cache:
            ours = attn(x, context, attention_mask=mask)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    probs = cache["processor.pattern"]
    assert probs.shape == (2, 4, 10, 7)
    assert probs[0, :, :, 5:].max() < 1e-6
    attn.set_processor(AttnProcessor2_0())
    assert "processor" not in dict(attn.named_children())


def test_class_conditioning():
    model = _unet_xs(num_classes=3).eval()
    x, t = _inputs()
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 2]))
        b = model(x, t, torch.tensor([1, 1]))
        null = model(x, t)  # unconditional call: the null class
    assert a.shape == b.shape == null.shape == (2, 1, 16, 16)
    assert not torch.allclose(a, b)
    assert model.unet.class_embedding.num_embeddings == 4
    plain = _unet_xs().eval()
    with torch.no_grad():  # an unconditional model ignores labels, as the DiT does
        torch.testing.assert_close(plain(x, t, torch.tensor([0, 1])), plain(x, t))


def _trained_bn(model: BiasFreeUNet) -> BiasFreeUNet:
    """A few train-mode passes so running_sd is no longer all ones, then eval."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, model.in_channels, 16, 16) * 0.7, None)
    return model.eval()


def test_bf_unet_is_homogeneous_of_degree_one():
    torch.manual_seed(0)
    model = _trained_bn(zoo.build(ModelConfig(arch="bf-unet-xs", image_size=16, channels=3)))
    running = [m.running_sd for m in model.modules() if isinstance(m, BiasFreeBatchNorm)]
    assert any(not torch.allclose(r, torch.ones_like(r)) for r in running)
    x, _ = _inputs(3)
    with torch.no_grad():
        fx = model(x, torch.zeros(2))
        assert fx.abs().max() > 0
        for a in (0.25, 3.0, 17.0):
            torch.testing.assert_close(model(a * x, torch.zeros(2)), a * fx, rtol=1e-4,
                                       atol=1e-6 * a)
        assert torch.equal(model(torch.zeros_like(x), None), torch.zeros_like(x))
        # blind: the noise level input is ignored
        torch.testing.assert_close(model(x, torch.full((2,), 900.0)), fx)


def test_bf_unet_has_no_bias():
    model = zoo.build(ModelConfig(arch="bf-unet", image_size=32))
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "bias" in n or "beta" in n]
    assert all(n.endswith((".weight", ".gammas")) for n in names)
    convs = [m for m in model.modules()
             if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) == 17 and all(m.bias is None for m in convs)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    # the reference layout (its checkpoints load once `module.` is stripped)
    keys = set(model.state_dict())
    assert {"encoder.0.0.weight", "encoder.0.2.weight", "encoder.0.3.gammas",
            "encoder.0.3.running_sd", "encoder.2.0.weight", "mid_block.0.weight",
            "mid_block.4.gammas", "upsample.2.weight", "decoder.2.0.weight",
            "decoder.0.3.weight"} <= keys
    assert model.mid_block[0].weight.shape == (512, 256, 3, 3)
    assert model.decoder["0"][3].weight.shape == (1, 64, 3, 3)


# Kadkhodaie et al. (2310.02557) Table 1: image side -> (parameters, receptive field) as printed.
KADKHODAIE_TABLE_1 = {20: (360e3, 18), 40: (1.8e6, 44), 80: (7.6e6, 92), 160: (31e6, 188)}


@pytest.mark.parametrize("side, exact", [(20, 366_080), (40, 1_825_024), (80, 7_659_264),
                                         (160, 30_993_152)])
def test_bf_unet_sizes_match_kadkhodaie_table_1(side, exact):
    """Exact counts are those of their released code (conv weights + norm gains); the table
    prints two significant figures loosely (366k as 360k, 7.66M as 7.6M), hence 2 %."""
    printed, _ = KADKHODAIE_TABLE_1[side]
    with torch.device("meta"):
        model = zoo.build(ModelConfig(arch=f"bf-unet-{side}", image_size=side))
    count = zoo.count_parameters(model)
    assert count == exact
    assert abs(count - printed) / printed < 0.02
    assert zoo.count_parameters(zoo.build(ModelConfig(arch="bf-unet", image_size=80))) == (
        7_659_264)  # the historical name is the 80x80 network


@pytest.mark.parametrize("side", KADKHODAIE_TABLE_1)
def test_bf_unet_receptive_fields_match_kadkhodaie_table_1(side):
    """The receptive field is the support of d out[centre] / d x. All-positive weights and input
    keep every ReLU open, so the support is the architecture's, not one input's; it does not
    depend on the width, so a 2-channel copy of the preset's depth is measured on 256x256."""
    _, rf = KADKHODAIE_TABLE_1[side]
    blocks = zoo.preset(f"bf-unet-{side}").kwargs["blocks"]
    model = BiasFreeUNet(width=2, blocks=blocks).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.1)
    x = torch.ones(1, 1, 256, 256, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, 128, 128].backward()
    rows, cols = (x.grad[0, 0] != 0).nonzero().unbind(1)
    assert rows.max() - rows.min() + 1 == rf and cols.max() - cols.min() + 1 == rf


@pytest.mark.parametrize("arch, size, channels", [
    ("unet-xs", 16, 1), ("unet-s", 16, 3), ("unet-idm", 8, 3), ("bf-unet-xs", 16, 1),
    ("bf-unet", 8, 3)])
def test_presets_train_through_the_denoiser(arch, size, channels):
    torch.manual_seed(0)
    backbone = zoo.build(ModelConfig(arch=arch, image_size=size, channels=channels))
    objective = "blind" if arch.startswith("bf-") else "ddpm"
    denoiser = Denoiser(backbone, objective=objective, channels=channels)
    x0 = torch.rand(2, channels, size, size) * 2 - 1
    loss = training_loss(denoiser, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    denoiser.eval()
    with torch.no_grad():
        x0_hat = denoiser(x0 + 0.3 * torch.randn_like(x0), 0.3)
    assert x0_hat.shape == x0.shape and torch.isfinite(x0_hat).all()


def test_learned_variance_loss_backward():
    torch.manual_seed(0)
    backbone = _unet_xs(learn_sigma=True)
    denoiser = Denoiser(backbone, objective="ddpm", channels=1)
    loss = training_loss(denoiser, torch.rand(2, 1, 16, 16) * 2 - 1)
    loss.backward()
    assert torch.isfinite(loss) and backbone.unet.conv_out.weight.grad is not None
