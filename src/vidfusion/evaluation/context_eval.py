"""Evaluations of the masked-context paths on the procedural world, where the truth is known.

- `evaluate_i2v`: the first frame of n evaluation clips is the input image and their caption the prompt. Scores: PSNR
  of the first output frame against the image, and whether the checker finds each of the scene's object groups (its
  colour, and its shape) on the *last* frame, i.e. the image's content survives the whole clip.
- `evaluate_long`: a video of `chunks_x` times the trained length per prompt. Scores: the checker on the first and on
  the last T frames (does the video fall apart?), and seams: the mean absolute frame-to-frame change (0..255) over the
  transitions of each join's cross-fade window against the change over all other transitions.
- `evaluate_interpolation`: a clip rendered at 4x the base frame rate is the truth; its every 4th frame are the keys
  (exactly the base-rate clip). Scores: PSNR of the interpolated (non-key) frames against the truth, and the same for
  linear blending of the two neighbouring keys, the baseline an interpolator must beat; also PSNR over the moving
  pixels only (where the truth differs from the blend
  by more than 8/255), where blending is wrong and the model must do the work.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from vidfusion.data.world import prompt_attributes, render, sample, scene_and_caption
from vidfusion.evaluation.adherence import score_video
from vidfusion.evaluation.reconstruction import psnr
from vidfusion.io.pretrained import Components
from vidfusion.io.video import to_uint8_frames
from vidfusion.pipelines.interpolation import STEP, interpolate_x4
from vidfusion.pipelines.interpolation import linear_blend as blend_frames
from vidfusion.pipelines.long_video import long_video
from vidfusion.pipelines.masked_context import first_frame_context, generate_with_context
from vidfusion.pipelines.text_to_video import T2VRequest, sampling_default

ADHERENCE_KEYS = ("colour", "shape", "motion")


def _request(components: Components, prompt: str, steps: int | None, guidance: float | None, seed: int) -> T2VRequest:
    return T2VRequest(prompt, num_steps=sampling_default(components.defaults, "num_steps", steps),
                      guidance_scale=sampling_default(components.defaults, "guidance_scale", guidance), seed=seed)


def _to_model(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _fps(components: Components) -> float:
    return float(sampling_default(components.defaults, "fps"))


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def colour_shape_groups(attributes: dict) -> dict:
    """The scene's object groups with only colour and shape: what a single frame can show (I2V's last frame)."""
    return {"objects": [{"colour": g["colour"], "shape": g["shape"]} for g in attributes["objects"]]}


def moving_psnr(video: np.ndarray, truth: np.ndarray, moving: np.ndarray) -> float:
    """PSNR over the pixels where `moving` [..., 1] is set (all three channels of each)."""
    err = ((video.astype(np.float64) - truth) ** 2 * moving).sum() / max(3 * moving.sum(), 1)
    return float(10 * np.log10(255.0**2 / max(err, 1e-10)))


def evaluate_i2v(components: Components, n: int = 100, split: str = "heldout", seed: int = 0,
                 steps: int | None = None, guidance: float | None = None, context_scale: float = 1.0,
                 progress: bool = True) -> dict:
    rows = []
    for index in tqdm(range(n), desc=f"i2v ({split})", disable=not progress, unit="image"):
        s = sample(index, split)
        frames = s.video.shape[0]
        image = _to_model(s.video[:1])[0]
        request = _request(components, s.caption, steps, guidance, seed)
        video = generate_with_context(components, request, first_frame_context(image, frames, _fps(components),
                                                                                context_scale), progress=False)
        out = to_uint8_frames(video)
        last = score_video(out[-1:], colour_shape_groups(prompt_attributes(s.scene)))
        rows.append({"index": index, "prompt": s.caption, "first_frame_psnr": psnr(out[0], s.video[0]),
                     "last_colour": last["colour"], "last_shape": last["shape"]})
    return {
        "first_frame_psnr": _mean(r["first_frame_psnr"] for r in rows),
        "last_frame_colour": _mean(r["last_colour"] for r in rows),
        "last_frame_shape": _mean(r["last_shape"] for r in rows),
        "rows": rows,
        "settings": {"n": n, "split": split, "seed": seed, "context_scale": context_scale},
    }


def frame_changes(video: np.ndarray) -> np.ndarray:
    """Mean absolute change (0..255) of each transition: [T - 1], entry i is between frames i and i + 1."""
    v = video.astype(np.float32)
    return np.abs(v[1:] - v[:-1]).mean(axis=(1, 2, 3))


def seam_ratio(video: np.ndarray, joins: list[int], overlap: int) -> dict:
    """Mean change over the transitions of each join's window (its cross-fade plus the first new frame) against the
    mean over all other transitions."""
    changes = frame_changes(video)
    border = np.zeros(changes.shape[0], dtype=bool)
    for j in joins:
        border[max(0, j - overlap - 1): j] = True  # transitions (j-K-1 -> j-K) ... (j-1 -> j)
    inside = changes[~border]
    at = changes[border]
    return {"border_change": float(at.mean()) if at.size else None, "inside_change": float(inside.mean()),
            "ratio": float(at.mean() / max(inside.mean(), 1e-6)) if at.size else None}


def evaluate_long(components: Components, n: int = 20, chunks_x: int = 10, split: str = "heldout", seed: int = 0,
                  steps: int | None = None, guidance: float | None = None, context_frames: int = 5,
                  context_scale: float = 1.0, progress: bool = True, keep_videos: int = 0,
                  colour_match: bool = False, context_noise: float = 0.0) -> dict:
    config = components.transformer.config
    t = config.sample_frames
    rows, videos = [], []
    for index in tqdm(range(n), desc=f"long x{chunks_x} ({split})", disable=not progress, unit="video"):
        scene, prompt, _ = scene_and_caption(index, split)
        attributes = prompt_attributes(scene)
        video, joins = long_video(components, _request(components, prompt, steps, guidance, seed), chunks_x * t,
                                  context_frames=context_frames, context_scale=context_scale, progress=False,
                                  colour_match=colour_match, context_noise=context_noise)
        out = to_uint8_frames(video)
        if len(videos) < keep_videos:
            videos.append(out)
        first, last = score_video(out[:t], attributes), score_video(out[-t:], attributes)
        rows.append({"index": index, "prompt": prompt, "first": {k: first[k] for k in ADHERENCE_KEYS},
                     "last": {k: last[k] for k in ADHERENCE_KEYS}, **seam_ratio(out, joins, context_frames)})
    table = {}
    for part in ("first", "last"):
        table[part] = {k: _mean(r[part][k] for r in rows) for k in ADHERENCE_KEYS}
        table[part]["mean"] = _mean(table[part][k] for k in ADHERENCE_KEYS)
    border, inside = _mean(r["border_change"] for r in rows), _mean(r["inside_change"] for r in rows)
    return {
        "adherence": table,
        "border_change": border,
        "inside_change": inside,
        "seam_ratio": border / max(inside, 1e-6),
        "rows": rows,
        "videos": videos,
        "settings": {"n": n, "frames": chunks_x * t, "split": split, "seed": seed, "context_frames": context_frames,
                     "context_scale": context_scale, "colour_match": colour_match, "context_noise": context_noise},
    }


def linear_blend(keys: np.ndarray, factor: int = STEP) -> np.ndarray:
    """uint8 keys [N, H, W, 3] -> [(N - 1) * factor + 1, H, W, 3], each in-between frame a linear mix of its keys."""
    out = blend_frames(torch.from_numpy(keys), factor).numpy()
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def evaluate_interpolation(components: Components, n: int = 50, split: str = "val", seed: int = 0,
                           steps: int | None = None, guidance: float | None = None, context_scale: float = 1.0,
                           prompt: bool = True, progress: bool = True, blend_start: int | None = None) -> dict:
    config = components.transformer.config
    frames = config.sample_frames
    rows = []
    for index in tqdm(range(n), desc=f"interpolation ({split})", disable=not progress, unit="video"):
        scene, caption, _ = scene_and_caption(index, split)
        truth = render(scene, (frames - 1) * STEP + 1)
        keys = truth[::STEP]
        request = _request(components, caption if prompt else "", steps, guidance, seed)
        made = interpolate_x4(components, _to_model(keys), request, _fps(components), context_scale, progress=False,
                              blend_start=blend_start)
        outs = {"psnr": to_uint8_frames(made), "blend_psnr": linear_blend(keys)}
        between = np.ones(truth.shape[0], dtype=bool)
        between[::STEP] = False
        truth_b = truth[between].astype(np.float64)
        moving = np.abs(truth_b - outs["blend_psnr"][between]).max(axis=-1, keepdims=True) > 8
        row = {"index": index}
        for name, video in outs.items():
            row[name] = psnr(video[between], truth[between])
            row["moving_" + name] = moving_psnr(video[between], truth_b, moving)
        rows.append(row)
    keys = [k for k in rows[0] if k != "index"]
    return {**{k: _mean(r[k] for r in rows) for k in keys}, "rows": rows,
            "settings": {"n": n, "split": split, "seed": seed, "prompt": prompt, "guidance": request.guidance_scale,
                         "context_scale": context_scale, "blend_start": blend_start}}

