"""Temporal metrics of a video, computed offline: frame consistency, flicker and motion magnitude.

- Frame consistency: mean cosine similarity between the first frame's features and every later frame's (the
  FreeInit paper's metric, which uses DINO features). A video that does not move is trivially consistent, so it is
  always reported next to motion magnitude.
- Flicker: mean absolute difference (0-255 RGB levels) between each frame and the previous frame warped onto it with
  OpenCV's DIS optical flow (medium preset, on grey levels). Motion the flow explains costs nothing; what is left is
  appearance that changes in place: flashing, colour drift, objects popping. Pixels whose flow points outside the
  previous frame are left out (they have nothing to be compared with).
- Motion magnitude: mean length of that flow, in pixels per frame at the video's own resolution.

Features. We have no downloadable image encoder (no DINO, no CLIP), so each frame is encoded on its own by the
shipped tiny model's VAE encoder (posterior mean, 16 channels at 1/8 resolution, resized so the shorter side is
128 px first) and average-pooled to a 4 x 4 grid: a 256-number descriptor per frame. Why this encoder: it runs
offline, it was trained on exactly the domain we generate (the procedural world), and its latent is the space the
DiT samples in, so it sees colour, shape and layout the way the generator represents them. Why one frame at a time:
the encoder is a causal 3D network and, run over the clip, would mix each frame with the ones before it, which
inflates consistency. Why 4 x 4 pooling: like DINO's global token, the descriptor should tolerate an object moving
a little (a cell is 32 px at 128 px), while a full-resolution latent would score a moving but unchanged object as
inconsistent; the grid still keeps coarse layout, so a scene that changes which colour is where scores low.
The same features must be used for every video in a comparison, so the evaluation always uses the shipped VAE
unless told otherwise, whatever model made the videos.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vidfusion.errors import VidFusionError

SHIPPED_VAE = Path(__file__).resolve().parents[1] / "weights" / "tiny-t2v" / "vae"
FEATURE_SIZE = 128  # shorter side the frames are resized to before encoding
FEATURE_GRID = 4
METRICS = ("frame_consistency", "flicker", "motion")


def load_feature_encoder(folder: str | os.PathLike | None = None, device="cpu"):
    """The VAE whose encoder gives the frame features (default: the shipped tiny model's)."""
    from vidfusion.io.pretrained import load_vae

    return load_vae(folder or SHIPPED_VAE, device=device, dtype=torch.float32)


def _check_video(video: np.ndarray) -> None:
    if not (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3):
        raise VidFusionError("video must be a uint8 numpy array [T, H, W, 3] (RGB); "
                             "convert model output with vidfusion.io.video.to_uint8_frames")
    if len(video) < 2:
        raise VidFusionError(f"the video has {len(video)} frame; temporal metrics need at least 2 frames")


def _feature_resolution(height: int, width: int) -> tuple[int, int]:
    """Shorter side FEATURE_SIZE, aspect kept, both sides multiples of 8 (the VAE's stride)."""
    scale = FEATURE_SIZE / min(height, width)
    return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)


@torch.inference_mode()
def frame_features(video: np.ndarray, vae) -> torch.Tensor:
    """[T, C * 4 * 4] per-frame descriptors (float32, CPU): each frame encoded alone, pooled to a 4 x 4 grid."""
    _check_video(video)
    param = next(vae.parameters())
    height, width = _feature_resolution(*video.shape[1:3])
    if (height, width) != video.shape[1:3]:
        video = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in video])
    # Frames as a batch of 1-frame clips: [T, 3, 1, H, W].
    x = torch.from_numpy(video).to(param.device).permute(0, 3, 1, 2)[:, :, None].float() / 127.5 - 1
    latents = vae.encode(x.to(param.dtype)).mode()[:, :, 0].float()  # [T, C, h, w]
    return F.adaptive_avg_pool2d(latents, FEATURE_GRID).flatten(1).cpu()


def frame_consistency(features: torch.Tensor) -> float:
    """Mean cosine similarity of frame 0's features to each later frame's."""
    return F.cosine_similarity(features[:1], features[1:], dim=1).mean().item()


def _dis() -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def backward_flow(previous: np.ndarray, current: np.ndarray, dis: cv2.DISOpticalFlow | None = None) -> np.ndarray:
    """[H, W, 2] flow (dx, dy) such that current[y, x] ~ previous[y + dy, x + dx]; RGB uint8 frames in."""
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (current, previous)]
    return (dis or _dis()).calc(grey[0], grey[1], None)


def warp_previous(previous: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous warped onto the current frame's grid as float32, mask of pixels whose source is inside the frame)."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs + flow[..., 0], ys + flow[..., 1]
    warped = cv2.remap(previous.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, inside


def flow_metrics(video: np.ndarray) -> dict[str, float]:
    """{"flicker", "motion"}: means over consecutive frame pairs (see the module docstring)."""
    _check_video(video)
    dis = _dis()
    flicker, motion = [], []
    for previous, current in zip(video[:-1], video[1:]):
        flow = backward_flow(previous, current, dis)
        warped, inside = warp_previous(previous, flow)
        error = np.abs(current.astype(np.float32) - warped).mean(axis=-1)
        flicker.append(float(error[inside].mean()) if inside.any() else 0.0)
        motion.append(float(np.hypot(flow[..., 0], flow[..., 1]).mean()))
    return {"flicker": float(np.mean(flicker)), "motion": float(np.mean(motion))}


def temporal_scores(video: np.ndarray, vae) -> dict[str, float]:
    """{"frame_consistency", "flicker", "motion", "frames"} of one uint8 [T, H, W, 3] video."""
    return {"frame_consistency": frame_consistency(frame_features(video, vae)), **flow_metrics(video),
            "frames": len(video)}


def evaluate_files(paths: Sequence[str | os.PathLike], vae, max_frames: int | None = None) -> list[dict]:
    """`temporal_scores` of each video file, with its path; `max_frames` reads only the first frames."""
    from vidfusion.io.video import read_video

    rows = []
    for path in paths:
        video, _ = read_video(path, max_frames=max_frames)
        rows.append({"video": str(path), **temporal_scores(video, vae)})
    return rows


def mean_scores(rows: Iterable[Mapping]) -> dict[str, float]:
    rows = list(rows)
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def format_table(rows: Sequence[Mapping]) -> str:
    """Aligned text: one line per video, and a mean line when there are several."""
    rows = list(rows)
    if len(rows) > 1:
        rows.append({"video": "mean", **mean_scores(rows), "frames": ""})
    width = max(len("video"), *(len(str(r["video"])) for r in rows))
    lines = [f"{'video':<{width}}  {'frames':>6}  {'consistency':>11}  {'flicker':>7}  {'motion px':>9}"]
    for r in rows:
        lines.append(f"{str(r['video']):<{width}}  {r['frames']:>6}  {r['frame_consistency']:>11.4f}  "
                     f"{r['flicker']:>7.2f}  {r['motion']:>9.2f}")
    return "\n".join(lines)
