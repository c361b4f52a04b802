"""Frame interpolation x4 (x16, x64 by repeating) with a masked-context model (Video LDM's T -> 4T, seed 003).

One pass predicts three frames between each pair of key frames. The model's clip of T = 17 frames holds 5 key frames
(every 4th frame known, mask 1/4 per latent; pipelines/masked_context.py) at 4x the input frame rate, which it gets
as its frame-rate label, as in training (training/task_mix.py, "interpolate"). A longer video is cut into windows of
5 keys that share their end keys; a short last window is padded by holding its last key, and the padding is cut off.
The key frames themselves are copied into the output unchanged: they are known, and re-rendering them through the
VAE would only blur them. x16 runs x4 twice, the second time on the x4 result at 4x the frame rate.

`blend_start=T` starts each window from the linear blend of its keys noised to T (the sampling grid's first
timestep at or below it) instead of from pure noise, and runs only the steps from there (SDEdit). Why: on the world's
mostly static clips blending is exact wherever nothing moves, and sampling from pure noise redraws those pixels
through the model; a perfect latent interpolator decoded by the shipped VAE would score 36.6 dB on `eval interp`'s
clips against blending's 35.1 (`benchmarks/interpolation_vae_bound.py`), while the model from pure noise scores 31.2.
Measured on the shipped model it does not help: 31.15 dB from t = 500, 30.88 from t = 150 (docs/context.md). The
model lands on the VAE's rendering of the static pixels whatever it starts from; the gap is on the moving ones.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from vidfusion.diffusion.freeinit import entry_timestep
from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import Components
from vidfusion.pipelines.masked_context import Context, check_context_model, generate_with_context
from vidfusion.pipelines.text_to_video import T2VRequest, resolve_size

STEP = 4  # frames per key interval after one pass


def check_factor(factor: int) -> int:
    """The number of x4 passes for `factor` (4, 16, 64 ...)."""
    passes, value = 0, factor
    while value > 1 and value % STEP == 0:
        value //= STEP
        passes += 1
    if value != 1 or passes == 0:
        raise VidFusionError(f"-x {factor} is not a power of 4; use 4, 16 or 64")
    return passes


def interpolated_length(num_frames: int, factor: int) -> int:
    return (num_frames - 1) * factor + 1


def linear_blend(keys: torch.Tensor, factor: int = STEP) -> torch.Tensor:
    """keys [N, ...] -> [(N - 1) * factor + 1, ...]: each in-between frame the linear mix of its two keys."""
    w = (torch.arange(factor, dtype=torch.float32) / factor).view(1, factor, *[1] * (keys.dim() - 1))
    k = keys.float()
    mixed = (1 - w) * k[:-1, None] + w * k[1:, None]
    return torch.cat([mixed.reshape(-1, *k.shape[1:]), k[-1:]])


def interpolate_x4(
    components: Components, video: torch.Tensor, request: T2VRequest, fps: float, context_scale: float = 1.0,
    progress: bool = True, blend_start: int | None = None,
) -> torch.Tensor:
    """video [N, 3, H, W] in [-1, 1] at `fps` -> [4(N - 1) + 1, 3, H, W] at 4 * fps; key frames copied exactly.
    `blend_start`: start each window from its keys' linear blend noised to this timestep (module docstring)."""
    check_context_model(components, "frame interpolation")
    chunk, height, width = resolve_size(components.transformer.config, replace(request, num_frames=None))
    keys_per_window = (chunk - 1) // STEP + 1
    n = video.shape[0]
    if video.ndim != 4 or tuple(video.shape[1:]) != (3, height, width):
        raise VidFusionError(f"the video to interpolate has shape {list(video.shape)}; resize it to [N, 3, {height}, "
                             f"{width}]")
    if n < 2:
        raise VidFusionError(f"the video has {n} frame; interpolation needs at least 2")
    video = video.float().cpu()
    out = torch.empty(interpolated_length(n, STEP), 3, height, width)
    start_t = None
    if blend_start is not None:
        last = components.schedule.num_train_timesteps - 1
        if not 0 <= blend_start <= last:
            raise VidFusionError(f"--blend-start {blend_start} is not a timestep; use 0 to {last} (lower keeps more "
                                 f"of the blend)")
        start_t = entry_timestep(components.schedule, request.num_steps, blend_start)
    windows = range(0, n - 1, keys_per_window - 1)
    for w, first in enumerate(tqdm(windows, desc=f"x4 at {4 * fps:g} fps", disable=not progress, unit="window")):
        index = torch.arange(first, first + keys_per_window).clamp(max=n - 1)  # hold the last key past the end
        frames = torch.zeros(chunk, 3, height, width)
        frames[::STEP] = video[index]
        known = torch.zeros(chunk, dtype=torch.bool)
        known[::STEP] = True
        window_request = replace(request, num_frames=chunk, seed=request.seed + w)
        blend = linear_blend(video[index]) if start_t is not None else None
        made = generate_with_context(components, window_request,
                                     Context(frames, known, 4 * fps, context_scale, start_frames=blend,
                                             start_timestep=start_t), progress=False)
        start = first * STEP
        stop = min(start + chunk, out.shape[0])
        out[start:stop] = made[: stop - start]
    out[::STEP] = video  # the keys exactly
    return out


def interpolate(
    components: Components, video: torch.Tensor, factor: int, request: T2VRequest, fps: float,
    context_scale: float = 1.0, progress: bool = True, blend_start: int | None = None,
) -> torch.Tensor:
    """video [N, 3, H, W] in [-1, 1] at `fps` -> [(N - 1) * factor + 1, 3, H, W] at factor * fps."""
    for i in range(check_factor(factor)):
        video = interpolate_x4(components, video, request, fps * STEP**i, context_scale, progress, blend_start)
    return video
