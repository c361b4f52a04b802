"""Procedural captioned world: one to three coloured shapes moving over a low-saturation background.

A scene is a small, resolution-free description (`SceneSpec`): shapes, palette colours, sizes and motions, with
positions in fractions of the frame and radii in fractions of its shorter side. `render` draws it at any size and
frame count as uint8 RGB `[T, H, W, 3]`; motions are parameterised by t in [0, 1] from the first to the last frame,
so a 17-frame and a 49-frame render show the same clip at different frame rates.

Decisions worth knowing:
- Object colours are 8 saturated hues at least 28 degrees apart; backgrounds are never more than 20% saturated.
  The adherence checker finds objects by saturated hue alone, so no background can ever read as an object.
- Objects never touch or leave the frame: every trajectory is checked over the whole clip before a scene is
  accepted, with a gap between objects, so connected components count objects exactly and shapes stay whole.
- Objects of one colour form a group that shares shape, size and motion ("two red circles moving left"); groups
  within a scene have distinct colours, so a colour names a group unambiguously in captions and in the checker.
- Motions are on-screen, relative to the frame. A camera pan only scrolls the background. A still object under a
  pan would read as "the camera follows a moving object", so pans are never combined with still objects.
- Circles never rotate: a spinning circle is invisible, so its caption could not be checked.
- Held-out generalisation: the colour-shape pairs in `HELDOUT_PAIRS` never occur in train or val scenes, and the
  held-out caption phrasings (see `captions.py`) never occur in train or val captions. The "heldout" split cycles
  by index through (held-out pair, train phrasing), (train-legal scene, held-out phrasing) and both at once.
- Every sample is a pure function of (split, seed, index) through `np.random.SeedSequence`, so the stream can be
  resumed at any index and evaluation splits are identical on every machine.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import re
from dataclasses import dataclass, replace
from typing import Iterator

import cv2
import numpy as np

from vidfusion.data.captions import COLOUR_WORDS, SHAPE_WORDS, caption, parse_prompt, uses_heldout_phrasing
from vidfusion.errors import VidFusionError

__all__ = [
    "BackgroundSpec", "ObjectSpec", "SceneSpec", "Sample", "SHAPES", "COLOURS", "PALETTE", "SIZES", "MOTIONS",
    "DIRECTIONS", "BACKGROUNDS", "PANS", "SPLITS", "HELDOUT_PAIRS", "sample_scene", "render", "caption",
    "parse_prompt", "uses_heldout_phrasing", "prompt_attributes", "is_train_legal", "scene_and_caption", "sample",
    "train_stream", "eval_split", "object_masks", "object_id_maps", "shape_swapped_caption",
]

SHAPES = ("circle", "square", "triangle", "star", "cross")

# Hue in degrees. Drawn at saturation 0.9 and value 0.95; the closest pair (orange/yellow) is 28 degrees apart.
COLOUR_HUES = {"red": 0, "orange": 30, "yellow": 58, "green": 120, "cyan": 185, "blue": 225, "purple": 270,
               "magenta": 315}
COLOURS = tuple(COLOUR_HUES)
PALETTE: dict[str, tuple[int, int, int]] = {
    name: tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue / 360, 0.9, 0.95))
    for name, hue in COLOUR_HUES.items()
}

SIZES = ("small", "large")
SIZE_RADIUS = {"small": 0.075, "large": 0.13}  # fraction of the frame's shorter side
SIZE_JITTER = 0.06  # relative; keeps the two sizes separable by the checker for every shape

# Screen direction of each translation; y grows downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
    "up-left": (-1, -1), "up-right": (1, -1), "down-left": (-1, 1), "down-right": (1, 1),
}
MOTIONS = (*DIRECTIONS, "bounce", "rotate", "grow", "shrink", "still")
GROW_SCALE = (0.55, 1.35)  # radius multiplier at the first and last frame of "grow" (reversed for "shrink")

BACKGROUNDS = ("solid", "gradient", "stripes", "noise", "checker")
TONES = ("dark", "light", "mixed")
PANS = ("left", "right", "up", "down")  # the direction the camera moves; the background scrolls the other way
SPLITS = ("train", "val", "heldout")

# One pair per shape and no colour twice, so every shape and colour is still seen in training.
HELDOUT_PAIRS = frozenset({("red", "triangle"), ("green", "star"), ("blue", "circle"), ("yellow", "square"),
                           ("purple", "cross")})

EDGE_MARGIN = 0.02  # fraction of the frame kept clear between an object and the border
OBJECT_GAP = 0.05  # fraction of the frame kept clear between two objects, at every frame
_TRACK_POINTS = np.linspace(0.0, 1.0, 33)  # where trajectories are checked; finer than any 17-frame render
_WORLD_SEED = 20_240_917
_SPLIT_CODES = {"train": 0, "val": 1, "heldout": 2}


def _regular(n: int, radius: float, start_deg: float = -90.0) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.25, 0.5)
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(h: float = 0.36) -> np.ndarray:
    return np.array([(-h, -1), (h, -1), (h, -h), (1, -h), (1, h), (h, h), (h, 1), (-h, 1), (-h, h), (-1, h),
                     (-1, -h), (-h, -h)], dtype=np.float64)


# Unit outlines (radius 1 = the object's nominal radius), sized so the shapes look about equally big.
SHAPE_POLYGONS: dict[str, np.ndarray] = {
    "circle": _regular(64, 1.0),
    "square": np.array([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]),
    "triangle": _regular(3, 1.2),
    "star": _star(),
    "cross": _cross(),
}
# Circumradius of each outline: what rotation sweeps and what the checker's enclosing circle measures.
SHAPE_EXTENT = {name: float(np.hypot(*poly.T).max()) for name, poly in SHAPE_POLYGONS.items()}


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    colour: str
    size: str
    motion: str
    start: tuple[float, float]  # centre (x, y) at the first frame, fractions of width and height
    radius: float  # nominal radius, fraction of the shorter side (before the grow/shrink scale)
    travel: float = 0.0  # translations: fraction of the frame per moving axis; bounce: jump height
    turn: float = 0.0  # rotate: signed degrees over the clip, positive = clockwise on screen


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str
    tone: str
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]  # RGB; "solid" uses the first
    angle: float = 0.0  # degrees: direction of the gradient or the stripes' normal
    period: float = 0.2  # stripe or checker period, fraction of the shorter side
    seed: int = 0  # noise texture


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec
    pan: str | None = None
    pan_travel: float = 0.0  # fraction of the frame the camera moves over the clip
    seed: int = 0

    def groups(self) -> list[tuple[ObjectSpec, int]]:
        """Objects grouped by colour, in order of first appearance: (representative object, count)."""
        counts: dict[str, int] = {}
        first: dict[str, ObjectSpec] = {}
        for obj in self.objects:
            first.setdefault(obj.colour, obj)
            counts[obj.colour] = counts.get(obj.colour, 0) + 1
        return [(first[c], counts[c]) for c in first]


@dataclass(frozen=True)
class Sample:
    video: np.ndarray  # uint8 [T, H, W, 3] RGB
    caption: str
    scene: SceneSpec
    index: int
    split: str
    heldout_phrasing: bool


def object_state(obj: ObjectSpec, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre x, y (fractions of the frame), radius scale and rotation (degrees) at clip time t in [0, 1]."""
    t = np.asarray(t, dtype=np.float64)
    x = np.full_like(t, obj.start[0])
    y = np.full_like(t, obj.start[1])
    scale = np.ones_like(t)
    angle = np.zeros_like(t)
    if obj.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[obj.motion]
        x = x + dx * obj.travel * t
        y = y + dy * obj.travel * t
    elif obj.motion == "bounce":
        y = y - obj.travel * np.sin(np.pi * t)  # up and back down, landing on the last frame
    elif obj.motion == "rotate":
        angle = obj.turn * t
    elif obj.motion == "grow":
        scale = GROW_SCALE[0] + (GROW_SCALE[1] - GROW_SCALE[0]) * t
    elif obj.motion == "shrink":
        scale = GROW_SCALE[1] + (GROW_SCALE[0] - GROW_SCALE[1]) * t
    return x, y, scale, angle


