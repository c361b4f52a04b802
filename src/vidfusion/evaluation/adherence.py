"""Prompt-adherence checker for the procedural world: classical vision, no learned model.

`score_video(video, attributes)` checks a uint8 `[T, H, W, 3]` RGB video against the attributes a prompt asserts
(`world.prompt_attributes` or `captions.parse_prompt`) and returns a 1/0 score per attribute (averaged over
object groups when there are several) plus the measurements behind them. `summarise` turns many scores into a
per-attribute accuracy table.

How each attribute is measured:
- colour: pixels with saturation >= 100 and value >= 90 (OpenCV 0-255 scales) are labelled with the nearest
  palette hue within 10 OpenCV hue units (20 degrees). World backgrounds are at most 20% saturated, so only objects
  pass. A group's colour is present when its label has a component of at least `min_area` pixels in at least
  half of the frames. Groups are identified by colour (the world never gives two groups the same colour).
- count: connected components of the colour above `min_area` (0.12% of the frame; 8-connectivity), per frame;
  the most common count wins.
- shape: each component's outer contour in the 5 frames where the colour covers most area (grow/shrink objects
  are largest there). Solidity (area / convex hull area) < 0.85, or 4+ convexity defects deeper than 15% of the
  enclosing radius, means star or cross, split by the number of deep defects (5 vs 4). Convex shapes go to
  whichever of circle / square / triangle fills its minimal enclosing circle / rotated rectangle / triangle best.
  Majority vote over components and frames.
- motion, from the colour's mask (all its components together) in normalised frame coordinates (x / W, y / H),
  so "diagonal" means the same on any aspect ratio, and relative to the frame: a camera pan moves only the
  unsaturated background, which the checker never sees (the world never pans with a still object). In order:
  the centroid's largest excursion from the first frame >= 0.12 of the frame is a translation, unless the final
  displacement is under half of that excursion: then it went and came back, a bounce. A translation's direction
  is the nearest of 8 compass directions (45-degree sectors). With a static centroid: last / first area >= 1.6 is
  grow, <= 1 / 1.6 shrink; otherwise rotate when some frame's mask, centred on the first frame's centroid,
  overlaps the first frame's mask with IoU < 0.8 (every world shape turns >= its half-symmetry angle), else still.
- size (only when asserted, and not for grow/shrink): the components' minimal enclosing circle radius over the
  shape's circumradius factor, as a fraction of the shorter side; small below 0.1, large above (the world uses
  0.075 and 0.13).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import cv2
import numpy as np

from vidfusion.data.world import COLOURS, DIRECTIONS, MOTIONS, PALETTE, SHAPE_EXTENT, SHAPES, SIZES
from vidfusion.errors import VidFusionError

ATTRIBUTES = ("colour", "shape", "motion", "count", "size")

SAT_MIN = 100
VAL_MIN = 90
HUE_TOLERANCE = 10  # OpenCV hue units (degrees / 2)
MIN_AREA_FRACTION = 0.0012
MOVE_MIN = 0.12  # fraction of the frame the centroid must leave its start by to count as moving
BOUNCE_RETURN = 0.5  # final displacement below this fraction of the largest excursion: it came back
AREA_CHANGE = 1.6
ROTATE_IOU = 0.8
SOLIDITY_CONVEX = 0.85
SIZE_SPLIT = 0.1
SHAPE_FRAMES = 5


def _hue_table() -> np.ndarray:
    """Palette index of every OpenCV hue (0..179), or -1 where no palette hue is within tolerance."""
    rgb = np.array([[PALETTE[c] for c in COLOURS]], dtype=np.uint8)
    centres = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0, :, 0].astype(np.int32)
    hues = np.arange(180)[:, None]
    distance = np.abs(hues - centres[None, :])
    distance = np.minimum(distance, 180 - distance)  # hue is circular
    table = distance.argmin(axis=1).astype(np.int8)
    table[distance.min(axis=1) > HUE_TOLERANCE] = -1
    return table


_HUE_TABLE = _hue_table()


def colour_labels(video: np.ndarray) -> np.ndarray:
    """int8 `[T, H, W]`: index into `world.COLOURS` of each saturated pixel, -1 elsewhere."""
    t, h, w, _ = video.shape
    hsv = cv2.cvtColor(np.ascontiguousarray(video).reshape(t * h, w, 3), cv2.COLOR_RGB2HSV).reshape(t, h, w, 3)
    labels = _HUE_TABLE[hsv[..., 0]]
    labels[(hsv[..., 1] < SAT_MIN) | (hsv[..., 2] < VAL_MIN)] = -1
    return labels


def classify_contour(contour: np.ndarray) -> tuple[str, dict]:
    """Shape name of one outer contour and the features that decided it."""
    area = cv2.contourArea(contour)
    hull = cv2.convexHull(contour)
    solidity = area / max(cv2.contourArea(hull), 1e-6)
    (_, _), radius = cv2.minEnclosingCircle(contour)
    # A defect deeper than 15% of the enclosing radius is a notch between two points or arms.
    # Generated blobs can have self-intersecting outlines, for which OpenCV's hull indices are not monotonic; sorted
    # indices fix most, and a contour that still has no well-defined defects is judged by solidity and fill alone.
    hull_idx = np.sort(cv2.convexHull(contour, returnPoints=False), axis=0)
    try:
        defects = cv2.convexityDefects(contour, hull_idx)
    except cv2.error:
        defects = None
    deep = 0 if defects is None else int((defects.reshape(-1, 4)[:, 3] / 256.0 > 0.15 * radius).sum())
    if solidity < SOLIDITY_CONVEX or deep >= 4:
        shape = "star" if deep >= 5 else "cross" if deep == 4 else ("star" if solidity < 0.63 else "cross")
        return shape, {"solidity": solidity, "deep_defects": deep}
    (_, (rw, rh), _) = cv2.minAreaRect(contour)
    triangle_area, _ = cv2.minEnclosingTriangle(contour)
    fill = {
        "circle": area / max(math.pi * radius**2, 1e-6),
        "square": area / max(rw * rh, 1e-6) * min(rw, rh) / max(rw, rh, 1e-6),  # a long rectangle is no square
        "triangle": area / max(triangle_area, 1e-6),
    }
    return max(fill, key=fill.get), {"solidity": solidity, **{f"fill_{k}": v for k, v in fill.items()}}


def classify_motion(centroids: np.ndarray, areas: np.ndarray, masks: np.ndarray) -> tuple[str, dict]:
    """Motion name from per-frame centroids (normalised x, y), areas and masks of the frames where it is seen."""
    offsets = centroids - centroids[0]
    excursion = float(np.hypot(*offsets.T).max())
    dx, dy = offsets[-1]
    final = math.hypot(dx, dy)
    area_ratio = float(areas[-1] / max(areas[0], 1.0))
    info = {"excursion": excursion, "displacement": (float(dx), float(dy)), "area_ratio": area_ratio}
    if excursion >= MOVE_MIN:
        if final < BOUNCE_RETURN * excursion:
            return "bounce", info
        angle = math.degrees(math.atan2(-dy, dx))  # screen y points down
        return min(DIRECTIONS, key=lambda d: _angle_gap(angle, math.degrees(math.atan2(-DIRECTIONS[d][1],
                                                                                        DIRECTIONS[d][0])))), info
    if area_ratio >= AREA_CHANGE:
        return "grow", info
    if area_ratio <= 1.0 / AREA_CHANGE:
        return "shrink", info
    h, w = masks.shape[1:]
    first = masks[0]
    min_iou = 1.0
    for mask, (ox, oy) in zip(masks[1:], offsets[1:]):
        aligned = np.roll(mask, (-round(oy * h), -round(ox * w)), axis=(0, 1))
        union = np.logical_or(aligned, first).sum()
        min_iou = min(min_iou, float(np.logical_and(aligned, first).sum() / max(union, 1)))
    info["min_iou"] = min_iou
    return ("rotate" if min_iou < ROTATE_IOU else "still"), info


def _angle_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _measure_group(labels: np.ndarray, colour: str, shape_hint: str | None, min_area: int) -> dict:
    mask = labels == COLOURS.index(colour)
    num_frames, h, w = mask.shape
    counts = np.zeros(num_frames, dtype=np.int64)
    areas = np.zeros(num_frames)
    centroids = np.zeros((num_frames, 2))
    kept_masks = np.zeros_like(mask)
    components: list[tuple[np.ndarray, list[int]]] = []
    for t in range(num_frames):
        n, lab, stats, _ = cv2.connectedComponentsWithStats(mask[t].view(np.uint8), connectivity=8)
        keep = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
        components.append((lab, keep))
        counts[t] = len(keep)
        if keep:
            kept_masks[t] = np.isin(lab, keep)
            ys, xs = np.nonzero(kept_masks[t])
            areas[t] = len(xs)
            centroids[t] = (xs.mean() / w, ys.mean() / h)
    seen = counts > 0
    out: dict = {"present_fraction": float(seen.mean()), "count": int(np.bincount(counts).argmax())}
    if seen.sum() < max(1, num_frames / 2):
        return {**out, "shape": None, "motion": None, "size": None}

    shapes: list[str] = []
    radii: list[float] = []
    for t in np.argsort(-areas, kind="stable")[:SHAPE_FRAMES]:
        lab, keep = components[t]
        for i in keep:
            contours, _ = cv2.findContours((lab == i).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            contour = max(contours, key=cv2.contourArea)
            shapes.append(classify_contour(contour)[0])
            radii.append(cv2.minEnclosingCircle(contour)[1])
    shape = max(set(shapes), key=shapes.count)
    size_norm = float(np.median(radii)) / SHAPE_EXTENT[shape_hint or shape] / min(h, w)
    motion, motion_info = classify_motion(centroids[seen], areas[seen], kept_masks[seen])
    return {**out, "shape": shape, "shape_votes": {s: shapes.count(s) for s in set(shapes)}, "motion": motion,
            **motion_info, "size": "small" if size_norm < SIZE_SPLIT else "large", "size_fraction": size_norm}


def _groups(attributes: Mapping) -> list[dict]:
    groups = attributes.get("objects") or [attributes]
    for g in groups:
        for key, allowed in (("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS), ("size", SIZES)):
            if g.get(key) is not None and g[key] not in allowed:
                raise VidFusionError(f"unknown {key} {g[key]!r} in prompt attributes; use one of {', '.join(allowed)}")
        if g.get("colour") is None:
            raise VidFusionError("prompt attributes name no colour; the checker finds objects by colour, so give one")
    return list(groups)


def score_video(video: np.ndarray, attributes: Mapping, min_area: int | None = None) -> dict:
    """Per-attribute scores in [0, 1] (None when no group asserts it), "all", and "measurements".

    `attributes` is one group {"colour", "shape", "motion", "count", "size"} or a dict with "objects": [groups]
    (as `world.prompt_attributes` and `captions.parse_prompt` return). Missing or None entries are not scored.
    """
    if not (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3):
        raise VidFusionError("video must be a uint8 numpy array [T, H, W, 3] (RGB); "
                             "convert model output with vidfusion.io.video.to_uint8_frames")
    groups = _groups(attributes)
    labels = colour_labels(video)
    min_area = min_area or max(10, round(MIN_AREA_FRACTION * video.shape[1] * video.shape[2]))
    per_attribute: dict[str, list[float]] = {a: [] for a in ATTRIBUTES}
    measurements = []
    for g in groups:
        found = _measure_group(labels, g["colour"], g.get("shape"), min_area)
        measurements.append(found)
        present = found["shape"] is not None
        per_attribute["colour"].append(float(present))
        for key in ("shape", "motion", "count"):
            if g.get(key) is not None:
                per_attribute[key].append(float(found[key] == g[key]))
        if g.get("size") is not None and g.get("motion") not in ("grow", "shrink"):
            per_attribute["size"].append(float(present and found["size"] == g["size"]))
    scores: dict = {a: (float(np.mean(v)) if v else None) for a, v in per_attribute.items()}
    scores["all"] = float(all(s == 1.0 for s in scores.values() if s is not None))
    scores["measurements"] = {"groups": measurements, "min_area": min_area}
    return scores


def summarise(scores: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Mean score ("accuracy") and number of scored videos ("n") per attribute, plus "all"."""
    scores = list(scores)
    table = {}
    for attribute in (*ATTRIBUTES, "all"):
        values = [s[attribute] for s in scores if s.get(attribute) is not None]
        if values:
            table[attribute] = {"accuracy": float(np.mean(values)), "n": len(values)}
    return table


