"""Low-level checkpoint I/O: sharding, index, atomic writes and the one-line errors for bad weights."""

import json
import os

import pytest
import torch
from torch import nn

from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import (
    atomic_write_bytes,
    load_weights,
    read_state_dict,
    save_state_dict,
    weight_files,
)


def small_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(64, 64, generator=g) for i in range(6)}  # 16 KiB each


def test_single_file_round_trip(tmp_path):
    state = small_state()
    files = save_state_dict(state, tmp_path, "model")
    assert [f.name for f in files] == ["model.safetensors"]
    loaded = read_state_dict(tmp_path, "model")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_sharded_round_trip_and_index(tmp_path):
    state = small_state()
    files = save_state_dict(state, tmp_path, "diffusion_pytorch_model", max_shard_bytes=40_000)
    assert len(files) == 3  # two 16 KiB tensors per 40 kB shard
    assert all(f.stat().st_size <= 40_000 for f in files)  # whole files, headers included
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == 6 * 64 * 64 * 4
    loaded = read_state_dict(tmp_path)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # re-saving unsharded removes the stale shards and index
    save_state_dict(state, tmp_path, "diffusion_pytorch_model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffusion_pytorch_model.safetensors"]


def test_dtype_conversion_on_save(tmp_path):
    save_state_dict(small_state(), tmp_path, "model", dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in read_state_dict(tmp_path, "model").values())


def test_pickle_only_folder_is_refused(tmp_path):
    torch.save(small_state(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(VidFusionError, match="pickle.*never unpickles"):
        weight_files(tmp_path, "diffusion_pytorch_model")


def test_missing_folder_and_missing_shard(tmp_path):
    with pytest.raises(VidFusionError, match="does not exist"):
        weight_files(tmp_path / "nope", "model")
    save_state_dict(small_state(), tmp_path, "model", max_shard_bytes=40_000)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(VidFusionError, match="missing shard model-00002-of-00003"):
        read_state_dict(tmp_path, "model")


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(VidFusionError, match="not a readable safetensors"):
        read_state_dict(tmp_path, "model")


def test_load_weights_names_first_bad_key():
    net = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    missing = dict(good)
    del missing["1.weight"]
    with pytest.raises(VidFusionError, match=r"'1\.weight' is missing"):
        load_weights(net, missing, "here")
    extra = dict(good, **{"2.weight": torch.zeros(1)})
    with pytest.raises(VidFusionError, match=r"unexpected weight '2\.weight'"):
        load_weights(net, extra, "here")
    bad = dict(good, **{"0.weight": torch.zeros(8, 5)})
    with pytest.raises(VidFusionError, match=r"'0\.weight' has shape \(8, 5\) but the config needs \(8, 4\)"):
        load_weights(net, bad, "here")
    good["0.bias"] = torch.arange(8.0)
    load_weights(net, good, "here")
    assert torch.equal(net[0].bias, torch.arange(8.0))


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"old")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "y.bin", b"data")
        assert (tmp_path / "y.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
    finally:
        os.umask(mask)
