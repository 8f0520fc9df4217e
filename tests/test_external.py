"""`--model PATH`: every format read from its files (probe.external), checked against the
model's own maths; bad files are one line and exit code 2."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from probe.cli import cli
from probe.external import ModelSpec, load_model
from probe.models.unet import BiasFreeUNet

SMALL_UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                  layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"))
OUTSIDE = ["--dataset", "digits", "--size", "8", "--sigmas", "0.5", "--no-figures"]


def invoke(root: Path, *args):
    return CliRunner().invoke(cli, ["--artifacts", str(root), *args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(**SMALL_UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _x0_by_diffusers(model, scheduler, x0, eps, t):
    """pred_original_sample as diffusers' own scheduler computes it at integer step t."""
    steps = torch.full((x0.shape[0],), t, dtype=torch.long)
    x_t = scheduler.add_noise(x0, eps, steps)
    out = model(x_t, steps).sample
    return x_t, scheduler.step(out, t, x_t).pred_original_sample


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_diffusers_model_folder_matches_its_scheduler(tmp_path, beta_schedule, prediction):
    from diffusers import DDPMScheduler

    model = _unet()
    scheduler = DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction,
                              clip_sample=False)
    folder = tmp_path / "ddpm"
    model.save_pretrained(folder)
    scheduler.save_pretrained(folder)  # scheduler_config.json beside config.json
    loaded = load_model(str(folder))
    assert loaded.format == "diffusers" and loaded.arch == "diffusers:UNet2DModel"
    assert loaded.details == {"schedule": beta_schedule, "prediction_type": prediction}
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, torch.randn(2, 1, 8, 8, generator=g)
    abar = scheduler.alphas_cumprod.double()
    with torch.no_grad():
        for t in (3, 250, 900):
            x_t, want = _x0_by_diffusers(model, scheduler, x0, eps, t)
            sigma = float(((1 - abar[t]) / abar[t]).sqrt())
            got = loaded.denoiser(x_t / abar[t].sqrt().float(), sigma)
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_diffusers_pipeline_folder_is_read_and_probed(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    model = _unet()
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    folder = tmp_path / "pipe"
    DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(folder)
    assert (folder / "model_index.json").is_file() and not (folder / "config.json").exists()
    loaded = load_model(str(folder))
    x_t, want = _x0_by_diffusers(model, DDPMScheduler.from_config(scheduler.config,
                                                                  clip_sample=False),
                                 torch.zeros(1, 1, 8, 8), torch.randn(1, 1, 8, 8), 500)
    abar = scheduler.alphas_cumprod.double()[500]
    with torch.no_grad():
        got = loaded.denoiser(x_t / abar.sqrt().float(), float(((1 - abar) / abar).sqrt()))
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    result = invoke(tmp_path / "art", "jacobian-basis", "--model", str(folder), *OUTSIDE,
                    "--images", "1", "--k", "4")
    assert result.exit_code == 0, result.stderr
    import h5py

    (path,) = (tmp_path / "art" / "probes").glob("pipe-*/jacobian.h5")
    with h5py.File(path) as f:
        assert f.attrs["format"] == "diffusers" and f.attrs["schedule"] == "squaredcos_cap_v2"
        assert f.attrs["prediction_type"] == "v_prediction"
        assert f.attrs["checkpoint"].endswith("unet/diffusion_pytorch_model.safetensors")


def test_diffusers_folder_without_scheduler_or_weights_is_refused(tmp_path):
    from diffusers import DDPMScheduler

    folder = tmp_path / "bare"
    _unet().save_pretrained(folder)
    r = invoke(tmp_path, "jacobian-basis", "--model", str(folder), *OUTSIDE)
    assert_one_line_error(r, "scheduler_config.json", "never assumed")
    DDPMScheduler().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    r = invoke(tmp_path, "jacobian-basis", "--model", str(folder), *OUTSIDE)
    assert_one_line_error(r, "no weights")


# --------------------------------------------------------------------- Kadkhodaie et al.


def test_kadkhodaie_unet_state_dict_loads_into_the_bf_unet_preset(tmp_path):
    torch.manual_seed(0)
    net = BiasFreeUNet(1, 64, 2).eval()
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "running_sd"):
                m.running_sd.uniform_(0.5, 2)
    path = tmp_path / "model.pt"
    torch.save(torch.nn.DataParallel(net).state_dict(), path)  # module.-prefixed keys
    assert next(iter(torch.load(path))).startswith("module.")
    loaded = load_model(str(path))
    assert loaded.format == "kadkhodaie-unet" and loaded.arch == "bf-unet-40"
    y = torch.rand(2, 1, 16, 16)
    with torch.no_grad():  # data in [0, 1], the network predicts the noise
        torch.testing.assert_close(loaded.denoiser(2 * y - 1, 0.2), 2 * (y - net(y)) - 1)
    # a state dict of another architecture: same key layout, other shapes
    bad = {f"module.{k}": v for k, v in BiasFreeUNet(1, 16, 2).state_dict().items()}
    bad["module.decoder.0.3.weight"] = torch.zeros(1, 5, 3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    assert_one_line_error(invoke(tmp_path, "denoise", "--model", str(tmp_path / "bad.pt"),
                                 "--sigma", "0.1", str(path), "--out", str(tmp_path / "o")),
                          "does not fit")


def test_kadkhodaie_bf_cnn_state_dict(tmp_path):
    from probe.external import BFCNN

    torch.manual_seed(0)
    net = BFCNN(1, 8, 5).eval()
    torch.save(torch.nn.DataParallel(net).state_dict(), tmp_path / "model.pt")
    loaded = load_model(str(tmp_path / "model.pt"))
    assert loaded.format == "kadkhodaie-bf-cnn" and loaded.arch == "kadkhodaie:bf-cnn-5"
    y = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoiser(2 * y - 1, 0.1), 2 * (y - net(y)) - 1)
    # an outside model with named training rows runs the generalization probe
    r = invoke(tmp_path / "art", "generalization", "--model", str(tmp_path / "model.pt"),
               *OUTSIDE, "--images", "2", "--samples", "2", "--steps", "2",
               "--train-data", "0:20")
    assert r.exit_code == 0, r.stderr
    r = invoke(tmp_path / "art2", "generalization", "--model", str(tmp_path / "model.pt"),
               *OUTSIDE, "--images", "2", "--samples", "2")
    assert_one_line_error(r, "training images", "trained elsewhere")


