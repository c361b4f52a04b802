"""The curation run end to end on tiny synthetic videos: bad inputs recorded while the run goes on, the manifest and
report, resuming after an exception and after a SIGKILL (same manifest as an uninterrupted run, finished work not
redone), redoing a stage when its settings change, and the `curate` command."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_curation import FPS, scene, write
from vidfusion.data.curation import runner
from vidfusion.data.curation.command import add_parser
from vidfusion.data.curation.command import run as run_command
from vidfusion.data.curation.config import config_from_dict
from vidfusion.errors import VidFusionError

ORIGINAL_WORK = dict(runner.WORK)
SCENE = 60  # frames per scene: 2.5 s, so each shot gives one clip of 58 frames after trimming the cut side(s)
# Small synthetic clips: a 96 px bucket, smooth textures pass a low sharpness bar, the fast text heuristic.
SETTINGS = {"filters": {"min_short_side": 64, "min_sharpness": 5.0}, "buckets": {"heights": [96]},
            "quality": {"text_detector": "heuristic"}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for v in range(3):
        write(np.concatenate([scene(10 * v + s, SCENE) for s in range(3)]), folder / f"video{v}.mp4")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("not a video\n" * 20)
    return folder


def curate(inputs: Path, out: Path, settings: dict = SETTINGS, **kwargs) -> dict:
    return runner.curate([str(inputs)], out, config_from_dict(settings), progress=False, **kwargs)


def count_calls(monkeypatch, fail_stage: str | None = None, fail_after: int = 0) -> dict[str, int]:
    """Wrap every stage's work in a counter; optionally raise in `fail_stage` once it has done `fail_after` videos."""
    calls = dict.fromkeys(runner.STAGES, 0)

    def wrap(stage, work):
        def counted(path, rows, cfg, out):
            if stage == fail_stage and calls[stage] == fail_after:
                raise RuntimeError("simulated crash")
            calls[stage] += 1
            return work(path, rows, cfg, out)
        return counted

    for stage, work in ORIGINAL_WORK.items():
        monkeypatch.setitem(runner.WORK, stage, wrap(stage, work))
    return calls


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    curate(inputs, out)
    return out