def _reach(obj: ObjectSpec, t: np.ndarray) -> np.ndarray:
    """Circumradius over time, in fractions of the shorter side."""
    return obj.radius * SHAPE_EXTENT[obj.shape] * object_state(obj, t)[2]


def _start_box(obj: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest start (x, y) that keep the whole trajectory inside the frame.

    Radii are fractions of the shorter side and so never larger in fractions of either axis: the box is safe for
    every aspect ratio.
    """
    probe = replace(obj, start=(0.0, 0.0))
    x, y, _, _ = object_state(probe, _TRACK_POINTS)
    margin = _reach(obj, _TRACK_POINTS) + EDGE_MARGIN
    offsets = np.stack([x, y], axis=1)
    low = (margin[:, None] - offsets).max(axis=0)
    high = (1.0 - margin[:, None] - offsets).min(axis=0)
    return low, high


def _motion_amounts(motion: str, rng: np.random.Generator) -> tuple[float, float]:
    """(travel, turn): large enough to read clearly over 17 frames, small enough to stay in frame."""
    if motion in ("left", "right", "up", "down"):
        return float(rng.uniform(0.4, 0.55)), 0.0
    if motion in DIRECTIONS:
        return float(rng.uniform(0.33, 0.42)), 0.0
    if motion == "bounce":
        return float(rng.uniform(0.3, 0.45)), 0.0
    if motion == "rotate":
        # >= 100 degrees passes the half-symmetry angle of every shape (45 degrees for square and cross).
        return 0.0, float(rng.choice([-1.0, 1.0]) * rng.uniform(100.0, 200.0))
    return 0.0, 0.0


def _sample_background(rng: np.random.Generator) -> BackgroundSpec:
    kind = str(rng.choice(BACKGROUNDS))
    tone = str(rng.choice(TONES))
    hue = rng.uniform(0.0, 1.0)

    def muted(value: float) -> tuple[int, int, int]:
        h = (hue + rng.uniform(-0.1, 0.1)) % 1.0
        return tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, rng.uniform(0.0, 0.2), value))

    dark, light = (0.05, 0.3), (0.6, 0.92)
    if tone == "mixed":
        values = (rng.uniform(*dark), rng.uniform(*light))
    else:
        low, high = dark if tone == "dark" else light
        first = rng.uniform(low, high)
        second = first + rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.2)
        if not low <= second <= high:
            second = first - (second - first)
        values = (first, float(np.clip(second, low, high)))
    return BackgroundSpec(
        kind=kind, tone=tone, colours=(muted(values[0]), muted(values[1])), angle=float(rng.uniform(0.0, 180.0)),
        period=float(rng.uniform(0.12, 0.3)), seed=int(rng.integers(2**31)),
    )


def _place(templates: list[ObjectSpec], counts: list[int], rng: np.random.Generator) -> list[ObjectSpec]:
    """Random starts for `counts[i]` copies of each template, with no two trajectories ever touching.

    Whole layouts are retried first; if none fits, members that find no room are dropped (the caption then just
    counts fewer). The first template is placed first, into an empty frame, so the main group always survives.
    """
    boxes = [_start_box(t) for t in templates]
    # Trajectories relative to the start, and circumradii, at the checked times: a candidate is start + offset.
    offsets = [np.stack(object_state(replace(t, start=(0.0, 0.0)), _TRACK_POINTS)[:2], axis=1) for t in templates]
    reaches = [_reach(t, _TRACK_POINTS) for t in templates]
    best: list[ObjectSpec] = []
    for _layout in range(20):
        placed: list[ObjectSpec] = []
        tracks: list[tuple[np.ndarray, np.ndarray]] = []
        for template, count, (low, high), offset, reach in zip(templates, counts, boxes, offsets, reaches):
            for _ in range(count):
                for _attempt in range(20):
                    start = rng.uniform(low, high)
                    path = start + offset
                    if all(np.all(np.hypot(*(path - other).T) >= reach + other_reach + OBJECT_GAP)
                           for other, other_reach in tracks):
                        placed.append(replace(template, start=(float(start[0]), float(start[1]))))
                        tracks.append((path, reach))
                        break
        if len(placed) == sum(counts):
            return placed
        if len(placed) > len(best):
            best = placed
    return best


def sample_scene(rng: np.random.Generator, *, allow_heldout_pairs: bool = False,
                 heldout_main_pair: bool = False) -> SceneSpec:
    """A random scene. Train scenes avoid `HELDOUT_PAIRS`; `heldout_main_pair` makes the first group one of them."""
    num_objects = int(rng.choice([1, 2, 3], p=[0.5, 0.33, 0.17]))
    if num_objects == 1:
        group_sizes = [1]
    elif rng.uniform() < 0.35:
        group_sizes = [num_objects]  # "two red circles ..."
    elif num_objects == 3 and rng.uniform() < 0.4:
        group_sizes = [2, 1]
    else:
        group_sizes = [1] * num_objects

    main_pair = sorted(HELDOUT_PAIRS)[rng.integers(len(HELDOUT_PAIRS))] if heldout_main_pair else None
    colours = [str(c) for c in rng.permutation(COLOURS) if main_pair is None or c != main_pair[0]]
    if main_pair is not None:
        colours.insert(0, main_pair[0])
    templates: list[ObjectSpec] = []
    for g, colour in enumerate(colours[: len(group_sizes)]):
        if g == 0 and main_pair is not None:
            shape = main_pair[1]
        else:
            shapes = [s for s in SHAPES if allow_heldout_pairs or (colour, s) not in HELDOUT_PAIRS]
            shape = str(rng.choice(shapes))
        motions = [m for m in MOTIONS if not (shape == "circle" and m == "rotate")]
        motion = str(rng.choice(motions))
        size = str(rng.choice(SIZES))
        travel, turn = _motion_amounts(motion, rng)
        radius = SIZE_RADIUS[size] * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))
        templates.append(ObjectSpec(shape, colour, size, motion, (0.5, 0.5), radius, travel, turn))
    placed = _place(templates, group_sizes, rng)
    pan, pan_travel = None, 0.0
    if all(o.motion != "still" for o in placed) and rng.uniform() < 0.3:
        pan, pan_travel = str(rng.choice(PANS)), float(rng.uniform(0.2, 0.35))
    return SceneSpec(objects=tuple(placed), background=_sample_background(rng), pan=pan, pan_travel=pan_travel,
                     seed=int(rng.integers(2**31)))


def is_train_legal(scene: SceneSpec) -> bool:
    """True when no object of the scene is a held-out colour-shape pair."""
    return all((o.colour, o.shape) not in HELDOUT_PAIRS for o in scene.objects)


def prompt_attributes(scene: SceneSpec) -> dict:
    """What a caption of this scene asserts, in the form `adherence.score_video` and `parse_prompt` use.

    Top-level colour/shape/motion/count/size describe the main (first) group; "objects" lists every group.
    Size is None for grow/shrink, whose size changes over the clip.
    """
    groups = [
        {"colour": o.colour, "shape": o.shape, "motion": o.motion, "count": n,
         "size": None if o.motion in ("grow", "shrink") else o.size}
        for o, n in scene.groups()
    ]
    return {**groups[0], "objects": groups, "num_objects": len(scene.objects), "pan": scene.pan}


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _background_canvas(bg: BackgroundSpec, height: int, width: int, unit: float) -> np.ndarray:
    """uint8 RGB canvas of the given (supersampled) size; coordinates in units of the frame's shorter side."""
    c0 = np.array(bg.colours[0], dtype=np.float32)
    c1 = np.array(bg.colours[1], dtype=np.float32)
    if bg.kind == "solid":
        return np.broadcast_to(c0.astype(np.uint8), (height, width, 3)).copy()
    if bg.kind == "noise":
        rng = np.random.default_rng(bg.seed)
        weight = np.zeros((height, width), dtype=np.float32)
        for cell, amount in ((0.3, 0.65), (0.1, 0.35)):  # two octaves of value noise
            grid = rng.uniform(0, 1, (int(height / (cell * unit)) + 2, int(width / (cell * unit)) + 2))
            up = cv2.resize(grid.astype(np.float32), (grid.shape[1] * round(cell * unit),
                                                      grid.shape[0] * round(cell * unit)),
                            interpolation=cv2.INTER_CUBIC)
            weight += amount * up[:height, :width]
        weight = (weight - weight.min()) / max(float(weight.max() - weight.min()), 1e-6)
        img = c0 + (c1 - c0) * weight[..., None]
        img += rng.normal(0.0, 6.0, (height, width, 1)).astype(np.float32)  # grey grain: shifts value, not hue
        return img.clip(0, 255).astype(np.uint8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / unit
    theta = math.radians(bg.angle)
    along = x * math.cos(theta) + y * math.sin(theta)
    if bg.kind == "gradient":
        weight = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif bg.kind == "stripes":
        weight = ((along / bg.period) % 1.0 >= 0.5).astype(np.float32)
    elif bg.kind == "checker":
        weight = ((np.floor(x / bg.period) + np.floor(y / bg.period)) % 2).astype(np.float32)
    else:
        raise AssertionError(f"unknown background kind {bg.kind}")
    return (c0 + (c1 - c0) * weight[..., None]).clip(0, 255).astype(np.uint8)


def _check_size(num_frames: int, height: int, width: int) -> None:
    if num_frames < 1:
        raise VidFusionError(f"num_frames={num_frames} must be at least 1; use e.g. 17 or 49")
    if min(height, width) < 16:
        raise VidFusionError(f"frame size {height}x{width} is too small to draw shapes; use at least 16x16")


def render(scene: SceneSpec, num_frames: int = 17, height: int = 128, width: int = 128,
           supersample: int = 2, times: np.ndarray | None = None) -> np.ndarray:
    """Draw the scene as uint8 RGB `[num_frames, height, width, 3]`.

    Shapes are anti-aliased polygons with 1/16-pixel vertices, drawn at `supersample` times the size and
    area-averaged down, so slow motions move smoothly rather than in whole-pixel steps.

    `times` (clip times in [0, 1], one per frame) replaces the default even spacing over the whole clip; it renders a
    stretch of the clip at a higher frame rate (frame interpolation data) and then sets num_frames.
    """
    if times is not None:
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or times.size == 0 or times.min() < 0.0 or times.max() > 1.0:
            raise VidFusionError("times must be a non-empty 1-D array of clip times in [0, 1]")
        num_frames = times.size
    _check_size(num_frames, height, width)
    big_h, big_w = height * supersample, width * supersample
    unit = min(big_h, big_w)
    pan_x = round(scene.pan_travel * big_w) if scene.pan in ("left", "right") else 0
    pan_y = round(scene.pan_travel * big_h) if scene.pan in ("up", "down") else 0
    canvas = _background_canvas(scene.background, big_h + pan_y, big_w + pan_x, unit)

    if times is None:
        times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    states = [object_state(obj, times) for obj in scene.objects]
    video = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i, t in enumerate(times):
        # The camera moving right shows canvas further right: the background scrolls left on screen.
        ox = round(pan_x * (t if scene.pan == "right" else 1 - t)) if pan_x else 0
        oy = round(pan_y * (t if scene.pan == "down" else 1 - t)) if pan_y else 0
        frame = canvas[oy:oy + big_h, ox:ox + big_w].copy()
        for obj, points in zip(scene.objects, _polygons(scene, states, i, big_h, big_w)):
            cv2.fillPoly(frame, [points], PALETTE[obj.colour], lineType=cv2.LINE_AA, shift=4)
        video[i] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return video


def _polygons(scene: SceneSpec, states: list, i: int, height: int, width: int) -> list[np.ndarray]:
    """Each object's outline at frame i, in 1/16-pixel integer vertices (cv2's `shift=4`) of a height x width frame."""
    unit = min(height, width)
    polygons = []
    for obj, (x, y, scale, angle) in zip(scene.objects, states):
        theta = math.radians(angle[i])
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        points = SHAPE_POLYGONS[obj.shape] @ rot.T * (obj.radius * scale[i] * unit)
        points += (x[i] * width, y[i] * height)
        polygons.append(np.round(points * 16).astype(np.int32))
    return polygons


def _object_states(scene: SceneSpec, num_frames: int, height: int, width: int,
                   times: np.ndarray | None) -> tuple[int, list]:
    """(frame count, each object's per-frame state) for drawing masks at `times` (default: evenly over the clip)."""
    if times is not None:
        num_frames = np.asarray(times).size
    _check_size(num_frames, height, width)
    if times is None:
        times = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    states = [object_state(obj, np.asarray(times, dtype=np.float64)) for obj in scene.objects]
    return num_frames, states


def object_masks(scene: SceneSpec, num_frames: int = 17, height: int = 128, width: int = 128,
                 times: np.ndarray | None = None) -> np.ndarray:
    """Where the objects are: bool `[num_frames, height, width]`, True on every pixel an object's outline covers at
    least partly (the footprint of `render`'s anti-aliased shapes, with the same `times`). Training uses it to weight
    the loss towards the objects, which carry everything a caption says (training/train_dit.py)."""
    num_frames, states = _object_states(scene, num_frames, height, width, times)
    # Drawn like `render` (supersampled 2x, anti-aliased) so any pixel the shapes touch there is in the footprint.
    big = np.zeros((num_frames, 2 * height, 2 * width), dtype=np.uint8)
    for i in range(num_frames):
        for points in _polygons(scene, states, i, 2 * height, 2 * width):
            cv2.fillPoly(big[i], [points], 255, lineType=cv2.LINE_AA, shift=4)
    return (big[:, ::2, ::2] | big[:, 1::2, ::2] | big[:, ::2, 1::2] | big[:, 1::2, 1::2]) > 0


def object_id_maps(scene: SceneSpec, num_frames: int = 17, height: int = 128, width: int = 128,
                   times: np.ndarray | None = None) -> np.ndarray:
    """Which object each pixel shows: uint8 `[num_frames, height, width]`, i + 1 where `scene.objects[i]` covers the
    pixel's centre and 0 elsewhere (objects never overlap, so no pixel has two). Training reads each latent token's
    share of every object from it (training/attribute_probe.py)."""
    num_frames, states = _object_states(scene, num_frames, height, width, times)
    ids = np.zeros((num_frames, height, width), dtype=np.uint8)
    for i in range(num_frames):
        for k, points in enumerate(_polygons(scene, states, i, height, width)):
            # -1/4 pixel: `object_masks` draws at 2x, where a pixel's two sub-pixel centres sit at +0 and +1/2.
            cv2.fillPoly(ids[i], [points - 4], k + 1, lineType=cv2.LINE_8, shift=4)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Deterministic splits


def _generators(split: str, index: int, seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    if split not in _SPLIT_CODES:
        raise VidFusionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if index < 0:
        raise VidFusionError(f"sample index {index} is negative; use an index >= 0")
    if split != "train":
        seed = 0  # evaluation splits are fixed for everyone
    scene_seq, caption_seq = np.random.SeedSequence([_WORLD_SEED, _SPLIT_CODES[split], seed, index]).spawn(2)
    return np.random.default_rng(scene_seq), np.random.default_rng(caption_seq)


def _scene(index: int, split: str, seed: int) -> tuple[SceneSpec, np.random.Generator, bool]:
    scene_rng, caption_rng = _generators(split, index, seed)
    heldout_pair = split == "heldout" and index % 3 in (0, 2)
    heldout_phrasing = split == "heldout" and index % 3 in (1, 2)
    scene = sample_scene(scene_rng, allow_heldout_pairs=heldout_pair, heldout_main_pair=heldout_pair)
    return scene, caption_rng, heldout_phrasing


def scene_and_caption(index: int, split: str = "train", seed: int = 0) -> tuple[SceneSpec, str, bool]:
    """(scene, caption, heldout_phrasing) of one sample, without rendering it."""
    scene, caption_rng, heldout_phrasing = _scene(index, split, seed)
    return scene, caption(scene, caption_rng, heldout_phrasing=heldout_phrasing), heldout_phrasing


_SWAP_SEED = 7_331


def shape_swapped_caption(index: int, split: str = "train", seed: int = 0) -> str:
    """Sample `index`'s caption with one colour group's shape word replaced by another shape's and every other word
    kept: a caption that does not match the clip only in its shape (a negative for the DiT trainer's shape-contrast
    term).

    The word is replaced in the text, where the group's colour word stands right before it (train-split phrasing
    always puts it there); re-captioning a changed scene would not keep the other words, because the synonym draws
    take different amounts of the caption RNG for shapes with one or several synonyms. The new shape never forms a
    held-out colour-shape pair in the train split. The result is checked with the caption parser, which must read the
    original's attributes with only that shape changed; "" when no such caption results.
    """
    scene, original, heldout_phrasing = scene_and_caption(index, split, seed)
    swap_rng = np.random.default_rng([_SWAP_SEED, _SPLIT_CODES[split], seed, index])
    groups = scene.groups()
    target = groups[int(swap_rng.integers(len(groups)))][0]
    options = [s for s in SHAPES if s != target.shape and (split != "train" or (target.colour, s) not in HELDOUT_PAIRS)]
    new_shape = options[int(swap_rng.integers(len(options)))]
    new_singular, new_plural = SHAPE_WORDS[new_shape][0][int(swap_rng.integers(len(SHAPE_WORDS[new_shape][0])))]
    colours = "|".join(re.escape(w) for w in sorted(set(sum(COLOUR_WORDS[target.colour], ())), key=len, reverse=True))
    forms = {w: new_singular if i == 0 else new_plural
             for pair in sum(SHAPE_WORDS[target.shape], ()) for i, w in enumerate(pair)}
    shapes = "|".join(re.escape(w) for w in sorted(forms, key=len, reverse=True))
    pattern = re.compile(rf"\b({colours}) ({shapes})\b")
    swapped, count = pattern.subn(lambda m: f"{m.group(1)} {forms[m.group(2)]}", original)
    want, got = parse_prompt(original), parse_prompt(swapped)
    if count != 1 or want is None or got is None:
        return ""
    want["objects"] = [{**o, "shape": new_shape} if o["colour"] == target.colour else o for o in want["objects"]]
    if want["colour"] == target.colour:
        want["shape"] = new_shape
    return swapped if got == want else ""


def sample(index: int, split: str = "train", *, seed: int = 0, num_frames: int = 17, height: int = 128,
           width: int = 128) -> Sample:
    """Sample `index` of `split`; the same arguments always give identical bytes. `seed` only varies "train"."""
    _check_size(num_frames, height, width)
    scene, text, heldout_phrasing = scene_and_caption(index, split, seed)
    return Sample(render(scene, num_frames, height, width), text, scene, index, split, heldout_phrasing)


def train_stream(seed: int = 0, *, start: int = 0, num_frames: int = 17, height: int = 128,
                 width: int = 128) -> Iterator[Sample]:
    """Endless training samples `start, start + 1, ...`; resume a run by passing the next index as `start`."""
    for index in itertools.count(start):
        yield sample(index, "train", seed=seed, num_frames=num_frames, height=height, width=width)


def eval_split(name: str, n: int, *, num_frames: int = 17, height: int = 128, width: int = 128) -> list[Sample]:
    """The first n samples of the fixed "val" or "heldout" split."""
    if name not in ("val", "heldout"):
        raise VidFusionError(f"unknown evaluation split {name!r}; use 'val' or 'heldout'")
    return [sample(i, name, num_frames=num_frames, height=height, width=width) for i in range(n)]
