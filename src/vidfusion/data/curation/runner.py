"""Running the stages: probe -> shots -> clips -> motion -> quality -> captions, then filters, manifest and report.

Layout of OUT_DIR:
    stages/<stage>/<video key>.parquet   one shard per input video, written atomically when its work is done
    stages/<stage>/params.json           the settings the shards were made with (and those of the stages before)
    <stage>.parquet                      the stage's table: its shards concatenated in input order
    manifest.parquet, judged.parquet     kept clips; every clip with the filters it failed
    report/                              report.md, summary.json, hist_<score>.png

Resuming: a stage skips every video whose shard exists, so a rerun after a kill redoes at most the videos that were
in flight. Shards are whole or absent (written to a temporary name and renamed), and tables are rebuilt from
shards, so a resumed run ends with the same tables as an uninterrupted one. A video's key hashes its path, size and
modification time: a replaced file is processed again. When a stage's settings (or an earlier stage's, or the
vidfusion version) change, that stage's shards are deleted and redone; filters, buckets and the report are cheap and
always redone.

Execution: one unit of work is one video in one stage. Local runs use a pool of `workers` processes (spawned, so
no state leaks from the parent) with a tqdm bar; `workers=1` runs in-process. With `ray`, each stage's units go
through ray.data (`from_items(...).map(...)`, one task per video) on the cluster at that address ("auto": a local
cluster that is running, or a new local one); results stream back to the driver, which writes the shards, so only
the input videos need to be visible to the workers, under the same paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator

import vidfusion
from vidfusion.data.curation.config import CurateConfig, to_dict
from vidfusion.errors import VidFusionError

STAGES = ("probe", "shots", "clips", "motion", "quality", "captions")
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv",
                  ".3gp", ".ogv"}

Unit = tuple[str, str, list[dict[str, Any]]]  # (video key, video path, its rows from the previous stage)


# ------------------------------------------------------------------------------------------------------------- inputs


def find_inputs(inputs: list[str]) -> list[str]:
    """Absolute paths of the input files: files as given (whatever their suffix, so that a mislabelled file is
    probed and reported), folders searched recursively for video suffixes; sorted within each folder, deduplicated."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise VidFusionError(f"input {item} does not exist; pass existing video files or folders")
        if path.is_dir():
            files += sorted(os.path.abspath(p) for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            files.append(os.path.abspath(path))
    files = list(dict.fromkeys(files))
    if not files:
        raise VidFusionError(f"no videos found in {', '.join(inputs)}; pass video files or folders holding "
                             f"{', '.join(sorted(VIDEO_SUFFIXES))} files")
    return files


def video_key(path: str) -> str:
    stat = os.stat(path)
    return hashlib.sha1(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- per-video work


def _probe(path: str, rows: list[dict], cfg: CurateConfig, out: str) -> list[dict]:
    from vidfusion.data.curation.probe import probe_file

    return [probe_file(path, cfg.probe)]


def _shots(path: str, rows: list[dict], cfg: CurateConfig, out: str) -> list[dict]:
    from vidfusion.data.curation.shots import detect_shots

    return [{**rows[0], **detect_shots(path, rows[0]["fps"], cfg.shots)}]


def _clips(path: str, rows: list[dict], cfg: CurateConfig, out: str) -> list[dict]:
    from vidfusion.data.curation.clips import plan_clips, write_clips

    clips = plan_clips(rows[0], cfg.clips)
    if cfg.clips.write:
        write_clips(path, clips, os.path.join(out, "clips"))
    return clips


def _motion(path: str, rows: list[dict], cfg: CurateConfig, out: str) -> list[dict]:
    from vidfusion.data.curation.motion import score_clips

    return [{**row, **scores} for row, scores in zip(rows, score_clips(path, rows, cfg.motion))]


def _quality(path: str, rows: list[dict], cfg: CurateConfig, out: str) -> list[dict]:
    from vidfusion.data.curation.quality import score_clips

    return [{**row, **scores} for row, scores in zip(rows, score_clips(path, rows, cfg.quality))]


def _captions(path: str, rows: list[dict], cfg: CurateConfig, out: str) -> list[dict]:
    from vidfusion.data.curation.captions import caption_clips

    return [{**row, **caption} for row, caption in zip(rows, caption_clips(path, rows, cfg.captions))]


WORK: dict[str, Callable[[str, list[dict], CurateConfig, str], list[dict]]] = {
    "probe": _probe, "shots": _shots, "clips": _clips, "motion": _motion, "quality": _quality, "captions": _captions,
}


def run_unit(stage: str, unit: Unit, cfg: CurateConfig, out: str) -> tuple[str, list[dict]]:
    key, path, rows = unit
    return key, WORK[stage](path, rows, cfg, out)


def stage_params(stage: str, cfg: CurateConfig) -> dict[str, Any]:
    """The settings a stage's output depends on."""
    section = {"probe": cfg.probe, "shots": cfg.shots, "clips": cfg.clips, "motion": cfg.motion,
               "quality": cfg.quality, "captions": cfg.captions}[stage]
    params = asdict(section)
    if stage == "quality":
        from vidfusion.data.curation.quality import resolve_text_detector

        params["text_detector"] = resolve_text_detector(cfg.quality.text_detector)  # "auto" may change meaning
    return params


# ---------------------------------------------------------------------------------------------------- executors


class LocalExecutor:
    """In-process for one worker, else a pool of spawned processes; yields results as they finish."""

    def __init__(self, workers: int):
        self.pool: Executor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))

    def map(self, stage: str, units: list[Unit], cfg: CurateConfig, out: str) -> Iterator[tuple[str, list[dict]]]:
        if self.pool is None or len(units) < 2:
            for unit in units:
                yield run_unit(stage, unit, cfg, out)
            return
        futures = [self.pool.submit(run_unit, stage, unit, cfg, out) for unit in units]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _ray_unit(item: dict[str, Any], stage: str, cfg: CurateConfig, out: str) -> dict[str, Any]:
    # Rows travel as JSON text: Arrow would otherwise infer its own types for lists and nulls block by block.
    key, rows = run_unit(stage, tuple(json.loads(item["unit"])), cfg, out)
    return {"key": key, "rows": json.dumps(rows)}