def test_run_records_bad_inputs_and_writes_manifest_and_report(inputs, reference):
    summary = runner.read_summary(reference)
    reasons = {Path(r["path"]).name: r["reason"] for r in summary["skipped_inputs"]}
    assert reasons.keys() == {"empty.mp4", "notes.mp4"}
    assert "empty" in reasons["empty.mp4"] and "not a video" in reasons["notes.mp4"]
    assert (summary["inputs"], summary["videos"], summary["cuts"], summary["clips"]) == (5, 3, 6, 9)

    manifest = pq.read_table(reference / "manifest.parquet").to_pylist()
    assert len(manifest) == summary["kept"] == 9
    spans = sorted((Path(r["path"]).name, r["start"], r["end"]) for r in manifest)
    for v in range(3):  # cuts at 60 and 120, two frames trimmed on each side that borders one
        assert [s[1:] for s in spans if s[0] == f"video{v}.mp4"] == [(0, 58), (62, 118), (122, 180)]
    row = manifest[0]
    assert (row["fps"], row["width"], row["height"], row["num_frames"], row["caption"]) == (FPS, 128, 96, 58, "")
    assert row["bucket"] == "96p-4:3-2s" and row["motion"] == pytest.approx(FPS / 128, rel=0.2)

    report = (reference / "report" / "report.md").read_text()
    assert "captions: EMPTY" in report and "notes.mp4: not a video" in report
    for name in ("motion", "sharpness", "text_area", "aesthetic"):
        png = (reference / "report" / f"hist_{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    for stage in runner.STAGES:  # every stage left its table
        assert (reference / f"{stage}.parquet").is_file()


def test_resume_after_a_crash_redoes_only_unfinished_videos(inputs, reference, tmp_path, monkeypatch):
    calls = count_calls(monkeypatch, fail_stage="motion", fail_after=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate(inputs, tmp_path)
    assert len(list((tmp_path / "stages" / "motion").glob("*.parquet"))) == 1
    assert not (tmp_path / "manifest.parquet").exists()

    calls = count_calls(monkeypatch)
    curate(inputs, tmp_path)
    assert calls == {"probe": 0, "shots": 0, "clips": 0, "motion": 2, "quality": 3, "captions": 3}
    assert pq.read_table(tmp_path / "manifest.parquet").equals(pq.read_table(reference / "manifest.parquet"))


def test_resume_after_sigkill_matches_an_uninterrupted_run(inputs, reference, tmp_path):
    # A separate process that kills itself (SIGKILL: no cleanup runs) when quality starts its second video.
    script = f"""
import os, signal
from vidfusion.data.curation import runner
from vidfusion.data.curation.config import config_from_dict
work, done = runner.WORK["quality"], []
def killer(*args):
    if done:
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(1)
    return work(*args)
runner.WORK["quality"] = killer
runner.curate([{str(inputs)!r}], {str(tmp_path)!r}, config_from_dict({SETTINGS!r}), progress=False)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == -9, result.stderr
    assert len(list((tmp_path / "stages" / "quality").glob("*.parquet"))) == 1
    curate(inputs, tmp_path)
    assert pq.read_table(tmp_path / "manifest.parquet").equals(pq.read_table(reference / "manifest.parquet"))


def test_changed_settings_redo_that_stage_and_later_ones(inputs, reference, tmp_path, monkeypatch):
    curate(inputs, tmp_path)
    calls = count_calls(monkeypatch)
    changed = {**SETTINGS, "motion": {"fps": 4.0}}
    curate(inputs, tmp_path, changed)
    assert calls == {"probe": 0, "shots": 0, "clips": 0, "motion": 3, "quality": 3, "captions": 3}

    calls = count_calls(monkeypatch)
    strict = {**changed, "filters": {**SETTINGS["filters"], "min_motion": 10.0}}  # filters never redo a stage
    summary = curate(inputs, tmp_path, strict)
    assert set(calls.values()) == {0}
    assert summary["kept"] == 0 and summary["filters"]["static"]["failed"] == 9
    assert "manifest is empty" in (tmp_path / "report" / "report.md").read_text()


def test_curate_command(inputs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    config = tmp_path / "settings.toml"
    config.write_text('[filters]\nmin_short_side = 64\nmin_sharpness = 5.0\n[buckets]\nheights = [96]\n'
                      '[quality]\ntext_detector = "heuristic"\n')
    args = parser.parse_args(["curate", str(inputs / "video0.mp4"), "-o", str(tmp_path / "out"), "--config",
                              str(config), "--workers", "1", "-q"])
    run_command(args)
    printed = capsys.readouterr().out
    assert "curated 1 inputs (0 skipped) into 3 clips, kept 3" in printed and "captions are empty" in printed

    for argv, message in ((["curate", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "x")], "does not exist"),
                          (["curate", str(inputs), "-o", str(tmp_path / "x"), "--config", str(tmp_path / "no.toml")],
                           "config file"),
                          (["curate", str(inputs), "-o", str(config)], "is a file")):
        with pytest.raises(VidFusionError, match=message):
            run_command(parser.parse_args(argv))
    config.write_text("[clips]\nmin_secs = 1\n")
    with pytest.raises(VidFusionError, match="unknown key clips.min_secs"):
        run_command(parser.parse_args(["curate", str(inputs), "-o", str(tmp_path / "x"), "--config", str(config)]))


def test_worker_processes_give_the_same_manifest(inputs, reference, tmp_path):
    curate(inputs, tmp_path, workers=2)
    assert pq.read_table(tmp_path / "manifest.parquet").equals(pq.read_table(reference / "manifest.parquet"))


def test_manifest_clips_read_the_curated_frames(reference):
    from vidfusion.data.curation.dataset import ManifestClips, cover_crop
    from vidfusion.io.video import read_video

    manifest = runner.read_manifest(reference)
    clips = ManifestClips(manifest, num_frames=9, height=64, width=64, seed=0)
    for index in (0, 4, 9):  # 9 wraps around to row 0 with its own window
        item = clips[index]
        row = manifest[index % len(manifest)]
        video = item["video"].permute(1, 2, 3, 0).numpy()
        assert item["video"].shape == (3, 9, 64, 64) and item["caption"] == ""
        frames, _ = read_video(row["path"], max_frames=row["end"] - row["start"], start=row["start"])
        starts = [i for i in range(len(frames) - 8) if np.array_equal(cover_crop(frames[i], 64, 64), video[0])]
        assert starts and all(np.array_equal(cover_crop(frames[starts[0] + t], 64, 64), video[t]) for t in range(9))
    assert not np.array_equal(clips[0]["video"], clips[9]["video"])
    with pytest.raises(VidFusionError, match="no clip in the manifest has 500 frames"):
        ManifestClips(manifest, num_frames=500, height=64, width=64)
