"""A diffusers model saved with `save_pretrained` in a local folder, as a probe target.

Researchers can probe checkpoints they already own: a `DiTTransformer2DModel` or a
`UNet2DModel` folder (its `config.json` beside the weights), or a pipeline folder whose
`model_index.json` names a `transformer/` or `unet/` sub-folder. Nothing is downloaded
(`local_files_only`).

The model is wrapped to the zoo's backbone contract (`forward(x, noise_cond, class_labels)`) and
behind `ScheduledDenoiser`, whose noise schedule and prediction type come from the scheduler
config saved with it (`scheduler_config.json` beside `config.json`, as in the public DDPM
CIFAR-10 repository, or `scheduler/` of a pipeline folder); neither is ever assumed, so a folder
without one is refused. The table of alphas_cumprod is taken from diffusers' own scheduler built
from that config (linear, scaled_linear, squaredcos_cap_v2 or trained betas), so the x0
prediction is the one diffusers computes. A learned-variance half of the output is dropped. A
class-conditional DiT is called with its null (classifier-free) class. Attention probabilities
come out through hook points:

- DiT: every `attn1` runs `HookedSelfAttention` (below): `transformer.transformer_blocks.{i}.
  attn1.processor.pattern` [batch, head, query, key], tokens row-major over the patch grid;
- UNet2DModel: probe.models.unet's `HookedAttnProcessor` (`unet.<path>.processor.pattern`).

`probe.external` puts such a model behind the Run protocol (`--model FOLDER`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from probe import artifacts
from probe.diffusion.schedules import TabulatedSchedule
from probe.errors import ProbeError
from probe.models.attention import explicit_attention
from probe.models.denoiser import Denoiser
from probe.models.hooks import HookPoint

CLASSES = ("DiTTransformer2DModel", "UNet2DModel")
SUBFOLDERS = ("transformer", "unet")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_CONFIG = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class HookedSelfAttention(nn.Module):
    """Self-attention processor for a DiT's diffusers `Attention`, with a `pattern` hook point.

    Computes what `AttnProcessor2_0` computes on 3-D token input without mask or cross
    attention (q/k/v, optional q/k norms, output projection, residual, rescale): fused SDPA
    normally, the explicit softmax while `pattern` is active or `backend` is "explicit".
    """

    def __init__(self, backend: str = "sdpa"):
        super().__init__()
        self.backend = backend
        self.pattern = HookPoint()  # [B, head, query, key]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        # diffusers inspects this signature to decide which keyword arguments to pass on.
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                temb=None):
        if encoder_hidden_states is not None or attention_mask is not None \
                or hidden_states.ndim != 3:
            raise ProbeError("HookedSelfAttention handles unmasked self-attention on tokens only")
        residual = hidden_states
        b, n, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (t.view(b, n, attn.heads, -1).transpose(1, 2) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if self.backend == "explicit" or self.pattern.active:
            out = explicit_attention(q, k, v, self.pattern, scale=attn.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class DiffusersBackbone(nn.Module):
    """A diffusers DiT or UNet behind the zoo contract: (x, noise_cond, labels) -> [B, C', H, W]."""

    def __init__(self, model: nn.Module, class_name: str):
        super().__init__()
        self.class_name = class_name
        self.null_class = None
        if class_name == "DiTTransformer2DModel":
            self.transformer = model
            for module in model.modules():
                if hasattr(module, "attn1"):
                    module.attn1.set_processor(HookedSelfAttention())
            tables = [m for m in model.modules() if type(m).__name__ == "LabelEmbedding"]
            classes = model.config.num_embeds_ada_norm
            # The classifier-free null row sits after the real classes when the table has it.
            self.null_class = classes if tables and \
                tables[0].embedding_table.num_embeddings > classes else 0
        else:
            from probe.models.unet import hook_attention

            self.unet = model
            hook_attention(model)

    @property
    def model(self) -> nn.Module:
        return self.transformer if self.class_name == "DiTTransformer2DModel" else self.unet

    def forward(self, x, noise_cond, class_labels=None):
        if self.class_name == "DiTTransformer2DModel":
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.null_class, dtype=torch.long,
                                          device=x.device)
            return self.transformer(x, noise_cond, class_labels).sample
        if self.unet.config.num_class_embeds is None:
            class_labels = None
        return self.unet(x, noise_cond, class_labels).sample


def model_folder(path: str | Path) -> tuple[Path, str]:
    """The folder holding the model's config.json, and the model's class name."""
    path = Path(path)
    if not path.is_dir():
        raise ProbeError(f"--model {path}: not a folder")
    if not (path / "config.json").is_file() and (path / "model_index.json").is_file():
        hits = [path / s for s in SUBFOLDERS if (path / s / "config.json").is_file()]
        if not hits:
            raise ProbeError(f"{path} is a pipeline without a transformer/ or unet/ model")
        path = hits[0]
    if not (path / "config.json").is_file():
        raise ProbeError(f"--model {path}: no config.json (save the model with "
                         "save_pretrained)")
    class_name = artifacts.read_json(path / "config.json").get("_class_name", "")
    if class_name not in CLASSES:
        raise ProbeError(f"{path} holds a {class_name or 'unknown model'}; supported: "
                         f"{', '.join(CLASSES)}")
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise ProbeError(f"{path} has no weights ({WEIGHT_FILES[0]})")
    return path, class_name


