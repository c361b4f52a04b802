"""Motion stage: dense optical flow (OpenCV DIS, or Farneback) sampled at `fps` (2 by default) on frames downscaled
to `width` px and grey.

Each sample is the flow from a frame to the next one, not to the next sample: half a second apart, a fast pan moves
the picture by a third of its width, which no dense flow method follows on a 256 px frame (measured: DIS reported a
tenth of a 4 px/frame pan). Consecutive frames keep displacements small; sampling at 2 fps keeps the cost down.

- motion: the mean flow magnitude divided by the frame width and by the time between the two frames, averaged over
  the clip: frame widths per second, the same number for the same movement at any resolution or frame rate.
  A pan across the whole frame in 10 s scores 0.1.
- camera_motion: how much of the flow one global similarity transform (shift, zoom, rotation; OpenCV's RANSAC fit
  on a grid of flow vectors) explains, 0..1, weighted by magnitude over the clip. Pans and zooms come near 1; a
  person moving in front of a fixed camera comes near 0. It is a hint, not a classification: a large object filling
  the frame moves like a camera. 0 when nothing moves.

The video is decoded once for all its clips and only the current and the previous sample are kept.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from vidfusion.data.curation.config import MotionConfig
from vidfusion.data.curation.decode import iter_frames

GRID_STEP = 8  # px between the flow vectors the global-motion fit uses
MIN_FLOW_PX = 0.05  # below this mean magnitude a frame pair has no motion to attribute


def sample_indices(start: int, end: int, fps: float, rate: float) -> list[int]:
    """First frames of the flow pairs (t, t + 1) in [start, end): about 1/rate s apart, at least one."""
    count = max(1, int((end - 2 - start) / fps * rate) + 1)
    return sorted({int(round(x)) for x in np.linspace(start, max(start, end - 2), count)})


def flow_field(method: str):
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return lambda a, b: dis.calc(a, b, None)
    return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def pair_motion(flow: np.ndarray) -> tuple[float, float]:
    """(mean magnitude in px, share explained by a global similarity transform) of one flow field."""
    magnitude = float(np.linalg.norm(flow, axis=2).mean())
    if magnitude < MIN_FLOW_PX:
        return magnitude, 0.0
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[GRID_STEP // 2 : h : GRID_STEP, GRID_STEP // 2 : w : GRID_STEP]
    src = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    vectors = flow[ys.ravel(), xs.ravel()]
    transform, _ = cv2.estimateAffinePartial2D(src, src + vectors, method=cv2.RANSAC, ransacReprojThreshold=1.0)
    if transform is None:
        return magnitude, 0.0
    predicted = src @ transform[:, :2].T + transform[:, 2] - src
    residual = float(np.linalg.norm(vectors - predicted, axis=1).mean())
    return magnitude, float(np.clip(1.0 - residual / float(np.linalg.norm(vectors, axis=1).mean()), 0.0, 1.0))


def score_clips(path: str, clips: list[dict[str, Any]], cfg: MotionConfig) -> list[dict[str, Any]]:
    """{"motion", "camera_motion"} for each clip of one video, in the order given."""
    starts = [sample_indices(c["start"], c["end"], c["fps"], cfg.fps) for c in clips]
    first = {i: k for k, indices in enumerate(starts) for i in indices}  # clips do not overlap
    flow = flow_field(cfg.method)
    pairs: list[list[tuple[float, float, float]]] = [[] for _ in clips]  # (widths per second, camera share, px)
    previous: tuple[int, np.ndarray] | None = None
    wanted = set(first) | {i + 1 for i in first}
    for index, grey in iter_frames(path, wanted, width=cfg.width, fmt="gray"):
        if previous is not None and previous[0] == index - 1 and index - 1 in first:
            k = first[index - 1]
            magnitude, camera = pair_motion(flow(previous[1], grey))
            pairs[k].append((magnitude / grey.shape[1] * clips[k]["fps"], camera, magnitude))
        previous = (index, grey)
    out = []
    for values in pairs:
        speed, camera, px = (np.array(v) for v in zip(*values)) if values else (np.zeros(1),) * 3
        weight = px.sum()
        out.append({"motion": float(speed.mean()),
                    "camera_motion": float((camera * px).sum() / weight) if weight > 0 else 0.0})
    return out
