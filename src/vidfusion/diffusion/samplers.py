"""DDIM and DPM-Solver++(2M) SDE samplers for v-prediction, step-for-step equal to diffusers' CogVideoX schedulers.

Loop:
    sampler = make_sampler("dpm", config, num_steps)
    for t in sampler.timesteps:
        v = model(x, t)                      # after classifier-free guidance
        x, x0 = sampler.step(v, t, x, generator)

Parity details that are deliberate, not accidents:
- The step target is t - num_train_timesteps // num_steps (`schedule.previous_timestep`), not the next entry of
  `timesteps`; below 0 it is the clean sample (alphabar = 1).
- Step coefficients are float64 0-d tensors (alphabar is float64); torch rounds them to the latents' dtype.
- DDIM is deterministic (eta = 0): diffusers' CogVideoX DDIM step ignores eta and the generator, and so do we.
- DPM draws one noise tensor on every step and a second one on second-order steps, where the first is thrown away,
  so a seeded generator gives the same trajectory as the diffusers pipeline. Steps are first-order when there is no
  previous x0 (the first step) or when the step lands below t = 0 (the last step, for step counts that divide 1000).
- The DPM "previous timestep" used for the second-order ratio is the timestep of the previous call, which is what the
  pipeline passes (`timesteps[i - 1]`); with zero terminal SNR the second step is therefore still first-order in
  effect (r = inf), but it still draws twice.
- lambda = log sqrt(alphabar / (1 - alphabar)) is -inf at the zero-SNR timestep and +inf at alphabar = 1; the
  formulas are evaluated in tensors so those infinities resolve as in diffusers (exp(-inf) = 0) instead of raising.
"""

from __future__ import annotations

import torch

from vidfusion.diffusion.schedule import (
    ScheduleConfig,
    alphas_cumprod,
    final_alpha_cumprod,
    inference_timesteps,
    previous_timestep,
)
from vidfusion.errors import VidFusionError


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator with CUDA latents draws on CPU), as diffusers' randn_tensor does,
    # so the same seed gives the same noise whatever device the latents live on.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _log_snr_half(ab: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = log sqrt(alphabar / (1 - alphabar))."""
    return (ab / (1 - ab)).sqrt().log()


class _Sampler:
    def __init__(self, config: ScheduleConfig, num_steps: int):
        if config.prediction_type != "v_prediction":
            raise VidFusionError(
                f"prediction_type={config.prediction_type!r} is not supported by the samplers; CogVideoX models "
                f"predict v, so set prediction_type='v_prediction' in the scheduler config"
            )
        self.config = config
        self.num_steps = num_steps
        self.timesteps = inference_timesteps(config, num_steps)
        self.alphas_cumprod = alphas_cumprod(config)
        self.final_alphabar = final_alpha_cumprod(config, self.alphas_cumprod)

    def _alphabars(self, timestep: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(alphabar at `timestep`, alphabar at the step's target, the target timestep)."""
        prev_t = previous_timestep(self.config, timestep, self.num_steps)
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alphabar
        return self.alphas_cumprod[timestep], ab_prev, prev_t

    def reset(self) -> None:
        """Forget state from a previous run (a no-op for stateless samplers)."""


class DDIMSampler(_Sampler):
    """Deterministic DDIM (eta = 0) on v-predictions."""

    def step(
        self, v_pred: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from `timestep`; returns (next sample, predicted x0). `generator` is accepted and unused."""
        ab_t, ab_prev, _ = self._alphabars(int(timestep))
        x0 = ab_t.sqrt() * sample - (1 - ab_t).sqrt() * v_pred
        # x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps_hat, with eps_hat rewritten in terms of (x_t, x0).
        a = ((1 - ab_prev) / (1 - ab_t)).sqrt()
        b = ab_prev.sqrt() - ab_t.sqrt() * a
        return a * sample + b * x0, x0


class DPMSolverSampler(_Sampler):
    """DPM-Solver++(2M) SDE on v-predictions. Stateful: keeps the previous x0 and timestep; `reset()` between runs."""

    def __init__(self, config: ScheduleConfig, num_steps: int):
        super().__init__(config, num_steps)
        self.reset()

    def reset(self) -> None:
        self.prev_x0: torch.Tensor | None = None
        self.prev_timestep: int | None = None

    def step(
        self, v_pred: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from `timestep`; returns (next sample, predicted x0)."""
        timestep = int(timestep)
        ab_t, ab_prev, prev_t = self._alphabars(timestep)
        x0 = ab_t.sqrt() * sample - (1 - ab_t).sqrt() * v_pred

        lam, lam_next = _log_snr_half(ab_t), _log_snr_half(ab_prev)
        h = lam_next - lam
        # Exact SDE solution over [lam, lam_next] with x0 held fixed: decay of x, pull towards x0, fresh noise.
        keep = ((1 - ab_prev) / (1 - ab_t)).sqrt() * (-h).exp()
        pull = (-2 * h).expm1() * ab_prev.sqrt()  # negative: x_prev = keep x - pull x0 + ...
        noise_scale = (1 - ab_prev).sqrt() * (1 - (-2 * h).exp()).sqrt()

        noise = _randn_like(sample, generator)
        if self.prev_x0 is None or prev_t < 0:
            x_prev = keep * sample - pull * x0 + noise_scale * noise
        else:
            # Second order: extrapolate x0 linearly in lambda from the previous step's x0.
            h_last = lam - _log_snr_half(self.alphas_cumprod[self.prev_timestep])
            r = h_last / h
            x0_2m = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self.prev_x0
            noise = _randn_like(sample, generator)  # diffusers discards the first draw here
            x_prev = keep * sample - pull * x0_2m + noise_scale * noise

        self.prev_x0, self.prev_timestep = x0, timestep
        return x_prev, x0


SAMPLERS = {"ddim": DDIMSampler, "dpm": DPMSolverSampler}


def timesteps_from(sampler: DDIMSampler | DPMSolverSampler, start: int | None = None) -> torch.Tensor:
    """The sampler's timesteps at or below `start` (all of them when None): a run that enters the schedule part way,
    from a latent noised to `start` (FreeInit's later passes)."""
    return sampler.timesteps if start is None else sampler.timesteps[sampler.timesteps <= start]


def check_sampler_name(name: str) -> None:
    if name not in SAMPLERS:
        raise VidFusionError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def make_sampler(name: str, config: ScheduleConfig, num_steps: int) -> DDIMSampler | DPMSolverSampler:
    check_sampler_name(name)
    return SAMPLERS[name](config, num_steps)
