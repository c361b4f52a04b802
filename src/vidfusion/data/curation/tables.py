"""Parquet tables through pyarrow: every stage's columns, and atomic reads and writes of rows.

Each stage adds columns to the rows of the stage before it, so a stage's schema is the previous schema plus its own
fields (`STAGE_FIELDS`). Schemas are explicit so that a shard with no rows, or one whose optional values are all
missing, still has the same column types as the rest and the shards concatenate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vidfusion.data.curation.filters import MANIFEST_COLUMNS
from vidfusion.io.checkpoint import atomic_write

INT_LIST = pa.list_(pa.int64())

PROBE_FIELDS = [
    pa.field("path", pa.string()),
    pa.field("ok", pa.bool_()),
    pa.field("reason", pa.string()),  # why the file is skipped; "" when ok
    pa.field("bytes", pa.int64()),
    pa.field("container", pa.string()),
    pa.field("codec", pa.string()),
    pa.field("width", pa.int64()),  # as displayed, i.e. after `rotation`
    pa.field("height", pa.int64()),
    pa.field("rotation", pa.int64()),  # degrees; frames are stored unrotated and must be turned by this when shown
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("duration", pa.float64()),
]
SHOT_FIELDS = [
    pa.field("decoded_frames", pa.int64()),
    pa.field("cuts", INT_LIST),  # first frame of each new shot
    pa.field("fade_starts", INT_LIST),  # [start, end) frame spans of fades through black, excluded from shots
    pa.field("fade_ends", INT_LIST),
    pa.field("shot_starts", INT_LIST),
    pa.field("shot_ends", INT_LIST),
    pa.field("shot_error", pa.string()),  # decoding stopped early; shots cover the frames before it
]
CLIP_FIELDS = [
    pa.field("clip_id", pa.string()),
    pa.field("start", pa.int64()),  # frame index, inclusive
    pa.field("end", pa.int64()),  # frame index, exclusive
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
    pa.field("clip_path", pa.string()),  # the written clip when clips.write is on, else ""
]
MOTION_FIELDS = [
    pa.field("motion", pa.float64()),  # mean optical-flow magnitude, frame widths per second
    pa.field("camera_motion", pa.float64()),  # share of the flow a single global similarity transform explains
]
QUALITY_FIELDS = [
    pa.field("sharpness", pa.float64()),
    pa.field("brightness", pa.float64()),
    pa.field("clipped", pa.float64()),
    pa.field("blockiness", pa.float64()),
    pa.field("text_area", pa.float64()),
    pa.field("text_detector", pa.string()),
    pa.field("aesthetic", pa.float64()),  # null when the plug-in is off
]
CAPTION_FIELDS = [pa.field("caption", pa.string())]

# Fields of the table each stage writes. probe and shots have one row per input file, later stages one per clip
# (shot fields are dropped from clip rows: the lists belong to the whole video).
STAGE_FIELDS = {
    "probe": PROBE_FIELDS,
    "shots": PROBE_FIELDS + SHOT_FIELDS,
    "clips": PROBE_FIELDS + CLIP_FIELDS,
    "motion": PROBE_FIELDS + CLIP_FIELDS + MOTION_FIELDS,
    "quality": PROBE_FIELDS + CLIP_FIELDS + MOTION_FIELDS + QUALITY_FIELDS,
    "captions": PROBE_FIELDS + CLIP_FIELDS + MOTION_FIELDS + QUALITY_FIELDS + CAPTION_FIELDS,
}

_BY_NAME = {f.name: f for f in PROBE_FIELDS + CLIP_FIELDS + MOTION_FIELDS + QUALITY_FIELDS + CAPTION_FIELDS}
BUCKET_FIELDS = [pa.field("num_frames", pa.int64()), pa.field("bucket", pa.string()),
                 pa.field("bucket_height", pa.int64()), pa.field("bucket_aspect", pa.string()),
                 pa.field("bucket_seconds", pa.float64())]
MANIFEST_SCHEMA = pa.schema([_BY_NAME.get(name) or next(f for f in BUCKET_FIELDS if f.name == name)
                             for name in MANIFEST_COLUMNS])
# Every clip with the filters it failed (empty list = kept): for looking at what was dropped and why.
JUDGED_SCHEMA = pa.schema(STAGE_FIELDS["captions"] + [pa.field("dropped_by", pa.list_(pa.string()))])


def schema(stage: str) -> pa.Schema:
    return pa.schema(STAGE_FIELDS[stage])


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]], table_schema: pa.Schema) -> Path:
    """Write `rows` (dicts; missing keys become nulls, extra keys are dropped) as one Parquet file, atomically."""
    names = table_schema.names
    table = pa.Table.from_pylist([{k: row.get(k) for k in names} for row in rows], schema=table_schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def concat_files(paths: list[Path], out: str | os.PathLike, table_schema: pa.Schema) -> Path:
    """Concatenate Parquet files of one schema into `out`, in the given order, atomically."""
    tables = [pq.read_table(p, schema=table_schema) for p in paths]
    table = pa.concat_tables(tables) if tables else table_schema.empty_table()
    return atomic_write(out, lambda tmp: pq.write_table(table, tmp))
