"""Shot stage: cuts and fades with PySceneDetect's detectors in a cascade, as Stable Video Diffusion curates.

One decode feeds every detector (decoding is the expensive part):
- full rate, frames at `width` px: ContentDetector (hard cuts: a large HSV change between two frames),
  AdaptiveDetector (a change large relative to its neighbours: fast motion does not fire it, and a cut between two
  similar shots of one fixed camera still does) and ThresholdDetector (fades through black);
- at 6 and 3 fps (`slow_fps`; every 4th and 8th frame of a 24 fps video) at `slow_width` px: AdaptiveDetector
  again, on which a dissolve of up to about two sample intervals adds up to one large change (three frame rates in
  all, as SVD). Such a cut is moved to the frame of largest luma step in the interval it covers.
A cut from any detector counts; cuts within `merge_frames` are one, at the frame of largest luma step. Recall comes
first: a missed cut leaves a clip that jumps mid-way, which teaches a video model to jump, while an extra cut only
splits a shot in two. The price is a few extra cuts on occlusions right by the lens and on compression pops.

Hand-written, because PySceneDetect reports only the frame of a fade, not its extent: from each ThresholdDetector
fade, the span runs over the black frames around it and on while brightness keeps rising by over 2% a frame (fade
in) or, before it, falling (fade out). Fade spans are excluded from shots, and cuts inside them are dropped.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode, ThresholdDetector

from vidfusion.data.curation.config import ShotConfig
from vidfusion.data.curation.decode import DecodeError, iter_frames

# A fade is still going on while brightness changes by more than this share per frame (and at least RAMP_MIN levels):
# a fade over a second or two moves several percent a frame, a scene slowly brightening far less.
RAMP_SHARE = 0.02
RAMP_MIN = 0.5


def detect_shots(path: str, fps: float, cfg: ShotConfig) -> dict[str, Any]:
    """Cuts, fade spans and shots (`[start, end)` frame spans between them) of the video at `path`."""
    rate = Fraction(fps).limit_denominator(1001)  # FrameTimecode wants a float or a Fraction, NTSC rates exact
    content = ContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_shot_frames)
    adaptive = AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_shot_frames,
                                min_content_val=cfg.adaptive_min_content)
    fades = ThresholdDetector(threshold=cfg.fade_threshold, min_scene_len=cfg.min_shot_frames, add_final_scene=True)
    strides = sorted({max(2, round(fps / r)) for r in cfg.slow_fps})
    slow = {stride: AdaptiveDetector(adaptive_threshold=cfg.slow_threshold, min_scene_len=2,
                                     min_content_val=cfg.adaptive_min_content) for stride in strides}

    cuts: list[int] = []
    slow_cuts: list[tuple[int, int]] = []  # (frame, stride)
    fade_marks: list[int] = []
    brightness: list[float] = []
    change: list[float] = [0.0]  # mean |luma step| from the frame before: where, in a run of candidates, the cut is
    num_frames, error = 0, ""
    last = None
    try:
        for index, frame in iter_frames(path, width=cfg.width):
            time = FrameTimecode(index, fps=rate)
            cuts += [c.frame_num for c in content.process_frame(time, frame)]
            cuts += [c.frame_num for c in adaptive.process_frame(time, frame)]
            fade_marks += [c.frame_num for c in fades.process_frame(time, frame)]
            brightness.append(float(frame.mean()))
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            if last is not None:
                change.append(float(cv2.absdiff(grey, last).mean()))
            last = grey
            due = [stride for stride in slow if index % stride == 0]
            if due:
                h, w = frame.shape[:2]
                small = cv2.resize(frame, (cfg.slow_width, max(2, round(h * cfg.slow_width / w))),
                                   interpolation=cv2.INTER_AREA)
                for stride in due:
                    sample = FrameTimecode(index // stride, fps=rate / stride)
                    slow_cuts += [(c.frame_num * stride, stride) for c in slow[stride].process_frame(sample, small)]
            num_frames = index + 1
    except DecodeError as e:
        error = str(e)
    if num_frames:
        end = FrameTimecode(num_frames - 1, fps=rate)
        for detector in (content, adaptive):
            cuts += [c.frame_num for c in detector.post_process(end)]
        fade_marks += [c.frame_num for c in fades.post_process(end)]

    scores = np.asarray(change[:num_frames] if num_frames else [])
    # A slow-pass cut at sample frame f covers the change from f - stride to f; put it where that change peaks.
    for f, stride in slow_cuts:
        lo = max(1, f - stride + 1)
        cuts.append(lo + int(np.argmax(scores[lo : f + 1])) if f + 1 > lo else f)

    spans = fade_spans(np.asarray(brightness), sorted(set(fade_marks)), cfg.fade_threshold)
    merged = merge_cuts(sorted(c for c in cuts if 0 < c < num_frames), scores, cfg.merge_frames)
    merged = [c for c in merged if not any(a - cfg.merge_frames <= c < b + cfg.merge_frames for a, b in spans)]
    shots = split_shots(num_frames, merged, spans)
    return {
        "decoded_frames": num_frames,
        "cuts": merged,
        "fade_starts": [a for a, _ in spans],
        "fade_ends": [b for _, b in spans],
        "shot_starts": [a for a, _ in shots],
        "shot_ends": [b for _, b in shots],
        "shot_error": error,
    }


def merge_cuts(cuts: list[int], scores: np.ndarray, window: int) -> list[int]:
    """One cut per run of sorted cuts closer than `window` frames: the one where the frame change is largest."""
    merged: list[int] = []
    group: list[int] = []
    for c in cuts + [None]:
        if group and (c is None or c - group[-1] > window):
            merged.append(max(group, key=lambda f: (scores[f], -f)))
            group = []
        if c is not None:
            group.append(c)
    return merged


def fade_spans(brightness: np.ndarray, marks: list[int], level: float) -> list[tuple[int, int]]:
    """[start, end) spans of the fades the ThresholdDetector marked: the black frames at (or next to) each mark,
    widened over the ramps of brightness on either side."""
    n = len(brightness)
    spans: list[tuple[int, int]] = []
    dark = brightness < level
    for mark in marks:
        mark = min(max(mark, 0), n - 1)
        near = np.flatnonzero(dark[max(0, mark - 1) : mark + 2])  # the detector puts the mark inside the black run
        if not len(near):
            continue
        start = end = max(0, mark - 1) + int(near[0])
        while start > 0 and dark[start - 1]:
            start -= 1
        while end < n and dark[end]:
            end += 1
        while start > 0 and brightness[start - 1] - brightness[start] > max(RAMP_MIN,
                                                                             RAMP_SHARE * brightness[start - 1]):
            start -= 1  # fading out towards the black
        while end < n and brightness[end] - brightness[end - 1] > max(RAMP_MIN, RAMP_SHARE * brightness[end]):
            end += 1  # fading in from it
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def split_shots(num_frames: int, cuts: list[int], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) shots: the frames outside fade spans, split at every cut."""
    keep = np.ones(num_frames, dtype=bool)
    for a, b in spans:
        keep[a:b] = False
    bounds = np.zeros(num_frames + 1, dtype=bool)
    bounds[cuts] = True
    shots = []
    start = None
    for i in range(num_frames + 1):
        if start is not None and (i == num_frames or not keep[i] or bounds[i]):
            shots.append((start, i))
            start = None
        if i < num_frames and keep[i] and start is None:
            start = i
    return shots