class RayExecutor:
    def __init__(self, address: str, progress: bool):
        import ray

        self.started = False
        if not ray.is_initialized():
            try:
                ray.init(address=None if address == "auto" else address, log_to_driver=False)
            except ConnectionError as e:
                raise VidFusionError(f"cannot reach a Ray cluster at {address} ({e}); start one with "
                                     f"`ray start --head` or pass --ray auto") from None
            self.started = True
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = progress

    def map(self, stage: str, units: list[Unit], cfg: CurateConfig, out: str) -> Iterator[tuple[str, list[dict]]]:
        import ray.data

        if not units:
            return
        items = [{"unit": json.dumps(list(unit))} for unit in units]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        results = dataset.map(_ray_unit, fn_kwargs={"stage": stage, "cfg": cfg, "out": out}, num_cpus=1)
        for row in results.iter_rows():
            yield row["key"], json.loads(row["rows"])

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------------- stages


def _progress(iterable: Iterator, total: int, stage: str, enabled: bool) -> Iterator:
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=f"{stage:>8}", unit="video", disable=not enabled or total == 0,
                file=sys.stderr, dynamic_ncols=True)


def run_stage(stage: str, units: list[Unit], out: Path, cfg: CurateConfig, executor: Any, digest: str,
              progress: bool) -> list[dict]:
    """Run `stage` on the units without a shard yet, then rebuild its table from all the units' shards."""
    from vidfusion.data.curation.tables import concat_files, read_rows, schema, write_rows
    from vidfusion.io.checkpoint import read_json, write_json

    folder = out / "stages" / stage
    params = {"params": stage_params(stage, cfg), "digest": digest}
    if (folder / "params.json").is_file() and read_json(folder / "params.json") != params:
        print(f"vidfusion: {stage} settings changed since the last run; redoing {stage}", file=sys.stderr)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "params.json", params)

    todo = [u for u in units if not (folder / f"{u[0]}.parquet").is_file()]
    table_schema = schema(stage)
    results = executor.map(stage, todo, cfg, str(out))
    for key, rows in _progress(results, len(todo), stage, progress):
        write_rows(folder / f"{key}.parquet", rows, table_schema)
    table = concat_files([folder / f"{u[0]}.parquet" for u in units], out / f"{stage}.parquet", table_schema)
    return read_rows(table)


