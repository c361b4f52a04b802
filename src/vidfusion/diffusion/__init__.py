"""Noise schedules, v-prediction conversions, samplers and guidance."""

from vidfusion.diffusion.guidance import cfg, dynamic_cfg_scale
from vidfusion.diffusion.prediction import add_noise, eps_from_v, loss_weight, v_target, x0_from_v
from vidfusion.diffusion.samplers import DDIMSampler, DPMSolverSampler, make_sampler
from vidfusion.diffusion.schedule import (
    COGVIDEOX_2B_SCHEDULE,
    COGVIDEOX_5B_SCHEDULE,
    ScheduleConfig,
    alphas_cumprod,
    inference_timesteps,
)

__all__ = [
    "COGVIDEOX_2B_SCHEDULE",
    "COGVIDEOX_5B_SCHEDULE",
    "DDIMSampler",
    "DPMSolverSampler",
    "ScheduleConfig",
    "add_noise",
    "alphas_cumprod",
    "cfg",
    "dynamic_cfg_scale",
    "eps_from_v",
    "inference_timesteps",
    "loss_weight",
    "make_sampler",
    "v_target",
    "x0_from_v",
]
