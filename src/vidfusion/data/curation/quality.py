"""Quality stage: scores computable offline on `frames` evenly spaced frames of each clip (averaged; text: maximum).

- sharpness: variance of the Laplacian of the grey frame resized to `width` px (a fixed size, so that a sharp 360p
  clip and a sharp 1080p clip score alike); blurry or upscaled footage scores low.
- brightness: mean luma in [0, 1]; clipped: the share of pixels at black (<= 4) or white (>= 251).
- blockiness: how much stronger luma steps are on the 8 px block grid of the coded frame than off it (1 = no block
  edges). Hand-written (a few lines of numpy) because no installed library offers a no-reference blockiness score.
- text_area: the share of the frame inside detected text boxes. "rapidocr" runs the DBNet text detector of
  rapidocr-onnxruntime (PP-OCRv4 weights inside the wheel, ONNX Runtime on CPU; detection only, no recognition).
  "heuristic" is NOT OCR: thin high-contrast strokes (morphological top-hat/black-hat) grouped into wide,
  densely filled boxes, which fires on some textures and misses small or low-contrast text. "auto" uses rapidocr
  when it is installed. rapidocr-onnxruntime is an optional install because it requires the GUI build of OpenCV
  (opencv-python), which clashes with the opencv-python-headless that vidfusion needs (both own the cv2 package);
  `pip install --no-deps rapidocr-onnxruntime==1.4.4 onnxruntime pyclipper shapely pyyaml` installs it beside the
  headless build, which it works with.
- aesthetic (plug-in, off by default): a CLIP model from a local folder scores the middle frame by how much more it
  matches "a beautiful, high quality photograph" than "an ugly, low quality photograph" (softmax over the two,
  0..1). A zero-shot proxy, not a trained aesthetic predictor.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import cv2
import numpy as np

from vidfusion.data.curation.config import QualityConfig
from vidfusion.data.curation.decode import iter_frames

AESTHETIC_PROMPTS = ("a beautiful, high quality photograph", "an ugly, low quality photograph")
OCR_MAX_SIDE = 480  # the text detector's input size: enough for text a model would learn to draw


def frame_indices(start: int, end: int, count: int) -> list[int]:
    """`count` frames spread evenly inside [start, end) (centres of equal parts, so never the edges)."""
    return sorted({start + int((2 * i + 1) * (end - start) / (2 * count)) for i in range(count)})


def sharpness(grey: np.ndarray, width: int) -> float:
    h, w = grey.shape
    resized = cv2.resize(grey, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(resized, cv2.CV_64F).var())


def exposure(grey: np.ndarray) -> tuple[float, float]:
    return float(grey.mean()) / 255.0, float(((grey <= 4) | (grey >= 251)).mean())


def blockiness(grey: np.ndarray) -> float:
    """Mean |luma step| across 8 px block boundaries over the mean step elsewhere, both directions averaged."""
    g = grey.astype(np.float32)
    ratios = []
    for steps in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):
        if steps.shape[1] < 16:
            continue
        on_grid = np.zeros(steps.shape[1], dtype=bool)
        on_grid[7::8] = True  # the step between pixel 8k + 7 and 8k + 8
        ratios.append(steps[:, on_grid].mean() / max(steps[:, ~on_grid].mean(), 1e-3))
    return float(np.mean(ratios)) if ratios else 1.0


def text_area_heuristic(rgb: np.ndarray) -> float:
    """Share of the frame in wide, densely filled boxes of thin high-contrast strokes. A heuristic, not OCR."""
    h, w = rgb.shape[:2]
    width = min(w, 640)
    grey = cv2.cvtColor(cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_RGB2GRAY)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 3))
    bright, dark = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, kernel), cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, kernel)
    strokes = cv2.max(bright, dark)
    _, mask = cv2.threshold(strokes, 40, 255, cv2.THRESH_BINARY)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (15, 3)))
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    height = grey.shape[0]
    area = sum(bw * bh for _, _, bw, bh, count in stats[1:]
               if 6 <= bh <= 0.1 * height and bw >= 3 * bh and count >= 0.4 * bw * bh)
    return area / grey.size


@functools.cache
def _rapidocr() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    # One thread: the runner already runs one worker per core.
    return RapidOCR(det_limit_side_len=OCR_MAX_SIDE, det_limit_type="max", intra_op_num_threads=1,
                    inter_op_num_threads=1)


def text_area_rapidocr(rgb: np.ndarray) -> float:
    boxes, _ = _rapidocr()(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), use_det=True, use_cls=False, use_rec=False)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    for box in boxes or []:
        cv2.fillPoly(mask, [np.asarray(box, np.int32)], 1)
    return float(mask.mean())


def resolve_text_detector(name: str) -> str:
    if name != "auto":
        return name
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        return "heuristic"
    return "rapidocr"


@functools.cache
def _clip(folder: str) -> tuple[Any, Any]:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    return model, CLIPProcessor.from_pretrained(folder, local_files_only=True)


def aesthetic_score(rgb: np.ndarray, folder: str) -> float:
    import torch

    model, processor = _clip(folder)
    inputs = processor(text=list(AESTHETIC_PROMPTS), images=[rgb], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image  # scaled cosine similarity of the frame to each prompt
    return float(logits.softmax(dim=-1)[0, 0])


def score_clips(path: str, clips: list[dict[str, Any]], cfg: QualityConfig) -> list[dict[str, Any]]:
    """Quality columns for each clip of one video, in the order given."""
    detector = resolve_text_detector(cfg.text_detector)
    text_area: Callable[[np.ndarray], float] = text_area_rapidocr if detector == "rapidocr" else text_area_heuristic
    picks = [frame_indices(c["start"], c["end"], cfg.frames) for c in clips]
    owner = {i: k for k, indices in enumerate(picks) for i in indices}
    scores: list[dict[str, list[float]]] = [{} for _ in clips]
    for index, rgb in iter_frames(path, set(owner), fmt="rgb24"):
        k = owner[index]
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        brightness, clipped = exposure(grey)
        values = {"sharpness": sharpness(grey, cfg.width), "brightness": brightness, "clipped": clipped,
                  "blockiness": blockiness(grey)}
        middle = picks[k][len(picks[k]) // 2] == index
        if middle or detector == "heuristic":  # the detector network is slow: the middle frame only
            values["text_area"] = text_area(rgb)
        if middle and cfg.aesthetic_model:
            values["aesthetic"] = aesthetic_score(rgb, cfg.aesthetic_model)
        for key, value in values.items():
            scores[k].setdefault(key, []).append(value)
    out = []
    for values in scores:
        row = {key: float(np.max(v) if key == "text_area" else np.mean(v)) for key, v in values.items()}
        out.append({**row, "text_detector": detector, "aesthetic": row.get("aesthetic")})
    return out