# -------------------------------------------------------------------- module.py:factory


MODULE = '''
import torch

class Shrink(torch.nn.Module):
    """A toy conditional denoiser on [0, 1]: shrinks towards 0.5 by 1 / (1 + sigma^2)."""
    channels = 1

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, y, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        return 0.5 + self.gain * (y - 0.5) / (1 + s ** 2)

def make():
    return Shrink()
'''


def test_python_factory_with_weights_value_range_and_noise_input(tmp_path):
    (tmp_path / "mine.py").write_text(MODULE)
    save_file({"gain": torch.tensor([0.5])}, str(tmp_path / "w.safetensors"))
    spec = ModelSpec(f"{tmp_path / 'mine.py'}:make", str(tmp_path / "w.safetensors"),
                     (0.0, 1.0), "sigma")
    loaded = load_model(spec)
    y = torch.rand(1, 1, 8, 8)
    with torch.no_grad():  # sigma 0.4 on [-1, 1] is 0.2 on the model's [0, 1]
        want = 0.5 + 0.5 * (y - 0.5) / (1 + 0.2**2)
        torch.testing.assert_close(loaded.denoiser(2 * y - 1, 0.4), 2 * want - 1)
    args = ["--model", f"{tmp_path / 'mine.py'}:make", "--weights", str(tmp_path / "w.safetensors")]
    r = invoke(tmp_path, "jacobian-basis", *args, "--value-range", "0,1", "--noise-input",
               "sigma", *OUTSIDE, "--images", "1", "--k", "4")
    assert r.exit_code == 0, r.stderr
    assert_one_line_error(invoke(tmp_path, "jacobian-basis", *args, *OUTSIDE), "--value-range")


# ------------------------------------------------------------------------------ bad files


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bad_files_are_one_line(tmp_path, capsys):
    image = tmp_path / "x.npy"
    import numpy as np

    np.save(image, np.full((8, 8), 0.5, np.float32))
    state = {"model": [BFCNN_state()], "args": argparse.Namespace(model="dncnn")}
    good = tmp_path / "good.pt"
    torch.save(state, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    code = tmp_path / "code.pt"
    torch.save({"model": [Payload()]}, code)
    other = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3, 3)}, other)

    def denoise(path, *extra):
        return invoke(tmp_path, "denoise", "--model", str(path), "--sigma", "0.1", *extra,
                      str(image), "--out", str(tmp_path / "out"))

    assert_one_line_error(denoise(truncated), "truncated")
    assert_one_line_error(denoise(code), "was not unpickled")
    assert "must never run" not in capsys.readouterr().out
    assert_one_line_error(denoise(other), "no known architecture")
    assert_one_line_error(denoise(good), "does not fit")  # a BF_CNN dict in a Mohan file
    assert_one_line_error(denoise(tmp_path / "missing.pt"), "no such file")
    shutil.copy(good, tmp_path / "notes.txt")
    assert_one_line_error(denoise(tmp_path / "notes.txt"), "unknown file type")


def BFCNN_state():
    from probe.external import BFCNN

    return BFCNN(1, 4, 3).state_dict()


def test_a_value_range_that_does_not_fit_is_refused(tmp_path):
    torch.save(torch.nn.DataParallel(BiasFreeUNet(1, 8, 1)).state_dict(), tmp_path / "m.pt")
    r = invoke(tmp_path, "jacobian-basis", "--model", str(tmp_path / "m.pt"),
               "--value-range", "-1,1", *OUTSIDE)
    assert_one_line_error(r, "does not fit", "[0, 1]")
