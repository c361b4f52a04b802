"""Training data for the masked-context model: world clips, each with a task (what is known) and a frame rate.

Per sample (deterministic in (seed, index)), a task is drawn with the `task_mix` weights:

    t2v          nothing known, base frame rate
    i2v          frame 0 known
    extend       the first K frames known, K drawn from `extend_frames` (each 4s + 1: whole latent frames)
    interpolate  a stretch of the clip rendered at a higher frame rate F (drawn from `interp_fps`); every 4th frame
                 is known, so the key frames are the clip at F / 4

The world draws each clip over clip time [0, 1] at `base_fps` (17 frames = 16 intervals), so at F frames per second
a window of the same frame count covers base_fps / F of it; the window start is drawn so it fits. Interpolating a
base-rate video x4 asks for F = 4 x base; applying it again asks for 16 x base, hence both rates in training.

With probability `context_dropout` the known frames are dropped (the sample keeps its frame rate): the model then
also learns the unconditional-on-context prediction that context guidance needs, and plain text-to-video at every
frame rate. The caption is the whole clip's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfusion.data.world import object_masks, render, scene_and_caption, shape_swapped_caption
from vidfusion.errors import VidFusionError
from vidfusion.training.common import probe_labels

TASKS = ("t2v", "i2v", "extend", "interpolate")
KEY_EVERY = 4  # interpolation key frames are every 4th frame (one per latent frame of the causal VAE)
_TASK_SEED = 0x7A5C


def check_task_settings(weights: Sequence[float], extend_frames: Sequence[int], interp_fps: Sequence[float],
                        base_fps: float, num_frames: int) -> None:
    if len(weights) != len(TASKS) or min(weights) < 0 or sum(weights) <= 0:
        raise VidFusionError(f"task_mix={list(weights)} needs {len(TASKS)} non-negative weights for "
                             f"{', '.join(TASKS)} with a positive sum; e.g. task_mix=0.4,0.2,0.2,0.2")
    for k in extend_frames:
        if (k - 1) % KEY_EVERY or not 1 <= k < num_frames:
            raise VidFusionError(f"extend_frames has {k}; each must be 4s + 1 and below num_frames={num_frames} "
                                 f"(whole latent frames), e.g. 5 or 9")
    for f in interp_fps:
        if f <= base_fps:
            raise VidFusionError(f"interp_fps has {f}, not above base_fps={base_fps}; use e.g. 32,128 for base 8")
    if (num_frames - 1) % KEY_EVERY:
        raise VidFusionError(f"num_frames={num_frames} is not 4k + 1; use 17")


def sample_task(rng: np.random.Generator, weights: Sequence[float], extend_frames: Sequence[int],
                interp_fps: Sequence[float], base_fps: float, num_frames: int,
                context_dropout: float) -> tuple[str, np.ndarray, float, np.ndarray | None]:
    """(task, known [T] bool, fps, clip times [T] or None for the whole clip at the base rate)."""
    p = np.asarray(weights, dtype=np.float64)
    task = TASKS[int(rng.choice(len(TASKS), p=p / p.sum()))]
    known = np.zeros(num_frames, dtype=bool)
    fps, times = float(base_fps), None
    if task == "i2v":
        known[0] = True
    elif task == "extend":
        known[: int(rng.choice(list(extend_frames)))] = True
    elif task == "interpolate":
        fps = float(rng.choice(list(interp_fps)))
        span = base_fps / fps  # of clip time, for num_frames frames at fps
        start = rng.uniform(0.0, 1.0 - span)
        times = np.minimum(start + np.linspace(0.0, span, num_frames), 1.0)
        known[::KEY_EVERY] = True
    if rng.random() < context_dropout:
        known[:] = False
    return task, known, fps, times


class TaskMixClips(Dataset):
    """Sample `i`: {"video": uint8 [3, T, H, W], "caption": str, "known": bool [T], "fps": float, "task": int}, and
    with `with_masks` "objects": bool [T, H, W] (world.object_masks), with `with_swaps` "swapped_caption": str
    (world.shape_swapped_caption), with `labels` the attribute probe's targets (common.probe_labels)."""

    def __init__(self, seed: int, num_frames: int, height: int, width: int, weights: Sequence[float],
                 extend_frames: Sequence[int], interp_fps: Sequence[float], base_fps: float,
                 context_dropout: float, with_masks: bool = False, with_swaps: bool = False,
                 labels: tuple[int, int] | None = None):
        check_task_settings(weights, extend_frames, interp_fps, base_fps, num_frames)
        self.seed, self.num_frames, self.height, self.width = seed, num_frames, height, width
        self.weights, self.extend_frames, self.interp_fps = tuple(weights), tuple(extend_frames), tuple(interp_fps)
        self.base_fps, self.context_dropout, self.with_masks = base_fps, context_dropout, with_masks
        self.with_swaps, self.labels = with_swaps, labels

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene, caption, _ = scene_and_caption(index, "train", self.seed)
        rng = np.random.default_rng([_TASK_SEED, self.seed, index])
        task, known, fps, times = sample_task(rng, self.weights, self.extend_frames, self.interp_fps, self.base_fps,
                                              self.num_frames, self.context_dropout)
        video = render(scene, self.num_frames, self.height, self.width, times=times)
        item = {"video": torch.from_numpy(video).permute(3, 0, 1, 2).contiguous(), "caption": caption,
                "known": torch.from_numpy(known), "fps": fps, "task": TASKS.index(task)}
        if self.with_masks:
            item["objects"] = torch.from_numpy(object_masks(scene, self.num_frames, self.height, self.width, times))
        if self.with_swaps:
            item["swapped_caption"] = shape_swapped_caption(index, "train", self.seed)
        if self.labels:
            item.update(probe_labels(scene, self.num_frames, self.height, self.width, self.labels, times))
        return item
