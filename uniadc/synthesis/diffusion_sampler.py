"""A DDIM sampler in which every candidate carries its own noise factor, so one UNet call serves them all.

The noise factor gamma follows the official UniADC code: a DDIM schedule of ``int(steps / gamma)`` steps of
which only the last ``steps`` run, starting from the image latent noised to the first of them (gamma = 1
starts from pure noise). This equals diffusers' ``strength=gamma`` with ``num_inference_steps=int(steps /
gamma)`` whenever ``int(int(steps / gamma) * gamma) == steps``. Candidates with different gammas sit at
different timesteps in the same step, which the UNet accepts as a (B,) timestep tensor; the DDIM update
(eta = 0) is applied per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from uniadc.synthesis.brushnet_model import BrushNetModel, UNetResidualInjector


@dataclass(frozen=True)
class Schedule:
    """Per-candidate DDIM tables for S denoising steps.

    Attributes:
        timesteps: (B, S) int64 timestep of each step.
        alpha: (B, S) float32 cumulative alpha at that timestep.
        alpha_prev: (B, S) float32 cumulative alpha at the step's target timestep.
        full: (B,) bool, gamma == 1: start from pure noise instead of the noised image latent.
    """

    timesteps: torch.Tensor
    alpha: torch.Tensor
    alpha_prev: torch.Tensor
    full: torch.Tensor

    def slice(self, start: int, stop: int) -> Schedule:
        return Schedule(
            self.timesteps[start:stop],
            self.alpha[start:stop],
            self.alpha_prev[start:stop],
            self.full[start:stop],
        )

    def to(self, device: torch.device) -> Schedule:
        return Schedule(*(t.to(device) for t in (self.timesteps, self.alpha, self.alpha_prev, self.full)))


def schedule_length(steps: int, gamma: float) -> int:
    """Length of the full DDIM schedule for noise factor ``gamma`` (``int(steps / gamma)``, as officially)."""
    return int(steps / gamma + 1e-9)


def ddim_schedule(scheduler, steps: int, gammas: np.ndarray) -> Schedule:
    """Build the per-candidate tables from a diffusers ``DDIMScheduler`` (its spacing and offsets are kept).

    Args:
        scheduler: a ``DDIMScheduler``; its ``set_timesteps`` is called (state changes, nothing else).
        steps: denoising steps every candidate runs (>= 1).
        gammas: (B,) noise factors in (0, 1].
    """
    gammas = np.asarray(gammas, dtype=np.float64)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if gammas.ndim != 1 or gammas.size == 0 or np.any(~((gammas > 0) & (gammas <= 1))):
        raise ValueError(f"gammas must be a non-empty (B,) array in (0, 1], got {gammas!r}")
    cfg = scheduler.config
    if getattr(cfg, "thresholding", False):
        raise ValueError("DDIM dynamic thresholding is not supported by this sampler")
    total = cfg.num_train_timesteps
    alphas = scheduler.alphas_cumprod.to(torch.float32)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    rows: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for g in np.unique(gammas):
        n = schedule_length(steps, float(g))
        if n > total:
            raise ValueError(f"gamma={g} needs a schedule of {n} steps, more than the {total} training steps")
        scheduler.set_timesteps(n)
        t = scheduler.timesteps[-steps:].to(torch.int64)
        prev = t - total // n
        a_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], final)
        rows[float(g)] = (t, alphas[t], a_prev)
    stacked = [torch.stack([rows[float(g)][k] for g in gammas]) for k in range(3)]
    return Schedule(stacked[0], stacked[1], stacked[2], torch.as_tensor(gammas >= 1.0))


def noised_start(latents: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """(B, C, h, w) start of the reverse process: q(x_t0 | x_0) for gamma < 1, pure noise for gamma = 1."""
    a0 = schedule.alpha[:, 0].view(-1, 1, 1, 1)
    x = a0.sqrt() * latents + (1 - a0).sqrt() * noise
    return torch.where(schedule.full.view(-1, 1, 1, 1), noise, x)


def ddim_step(
    x: torch.Tensor,
    model_output: torch.Tensor,
    alpha: torch.Tensor,
    alpha_prev: torch.Tensor,
    prediction_type: str = "epsilon",
    clip_range: float | None = None,
) -> torch.Tensor:
    """One deterministic DDIM update (eta = 0) with per-sample alphas; float32 in, float32 out.

    Args:
        x: (B, C, h, w) current latents.
        model_output: (B, C, h, w) the (guided) UNet prediction.
        alpha, alpha_prev: (B,) cumulative alphas at the current and the target timestep.
        prediction_type: ``epsilon`` or ``v_prediction``.
        clip_range: clamp the predicted x0 to +-this when set (``clip_sample``).
    """
    a = alpha.view(-1, 1, 1, 1)
    ap = alpha_prev.view(-1, 1, 1, 1)
    out = model_output.float()
    if prediction_type == "epsilon":
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
        eps = out
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * out
        eps = a.sqrt() * out + (1 - a).sqrt() * x
    else:
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    return ap.sqrt() * x0 + (1 - ap).sqrt() * eps


@dataclass
class Conditioning:
    """What the UNet reads besides the latent, for one chunk of b candidates.

    Attributes:
        text: (2b, L, D) [unconditional; conditional] embeddings with guidance, else (b, L, D).
        inpaint: (b, 5, h, w) [mask (1 = hole), masked-image latent] for 9-channel inpainting UNets.
        brushnet_cond: (b, 5, h, w) [masked-image latent, mask (1 = keep)] for BrushNet.
        conditioning_scale: BrushNet residual scale.
    """

    text: torch.Tensor
    inpaint: torch.Tensor | None = None
    brushnet_cond: torch.Tensor | None = None
    conditioning_scale: float = 1.0


def denoise(
    unet: nn.Module,
    x: torch.Tensor,
    schedule: Schedule,
    cond: Conditioning,
    guidance_scale: float,
    brushnet: BrushNetModel | None = None,
    injector: UNetResidualInjector | None = None,
    prediction_type: str = "epsilon",
    clip_range: float | None = None,
) -> torch.Tensor:
    """Run all S steps on one chunk.

    Args:
        unet: a ``UNet2DConditionModel`` (9 input channels with ``cond.inpaint``, else 4).
        x: (b, 4, h, w) float32 start latents (see :func:`noised_start`).
        schedule: the chunk's tables, on ``x``'s device.
        cond: text and image conditioning.
        guidance_scale: classifier-free guidance weight; > 1 expects ``cond.text`` to hold both halves.
        brushnet, injector: the BrushNet branch and the hooks installed on ``unet`` (both or neither).
        prediction_type, clip_range: the scheduler's ``prediction_type`` and ``clip_sample_range`` (or None).

    Returns:
        (b, 4, h, w) float32 denoised latents.
    """
    if (brushnet is None) != (injector is None) or (brushnet is None) != (cond.brushnet_cond is None):
        raise ValueError("brushnet, injector and cond.brushnet_cond must be given together")
    guided = guidance_scale > 1.0
    reps = 2 if guided else 1
    if cond.text.shape[0] != reps * x.shape[0]:
        raise ValueError(f"cond.text must have {reps * x.shape[0]} rows, got {cond.text.shape[0]}")
    dtype = unet.dtype
    for s in range(schedule.timesteps.shape[1]):
        t = schedule.timesteps[:, s]
        xin = x.to(dtype)
        model_in = torch.cat([xin] * reps)
        if cond.inpaint is not None:
            model_in = torch.cat([model_in, torch.cat([cond.inpaint] * reps)], dim=1)
        if brushnet is not None:
            injector.set(brushnet(xin, t, cond.brushnet_cond, conditioning_scale=cond.conditioning_scale))
        try:
            pred = unet(model_in, torch.cat([t] * reps), encoder_hidden_states=cond.text, return_dict=False)[
                0
            ]
        finally:
            if injector is not None:
                injector.clear()
        pred = pred.float()
        if guided:
            uncond, text = pred.chunk(2)
            pred = uncond + guidance_scale * (text - uncond)
        x = ddim_step(x, pred, schedule.alpha[:, s], schedule.alpha_prev[:, s], prediction_type, clip_range)
    return x
