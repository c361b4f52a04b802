"""CogVideoX noise schedule: betas -> alphabar (SNR shift, zero terminal SNR) and inference timesteps.

`ScheduleConfig` carries exactly the keys of a diffusers `scheduler_config.json` for `CogVideoXDDIMScheduler` and
`CogVideoXDPMScheduler` (both classes share one key set), so a released checkpoint's file loads as is. Keys missing
from a file take our defaults, which are the released CogVideoX values, not diffusers' class defaults (epsilon,
leading spacing, no rescale): every released file lists all keys, so this only matters for hand-written configs.

Numerics follow diffusers on purpose: scaled-linear betas are built in float64, so alphabar stays float64 and the
samplers compute their per-step coefficients in float64 before they meet the (float32) latents. With zero terminal
SNR alphabar[-1] is exactly 0, so t = 999 is pure noise.

`clip_sample`, `clip_sample_range` and `sample_max_value` are accepted for compatibility but unused: the CogVideoX
schedulers never clip.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from vidfusion.errors import VidFusionError
from vidfusion.io.config import config_from_dict

SCHEDULER_CLASS_NAMES = ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")
BETA_SCHEDULES = ("scaled_linear", "linear")
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "v_prediction"
    timestep_spacing: str = "trailing"
    rescale_betas_zero_snr: bool = True
    snr_shift_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.trained_betas is not None:
            # Stored as a tuple so the frozen config stays hashable and cannot be mutated through the list.
            object.__setattr__(self, "trained_betas", tuple(float(b) for b in self.trained_betas))
        if self.beta_schedule not in BETA_SCHEDULES and self.trained_betas is None:
            raise VidFusionError(
                f"beta_schedule={self.beta_schedule!r} is not supported; use one of {', '.join(BETA_SCHEDULES)}"
            )
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise VidFusionError(
                f"timestep_spacing={self.timestep_spacing!r} is not supported; "
                f"use one of {', '.join(TIMESTEP_SPACINGS)}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise VidFusionError(
                f"prediction_type={self.prediction_type!r} is unknown; use one of {', '.join(PREDICTION_TYPES)}"
            )
        if self.num_train_timesteps < 1:
            raise VidFusionError(f"num_train_timesteps={self.num_train_timesteps} must be >= 1; CogVideoX uses 1000")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScheduleConfig:
        """Read a diffusers `scheduler_config.json` dict of either CogVideoX scheduler (see `config_from_dict`)."""
        return config_from_dict(cls, d, SCHEDULER_CLASS_NAMES, "scheduler")

    def to_dict(self, class_name: str = "CogVideoXDDIMScheduler") -> dict[str, Any]:
        """The diffusers `scheduler_config.json` contents for `class_name`."""
        if class_name not in SCHEDULER_CLASS_NAMES:
            raise VidFusionError(
                f"scheduler class {class_name!r} is unknown; use one of {', '.join(SCHEDULER_CLASS_NAMES)}"
            )
        d: dict[str, Any] = {"_class_name": class_name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else value
        return d


# The released scheduler configs differ only in the SNR shift.
COGVIDEOX_2B_SCHEDULE = ScheduleConfig(snr_shift_scale=3.0)
COGVIDEOX_5B_SCHEDULE = ScheduleConfig(snr_shift_scale=1.0)  # also CogVideoX-5B-I2V and the 1.5 models


def scaled_linear_betas(beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """Betas linear in sqrt(beta) (Stable Diffusion's schedule), float64."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def shift_snr(alphas_cumprod: torch.Tensor, scale: float) -> torch.Tensor:
    """Divide the SNR alphabar / (1 - alphabar) by `scale`: alphabar / (s + (1 - s) alphabar)."""
    return alphas_cumprod / (scale + (1 - scale) * alphas_cumprod)


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and stretch sqrt(alphabar) so the last step has SNR exactly 0 and the first keeps its value
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1)."""
    sqrt_ab = alphas_cumprod.sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    return sqrt_ab**2


def alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    """alphabar_t for t = 0 .. num_train_timesteps - 1 (float64 for scaled_linear, float32 otherwise, as diffusers)."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = torch.tensor(config.trained_betas, dtype=torch.float32)
    elif config.beta_schedule == "scaled_linear":
        betas = scaled_linear_betas(config.beta_start, config.beta_end, n)
    else:
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    ab = torch.cumprod(1.0 - betas, dim=0)
    # diffusers applies the shift unconditionally; with s = 1 it is an exact identity.
    ab = shift_snr(ab, config.snr_shift_scale)
    if config.rescale_betas_zero_snr:
        ab = rescale_zero_terminal_snr(ab)
    return ab


def final_alpha_cumprod(config: ScheduleConfig, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alphabar used when the previous timestep falls below 0 (the last step lands on the clean sample)."""
    return torch.tensor(1.0, dtype=torch.float64) if config.set_alpha_to_one else alphas_cumprod[0]


def check_num_steps(config: ScheduleConfig, num_steps: int) -> None:
    if not 1 <= num_steps <= config.num_train_timesteps:
        raise VidFusionError(
            f"num_steps={num_steps} is out of range; "
            f"use 1 to {config.num_train_timesteps} sampling steps (50 is typical)"
        )


def inference_timesteps(config: ScheduleConfig, num_steps: int) -> torch.Tensor:
    """Descending integer timesteps for `num_steps` sampling steps (trailing, 50 steps: 999, 979, ..., 19)."""
    check_num_steps(config, num_steps)
    n = config.num_train_timesteps
    if config.timestep_spacing == "trailing":
        # Written as numpy's float arange computes it (start + i * ((start + step) - start)), because the reference
        # uses numpy and torch.arange rounds differently: for 48 steps torch gives 937 where numpy gives 936.
        step = -n / num_steps
        count = math.ceil(-n / step)
        t = (n + torch.arange(count, dtype=torch.float64) * ((n + step) - n)).round() - 1
    elif config.timestep_spacing == "leading":
        t = (torch.arange(num_steps, dtype=torch.float64) * (n // num_steps)).flip(0) + config.steps_offset
    else:  # linspace, written as numpy computes it: i * step, with the endpoint set exactly
        t = torch.arange(num_steps, dtype=torch.float64) * ((n - 1) / max(num_steps - 1, 1))
        t[-1] = n - 1 if num_steps > 1 else 0
        t = t.round().flip(0)
    return t.long()


def previous_timestep(config: ScheduleConfig, timestep: int, num_steps: int) -> int:
    """The timestep a step from `timestep` lands on: t - num_train_timesteps // num_steps, as the CogVideoX schedulers
    compute it. With trailing spacing and a step count that does not divide 1000 this is not always the next entry of
    `inference_timesteps` (30 steps: 966 -> 933, then the sampler is called at 932); we keep that for parity."""
    return int(timestep) - config.num_train_timesteps // num_steps
