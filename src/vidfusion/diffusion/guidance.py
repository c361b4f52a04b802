"""Classifier-free guidance and CogVideoX's dynamic guidance scale.

`dynamic_cfg_scale` is the formula of the diffusers CogVideoX pipelines, kept as written there: `timestep` is the
timestep value (999 ... 19), not the step index. With 50 steps ((N - t) / N) ** 5 is then a large negative number
for most of the run, so the cosine, and with it the scale, swings between 1 and 1 + s from step to step rather than
ramping smoothly; it varies smoothly only over the last few timesteps (t < 2N). We reproduce it for parity.
"""

from __future__ import annotations

import math

import torch


def cfg(v_uncond: torch.Tensor, v_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """u + s (c - u); scale 1 returns the conditional prediction."""
    return v_uncond + scale * (v_cond - v_uncond)


def dynamic_cfg_scale(scale: float, timestep: int | torch.Tensor, num_steps: int) -> float:
    """1 + s (1 - cos(pi ((N - t) / N) ** 5)) / 2 with t the timestep value and N the number of sampling steps."""
    t = float(timestep)
    return 1 + scale * (1 - math.cos(math.pi * ((num_steps - t) / num_steps) ** 5.0)) / 2
