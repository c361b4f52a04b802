"""The curation stages on Ray (ray.data, local mode with one CPU) give the same manifest as a local run."""

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from test_curation_runner import curate, inputs, reference  # noqa: E402,F401 (pytest fixtures)


def test_ray_run_matches_local_run(inputs, reference, tmp_path):  # noqa: F811
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        summary = curate(inputs, tmp_path, ray="auto")
        assert ray.is_initialized()  # an existing Ray session is used, not replaced or shut down
    finally:
        ray.shutdown()
    assert summary["clips"] == 9 and len(summary["skipped_inputs"]) == 2
    for stage in ("probe", "shots", "clips", "motion", "quality", "captions"):
        assert pq.read_table(tmp_path / f"{stage}.parquet").equals(pq.read_table(reference / f"{stage}.parquet"))
    assert pq.read_table(tmp_path / "manifest.parquet").equals(pq.read_table(reference / "manifest.parquet"))