def format_summary(table: Mapping[str, Mapping[str, float]]) -> str:
    """The `summarise` table as aligned text lines."""
    lines = [f"{'attribute':<10} {'accuracy':>8} {'n':>6}"]
    lines += [f"{name:<10} {row['accuracy']:>8.3f} {row['n']:>6d}" for name, row in table.items()]
    return "\n".join(lines)


def shape_confusion(scores: Iterable[Mapping], attributes: Iterable[Mapping]) -> dict[str, dict[str, int]]:
    """How often each asked shape was read as each shape: {asked: {read: count}}, over every object group that
    asks for a shape; "none" when the group's colour was not found. Accuracy alone cannot tell a model that draws
    the wrong shapes from one whose ragged blobs the checker reads as random shapes; the table can."""
    table = {shape: {read: 0 for read in (*SHAPES, "none")} for shape in SHAPES}
    for score, attrs in zip(scores, attributes):
        for group, found in zip(_groups(attrs), score["measurements"]["groups"]):
            if group.get("shape") is not None:
                table[group["shape"]][found["shape"] or "none"] += 1
    return table


def format_confusion(table: Mapping[str, Mapping[str, int]]) -> str:
    """`shape_confusion` as aligned text: one row per asked shape, one column per shape read."""
    columns = list(next(iter(table.values())))
    lines = [f"{'asked / read':<12}" + "".join(f"{c:>9}" for c in columns)]
    lines += [f"{asked:<12}" + "".join(f"{row[c]:>9d}" for c in columns) for asked, row in table.items()]
    return "\n".join(lines)
