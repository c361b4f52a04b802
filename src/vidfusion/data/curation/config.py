"""Curation settings: one dataclass per stage, read from a TOML file with one table per stage.

    [clips]
    min_seconds = 2.0

Every key is checked against the dataclass (an unknown key or a wrong type is a one-line error that lists the valid
keys), so a typo cannot silently fall back to a default. `stage_params` gives the settings a stage's output depends
on; the runner stores them beside the stage's results and redoes the stage when they change.

This module imports nothing heavy: worker processes read it before any video library is loaded.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidfusion.errors import VidFusionError

TEXT_DETECTORS = ("auto", "rapidocr", "heuristic")
FLOW_METHODS = ("dis", "farneback")


@dataclass
class ProbeConfig:
    # A file is variable-frame-rate when its frame intervals spread more than this (relative to the median) on more
    # than 1% of frames; clips are cut by frame index, which only means a fixed time on a constant-rate file.
    vfr_tolerance: float = 0.1


@dataclass
class ShotConfig:
    width: int = 256  # full-rate pass: frames downscaled to this width (PySceneDetect's own default for 720p+)
    content_threshold: float = 27.0  # ContentDetector: weighted HSV change that marks a hard cut
    adaptive_threshold: float = 3.0  # AdaptiveDetector: change relative to its neighbours (robust to fast motion)
    # ...and at least this large (PySceneDetect's 15 misses cuts between two similar shots of one fixed camera)
    adaptive_min_content: float = 10.0
    fade_threshold: int = 12  # ThresholdDetector: mean 8-bit level below which a frame is black (fades)
    min_shot_frames: int = 8  # detectors ignore a second cut closer than this
    # slow passes at these frame rates (every round(fps / rate)-th frame, at least every 2nd), where a dissolve of up
    # to about two sample intervals becomes one large change; in seconds, so that they mean the same at any fps
    slow_fps: list[float] = field(default_factory=lambda: [6.0, 3.0])
    slow_width: int = 128
    slow_threshold: float = 4.0  # AdaptiveDetector on the slow passes: stricter, as motion between samples is larger
    merge_frames: int = 2  # cuts from different detectors this close are one cut


@dataclass
class ClipConfig:
    min_seconds: float = 2.0
    max_seconds: float = 10.0  # longer shots are split into equal clips no longer than this
    trim_frames: int = 2  # dropped next to every cut or fade: transitions smear over a frame or two
    write: bool = False  # also write each clip as an H.264 file under OUT/clips/ (default: references only)


@dataclass
class MotionConfig:
    fps: float = 2.0  # flow between frames sampled at this rate
    width: int = 256  # frames downscaled to this width before the flow
    method: str = "dis"  # "dis" (OpenCV DIS, medium preset) or "farneback"


@dataclass
class QualityConfig:
    frames: int = 3  # frames per clip scored (evenly spaced inside it)
    width: int = 512  # sharpness is measured at this width so that scores compare across resolutions
    text_detector: str = "auto"  # "rapidocr" (DBNet text detector), "heuristic", or "auto" (rapidocr if installed)
    aesthetic_model: str = ""  # local CLIP folder (transformers layout) for the aesthetic proxy; "" = off


@dataclass
class CaptionConfig:
    model: str = ""  # local vision-language model folder (transformers layout); "" = empty captions
    prompt: str = "Describe this video frame in one sentence."
    max_new_tokens: int = 48


@dataclass
class FilterConfig:
    min_seconds: float = 2.0
    min_short_side: int = 240
    min_motion: float = 0.003  # frame widths per second: below this the clip is a still
    max_motion: float = 2.0  # above this it is mostly blur or flashes (a car passing right by the lens)
    min_sharpness: float = 20.0  # variance of the Laplacian at quality.width
    min_brightness: float = 0.06
    max_brightness: float = 0.94
    max_clipped: float = 0.5  # fraction of pixels at black or white
    max_blockiness: float = 1.5  # 1 = no visible 8x8 block edges
    max_text_area: float = 0.05  # fraction of the frame covered by text
    min_aesthetic: float = 0.0  # only applied when quality.aesthetic_model is set
    require_caption: bool = False


@dataclass
class BucketConfig:
    heights: list[int] = field(default_factory=lambda: [240, 360, 480, 720, 1080])  # short side, rounded down
    aspect_ratios: list[str] = field(default_factory=lambda: ["9:16", "3:4", "1:1", "4:3", "16:9", "21:9"])
    seconds: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])  # length, rounded down


@dataclass
class CurateConfig:
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    shots: ShotConfig = field(default_factory=ShotConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    captions: CaptionConfig = field(default_factory=CaptionConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)

    def validate(self) -> None:
        positive = {"shots.width": self.shots.width, "shots.slow_width": self.shots.slow_width,
                    "shots.slow_fps": min(self.shots.slow_fps, default=1.0),
                    "clips.min_seconds": self.clips.min_seconds,
                    "motion.fps": self.motion.fps, "motion.width": self.motion.width,
                    "quality.frames": self.quality.frames, "quality.width": self.quality.width}
        for key, value in positive.items():
            if not value > 0:
                raise VidFusionError(f"{key}={value} must be positive; fix it in the config")
        if self.clips.max_seconds < self.clips.min_seconds:
            raise VidFusionError(f"clips.max_seconds={self.clips.max_seconds} is below clips.min_seconds="
                                 f"{self.clips.min_seconds}; make max_seconds >= min_seconds")
        if self.clips.trim_frames < 0:
            raise VidFusionError(f"clips.trim_frames={self.clips.trim_frames} is negative; use 0 or more")
        if self.motion.method not in FLOW_METHODS:
            raise VidFusionError(f"motion.method={self.motion.method!r} is unknown; use one of "
                                 f"{', '.join(FLOW_METHODS)}")
        if self.quality.text_detector not in TEXT_DETECTORS:
            raise VidFusionError(f"quality.text_detector={self.quality.text_detector!r} is unknown; use one of "
                                 f"{', '.join(TEXT_DETECTORS)}")
        for key, folder in (("quality.aesthetic_model", self.quality.aesthetic_model),
                            ("captions.model", self.captions.model)):
            if folder and not Path(folder).is_dir():
                raise VidFusionError(f"{key}={folder!r} is not a folder; pass a local model folder or \"\" to switch "
                                     f"the plug-in off")
        aspect_ratios(self.buckets.aspect_ratios)
        if not self.buckets.heights or not self.buckets.seconds:
            raise VidFusionError("buckets.heights and buckets.seconds need at least one value each")


def aspect_ratios(names: list[str]) -> list[float]:
    """"16:9" -> 1.777..., with a one-line error for anything else."""
    out = []
    for name in names:
        w, _, h = name.partition(":")
        try:
            out.append(float(w) / float(h))
        except (ValueError, ZeroDivisionError):
            raise VidFusionError(f"buckets.aspect_ratios has {name!r}; write ratios as 'W:H', e.g. '16:9'") from None
    return out


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise VidFusionError(f"{key}={value!r} must be a list, e.g. {key.split('.')[-1]} = [1, 2]")
        return [_coerce(key, v, item) for v in value]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise VidFusionError(f"{key}={value!r} is not a {hint.__name__}; fix the value in the config")


def config_from_dict(values: dict[str, Any], where: str = "config") -> CurateConfig:
    sections = {f.name: f for f in dataclasses.fields(CurateConfig)}
    built = {}
    for name, table in values.items():
        if name not in sections:
            raise VidFusionError(f"unknown section [{name}] in {where}; valid sections: {', '.join(sections)}")
        if not isinstance(table, dict):
            raise VidFusionError(f"{name} in {where} must be a table ([{name}] followed by key = value lines)")
        cls = sections[name].default_factory
        hints = typing.get_type_hints(cls)
        for key in table:
            if key not in hints:
                raise VidFusionError(f"unknown key {name}.{key} in {where}; valid keys of [{name}]: {', '.join(hints)}")
        built[name] = cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in table.items()})
    config = CurateConfig(**built)
    config.validate()
    return config


def load_config(path: str | Path | None) -> CurateConfig:
    """The defaults, updated by the TOML file at `path` (if given)."""
    if path is None:
        return config_from_dict({})
    path = Path(path)
    if not path.is_file():
        raise VidFusionError(f"config file {path} does not exist; pass --config with a TOML file such as "
                             f"configs/curate_default.toml")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VidFusionError(f"{path} is not valid TOML ({e}); fix the file") from None
    return config_from_dict(values, str(path))


def to_dict(config: CurateConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
