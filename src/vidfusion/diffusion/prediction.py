"""v-prediction algebra: the forward process and conversions between x_t, x0, eps and v.

With a = sqrt(alphabar_t) and s = sqrt(1 - alphabar_t):
    x_t = a x0 + s eps,    v = a eps - s x0,    x0 = a x_t - s v,    eps = s x_t + a v.

Every function takes the schedule's `alphas_cumprod` and a timestep that is either one integer (the sampling loop) or
one integer per sample, shape [B]; the coefficients are shaped [B, 1, ..., 1], so any latent layout whose first axis
is the batch works ([B, F, C, H, W] as the transformer uses, or [B, C, F, H, W]). Coefficients are computed in
alphabar's dtype (float64 for CogVideoX) and rounded once to the tensor's dtype, which is what the diffusers
schedulers' step functions do.
"""

from __future__ import annotations

import torch

Timestep = int | torch.Tensor  # one timestep, or one per sample with shape [B]


def _coefficients(alphas_cumprod: torch.Tensor, t: Timestep, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(alphabar_t), sqrt(1 - alphabar_t)) in `like`'s dtype and device, broadcastable against `like`."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    ab = alphas_cumprod[t]
    if ab.ndim == 1:
        assert ab.shape[0] == like.shape[0], f"{ab.shape[0]} timesteps for a batch of {like.shape[0]}"
        ab = ab.reshape(-1, *([1] * (like.ndim - 1)))
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return a.to(like.device, like.dtype), s.to(like.device, like.dtype)


def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
    """Forward process q(x_t | x0): a x0 + s eps."""
    a, s = _coefficients(alphas_cumprod, t, x0)
    return a * x0 + s * noise


def v_target(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
    """The training target v = a eps - s x0."""
    a, s = _coefficients(alphas_cumprod, t, x0)
    return a * noise - s * x0


def x0_from_v(alphas_cumprod: torch.Tensor, x_t: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    a, s = _coefficients(alphas_cumprod, t, x_t)
    return a * x_t - s * v


def eps_from_v(alphas_cumprod: torch.Tensor, x_t: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
    a, s = _coefficients(alphas_cumprod, t, x_t)
    return s * x_t + a * v


def loss_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """CogVideoX's per-sample loss weight 1 / (1 - alphabar_t), shape of `t`, in alphabar's dtype.

    It multiplies the error of the predicted x0 (`x0_from_v` of the model output), not of v: the CogVideoX training
    code converts the v output to x0 and regresses the clean latent, loss = mean(w * (x0_pred - x0)^2). Because
    x0_pred - x0 = -sqrt(1 - alphabar) (v_pred - v), that equals the unweighted v MSE.
    """
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    return 1.0 / (1.0 - alphas_cumprod[t])
