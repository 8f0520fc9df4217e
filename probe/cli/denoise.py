"""`probe denoise --model PATH [--sigma S --seed K | --noisy] IMAGE... --out DIR`."""

from __future__ import annotations

import click

from probe.cli import cli
from probe.errors import ProbeError


@cli.command("denoise")
@click.option("--model", "model_path", required=True,
              help="Any model `--model` takes on the probes: a run directory, a diffusers "
                   "folder, a Mohan et al. / Kadkhodaie et al. .pt, or module.py:factory.")
@click.option("--weights", type=click.Path(), default=None,
              help="--model module.py:factory: its safetensors weights.")
@click.option("--value-range", type=click.Choice(["0,1", "-1,1"]), default=None,
              help="The model's data range (module.py:factory; checked for other formats).")
@click.option("--noise-input", type=click.Choice(["none", "sigma", "t"]), default=None,
              help="module.py:factory: how the noise level reaches it.")
@click.option("--sigma", type=click.FloatRange(0, min_open=True), default=None,
              help="Noise std added to each image, on the [0, 1] scale (25/255 = 0.098).")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seeds the added noise.")
@click.option("--noisy", is_flag=True,
              help="The images are already noisy: denoise them as they are.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for STEM.png (noisy | denoised) and STEM.{noisy,denoised}.npy.")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.pass_obj
def denoise(store, model_path, weights, value_range, noise_input, sigma, seed, noisy, out_dir,
            images):
    """Add noise of std --sigma to each IMAGE (PNG/JPEG, or .npy floats in [0, 1]), or take
    them as already noisy (--noisy), denoise them with the model and write the results; prints
    the PSNR of the noisy and the denoised image when the clean one is known."""
    from pathlib import Path

    from probe.denoise import denoise_images, write_outputs
    from probe.external import ModelSpec, detect, is_python_spec, load_model, parse_value_range
    from probe.runs import load_run

    stems = [Path(p).stem for p in images]
    if len(set(stems)) != len(stems):
        raise ProbeError("two IMAGEs share a file name stem; their outputs would collide")
    python = is_python_spec(model_path)
    if (weights or noise_input) and not python:
        raise ProbeError("--weights and --noise-input go with --model module.py:factory")
    spec = ModelSpec(model_path, weights, parse_value_range(value_range), noise_input)
    if detect(model_path) == "probe-run":
        if value_range not in (None, "-1,1"):
            raise ProbeError(f"--value-range {value_range} does not fit {model_path}: this "
                             "tool's runs take data in [-1, 1]")
        run = load_run(model_path, store)
        denoiser, channels, size = run.denoiser, run.config.model.channels, \
            run.config.model.image_size
    else:
        model = load_model(spec)
        denoiser, channels, size = model.denoiser, model.channels, model.image_size
    blind = getattr(denoiser, "objective", "") == "blind"
    items = denoise_images(denoiser, list(images), channels=channels, image_size=size,
                           sigma=sigma, seed=seed, noisy=noisy, blind=blind)
    for path in write_outputs(items, out_dir):
        click.echo(f"output: {path}")
    for item in items:
        if item.psnr_denoised is not None:
            click.echo(f"psnr: {item.name} noisy {item.psnr_noisy:.2f} dB, denoised "
                       f"{item.psnr_denoised:.2f} dB")