def _by_video(rows: list[dict], keys: dict[str, str]) -> list[Unit]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["path"], []).append(row)
    return [(keys[path], path, group) for path, group in grouped.items()]


def curate(inputs: list[str], out_dir: str | os.PathLike, cfg: CurateConfig, workers: int = 1,
           ray: str | None = None, progress: bool = True, until: str = "captions") -> dict[str, Any]:
    """Run every stage on `inputs` (files or folders) into `out_dir`, resuming what an earlier run left; returns
    the report's summary. `until` stops after that stage (no manifest or report; the result is {})."""
    from vidfusion.data.curation.filters import build_manifest
    from vidfusion.data.curation.report import summarize, write_report
    from vidfusion.data.curation.tables import JUDGED_SCHEMA, MANIFEST_SCHEMA, write_rows
    from vidfusion.io.checkpoint import write_json

    if workers < 1:
        raise VidFusionError(f"--workers {workers} must be at least 1")
    assert until in STAGES, until
    files = find_inputs(inputs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VidFusionError(f"-o {out} is a file; pass a folder for the curation outputs")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(cfg))
    keys = {path: video_key(path) for path in files}

    executor = RayExecutor(ray, progress) if ray else LocalExecutor(workers)
    tables: dict[str, list[dict]] = {}
    digest = vidfusion.__version__  # a new release may compute differently: its first run redoes every stage
    try:
        for stage in STAGES:
            digest = hashlib.sha1((digest + json.dumps(stage_params(stage, cfg), sort_keys=True)).encode()).hexdigest()
            if stage == "probe":
                units = [(keys[p], p, [{"path": p}]) for p in files]
            elif stage == "shots":
                units = _by_video([r for r in tables["probe"] if r["ok"]], keys)
            else:
                units = _by_video(tables[STAGES[STAGES.index(stage) - 1]], keys)
            tables[stage] = run_stage(stage, units, out, cfg, executor, digest, progress)
            if stage == until:
                break
    finally:
        executor.close()
    if until != STAGES[-1]:
        return {}

    manifest, judged = build_manifest(tables["captions"], cfg)
    write_rows(out / "manifest.parquet", manifest, MANIFEST_SCHEMA)
    write_rows(out / "judged.parquet", judged, JUDGED_SCHEMA)
    summary = summarize(tables["probe"], tables["shots"], judged, manifest, cfg)
    write_report(out, summary, judged, cfg)
    return summary


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The kept clips of a curation run, from its OUT_DIR or its manifest.parquet, as dicts (see filters.py)."""
    from vidfusion.data.curation.tables import read_rows

    path = Path(path)
    if path.is_dir():
        path = path / "manifest.parquet"
    if not path.is_file():
        raise VidFusionError(f"no curated manifest at {path}; run `vidfusion curate VIDEOS -o OUT_DIR` first")
    return read_rows(path)


def read_summary(out_dir: str | os.PathLike) -> dict[str, Any]:
    from vidfusion.io.checkpoint import read_json

    return read_json(Path(out_dir) / "report" / "summary.json")