def scheduler_config(path: str | Path) -> tuple[Path, dict]:
    """The scheduler config saved with the model at `path` (a model or pipeline folder)."""
    path = Path(path)
    folder, _ = model_folder(path)
    candidates = [folder / SCHEDULER_CONFIG, path / SCHEDULER_CONFIG,
                  path / "scheduler" / SCHEDULER_CONFIG,
                  folder.parent / "scheduler" / SCHEDULER_CONFIG]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ProbeError(f"{path} has no {SCHEDULER_CONFIG} (beside config.json or in "
                         "scheduler/): the noise schedule and prediction type are never "
                         "assumed; save the scheduler with it (scheduler.save_pretrained)")
    return found, artifacts.read_json(found)


def load_schedule(path: str | Path) -> tuple[TabulatedSchedule, str, dict]:
    """(schedule, prediction type, the config) from the scheduler config saved with the model,
    through diffusers' own scheduler class (DDPMScheduler when the class has no table)."""
    import diffusers

    where, cfg = scheduler_config(path)
    beta = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is None and beta not in BETA_SCHEDULES:
        raise ProbeError(f"{where}: beta_schedule {beta!r} is not supported "
                         f"({', '.join(BETA_SCHEDULES)})")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ProbeError(f"{where}: prediction_type {prediction!r} is not supported "
                         f"({', '.join(PREDICTION_TYPES)})")
    cls = getattr(diffusers, str(cfg.get("_class_name", "")), None)
    try:
        scheduler = cls.from_config(cfg) if cls is not None else None
        if scheduler is None or not hasattr(scheduler, "alphas_cumprod"):
            scheduler = diffusers.DDPMScheduler.from_config(cfg)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ProbeError(f"{where}: {str(exc).splitlines()[0]}") from None
    abar = scheduler.alphas_cumprod.double()
    if not (abar > 0).all() or not (abar < 1).all():
        raise ProbeError(f"{where}: alphas_cumprod must lie in (0, 1) (a zero terminal SNR "
                         "schedule has no finite sigma at its last step)")
    return TabulatedSchedule(tuple(abar.tolist()), beta), prediction, cfg


class ScheduledDenoiser(Denoiser):
    """diffusers' x0 prediction as D(x_noisy, sigma).

    With abar = 1 / (1 + sigma^2) the diffusers state is x_t = sqrt(abar) x_noisy, fed at the
    continuous timestep of sigma on the scheduler's own table (at a table sigma: that integer
    step). The output o becomes x0 as the scheduler's `step` computes `pred_original_sample`:
    epsilon: x_noisy - sigma o; sample: o; v_prediction: abar x_noisy - sqrt(1 - abar) o.
    Unclipped: `clip_sample` is a sampler's choice and would zero the Jacobian on clipped pixels.
    """

    def __init__(self, backbone: nn.Module, schedule: TabulatedSchedule, prediction_type: str,
                 channels: int, image_size: int):
        super().__init__(backbone, "ddpm", channels, image_size, schedule)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.prediction_type = prediction_type

    def forward(self, x_noisy: torch.Tensor, sigma, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x_noisy.dtype, device=x_noisy.device)
        sigma = sigma.expand(x_noisy.shape[0]) if sigma.ndim == 0 else sigma.reshape(-1)
        s = sigma.reshape(-1, 1, 1, 1)
        root = (1 + s**2).sqrt()
        out = self.backbone(x_noisy / root, self.schedule.timestep(sigma),
                            class_labels)[:, :self.channels]
        if self.prediction_type == "epsilon":
            return x_noisy - s * out
        if self.prediction_type == "sample":
            return out
        return x_noisy / root**2 - s / root * out


def load_backbone(path: str | Path) -> tuple[DiffusersBackbone, dict]:
    """Load a local diffusers model (eval mode, no download) and describe it."""
    import diffusers

    folder, class_name = model_folder(path)
    try:
        model = getattr(diffusers, class_name).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ProbeError(f"cannot load {folder}: {str(exc).splitlines()[0]}") from None
    cfg = model.config
    weights = next(folder / w for w in WEIGHT_FILES if (folder / w).is_file())
    info = {"folder": folder, "class_name": class_name, "weights": weights,
            "image_size": int(cfg.sample_size if isinstance(cfg.sample_size, int)
                              else cfg.sample_size[0]),
            "channels": int(cfg.in_channels)}
    backbone = DiffusersBackbone(model, class_name).eval().requires_grad_(False)
    return backbone, info
