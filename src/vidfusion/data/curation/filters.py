"""Filters and buckets: scored clips -> the manifest the trainers read.

Each filter is a named test on one clip row; a clip is kept when it passes all of them, and every failed test is
recorded (`dropped_by`), so the report can say both how many clips each threshold rejects and how many it alone
would cost. Kept clips are bucketed by short side (rounded down to `buckets.heights`), aspect ratio (nearest of
`buckets.aspect_ratios`, in log space so 16:9 and 9:16 are equally far from 1:1) and length (rounded down to
`buckets.seconds`), so a trainer can batch clips of one shape without resizing most of them.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from vidfusion.data.curation.config import BucketConfig, CurateConfig, FilterConfig, aspect_ratios

Row = dict[str, Any]

FILTERS: dict[str, Callable[[Row, FilterConfig], bool]] = {
    "too_short": lambda r, f: r["end_s"] - r["start_s"] >= f.min_seconds - 1e-9,
    "too_small": lambda r, f: min(r["width"], r["height"]) >= f.min_short_side,
    "static": lambda r, f: r["motion"] >= f.min_motion,
    "too_fast": lambda r, f: r["motion"] <= f.max_motion,
    "blurry": lambda r, f: r["sharpness"] >= f.min_sharpness,
    "too_dark": lambda r, f: r["brightness"] >= f.min_brightness,
    "too_bright": lambda r, f: r["brightness"] <= f.max_brightness,
    "clipped": lambda r, f: r["clipped"] <= f.max_clipped,
    "blocky": lambda r, f: r["blockiness"] <= f.max_blockiness,
    "text": lambda r, f: r["text_area"] <= f.max_text_area,
    "low_aesthetic": lambda r, f: r["aesthetic"] is None or r["aesthetic"] >= f.min_aesthetic,
    "no_caption": lambda r, f: bool(r["caption"]) or not f.require_caption,
}

MANIFEST_COLUMNS = ("clip_id", "path", "start", "end", "start_s", "end_s", "fps", "num_frames", "width", "height",
                    "rotation", "motion", "camera_motion", "sharpness", "brightness", "clipped", "blockiness",
                    "text_area", "aesthetic", "caption", "bucket", "bucket_height", "bucket_aspect",
                    "bucket_seconds", "clip_path")


def failed_filters(row: Row, cfg: FilterConfig) -> list[str]:
    return [name for name, passes in FILTERS.items() if not passes(row, cfg)]


def assign_bucket(row: Row, cfg: BucketConfig) -> tuple[int, str, float] | None:
    """(height, aspect name, seconds) of the clip's bucket, or None when it is below the smallest height or length."""
    short = min(row["width"], row["height"])
    seconds = row["end_s"] - row["start_s"]
    heights = [h for h in sorted(cfg.heights) if h <= short]
    lengths = [s for s in sorted(cfg.seconds) if s <= seconds + 1e-9]
    if not heights or not lengths:
        return None
    ratio = row["width"] / row["height"]
    names = cfg.aspect_ratios
    aspect = min(zip(aspect_ratios(names), names), key=lambda rn: abs(math.log(ratio / rn[0])))[1]
    return heights[-1], aspect, lengths[-1]


def build_manifest(rows: list[Row], cfg: CurateConfig) -> tuple[list[Row], list[Row]]:
    """(manifest rows of the kept clips, every clip row with its `dropped_by` list)."""
    manifest, judged = [], []
    for row in rows:
        failed = failed_filters(row, cfg.filters)
        bucket = assign_bucket(row, cfg.buckets)
        if bucket is None and not failed:
            failed = ["no_bucket"]
        judged.append({**row, "dropped_by": failed})
        if failed:
            continue
        height, aspect, seconds = bucket
        full = {**row, "num_frames": row["end"] - row["start"], "bucket_height": height, "bucket_aspect": aspect,
                "bucket_seconds": seconds, "bucket": f"{height}p-{aspect}-{seconds:g}s"}
        manifest.append({k: full[k] for k in MANIFEST_COLUMNS})
    return manifest, judged
