"""Task-mix training data and the masked-context DiT trainer (widened start, bit-identical resume)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import SMALL_DIT, _assert_same_checkpoint, _tensors, _vae_export

from vidfusion.data.world import object_masks, render, scene_and_caption
from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import load_transformer
from vidfusion.training.config import DiTTrainConfig, load_config
from vidfusion.training.task_mix import _TASK_SEED, TASKS, TaskMixClips, check_task_settings, sample_task

MIX = dict(weights=(0.25, 0.25, 0.25, 0.25), extend_frames=(5, 9), interp_fps=(32.0, 128.0), base_fps=8.0)


def test_task_draws_follow_the_weights_and_dropout():
    rng = np.random.default_rng(0)
    draws = [sample_task(rng, (0.4, 0.2, 0.2, 0.2), (5, 9), (32.0,), 8.0, 17, 0.1) for _ in range(4000)]
    share = {t: np.mean([d[0] == t for d in draws]) for t in TASKS}
    assert abs(share["t2v"] - 0.4) < 0.03 and abs(share["interpolate"] - 0.2) < 0.03
    conditioned = [d for d in draws if d[0] != "t2v"]
    dropped = np.mean([not d[1].any() for d in conditioned])
    assert abs(dropped - 0.1) < 0.02
    for task, known, fps, times in conditioned:
        if known.any():
            if task == "i2v":
                assert known.tolist() == [True] + [False] * 16 and fps == 8.0
            elif task == "extend":
                assert known.sum() in (5, 9) and known[: known.sum()].all()
            else:
                assert known.tolist() == [i % 4 == 0 for i in range(17)] and fps == 32.0
                # keys every 4th frame at 32 fps = consecutive frames of the 8 fps clip (interval 1/16)
                assert np.allclose(np.diff(times[::4]), 1 / 16) and 0 <= times[0] and times[-1] <= 1


def test_dataset_is_deterministic_and_interpolation_keys_are_base_rate_frames():
    data = TaskMixClips(0, 17, 32, 32, context_dropout=0.0, **MIX)
    seen_interpolation = False
    for index in range(12):
        a, b = data[index], data[index]
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["known"], b["known"])
        if TASKS[a["task"]] == "interpolate" and a["fps"] == 32.0:
            scene, caption, _ = scene_and_caption(index, "train", 0)
            rng = np.random.default_rng([_TASK_SEED, 0, index])
            _, _, _, times = sample_task(rng, MIX["weights"], MIX["extend_frames"], MIX["interp_fps"], 8.0, 17, 0.0)
            assert np.allclose(np.diff(times), 1 / 64)  # 4x the base rate: 4 frames per 1/16 of the clip
            assert np.array_equal(a["video"].permute(1, 2, 3, 0).numpy(), render(scene, 17, 32, 32, times=times))
            assert a["caption"] == caption
            masked = TaskMixClips(0, 17, 32, 32, context_dropout=0.0, with_masks=True, **MIX)[index]
            assert "objects" not in a and torch.equal(masked["video"], a["video"])
            assert np.array_equal(masked["objects"].numpy(), object_masks(scene, 17, 32, 32, times=times))
            seen_interpolation = True
    assert seen_interpolation and {TASKS[data[i]["task"]] for i in range(40)} == set(TASKS)
    with pytest.raises(VidFusionError, match="task_mix"):
        check_task_settings((1, 0, 0), (5,), (32.0,), 8.0, 17)
    with pytest.raises(VidFusionError, match="extend_frames"):
        check_task_settings((1, 1, 1, 1), (6,), (32.0,), 8.0, 17)
    with pytest.raises(VidFusionError, match="interp_fps"):
        check_task_settings((1, 1, 1, 1), (5,), (8.0,), 8.0, 17)


def test_task_mix_trainer_widens_a_text_to_video_start_and_resumes_bit_identically(tmp_path):
    from vidfusion.training.train_dit import train

    vae_path = str(_vae_export(tmp_path / "vae"))
    plain = train(load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, steps=1, ckpt_every=1,
                                                         sample_every=100, out_dir=str(tmp_path / "p"))))
    start = load_transformer(plain / "transformer")
    mix = dict(SMALL_DIT, vae_path=vae_path, steps=2, ckpt_every=1, sample_every=2, task_mix="0.1,0.3,0.3,0.3",
               extend_frames="5", interp_fps="32", text_dropout=0.5, init_from=str(plain / "transformer"))
    straight = train(load_config(DiTTrainConfig, None, dict(mix, out_dir=str(tmp_path / "a"))))
    train(load_config(DiTTrainConfig, None, dict(mix, out_dir=str(tmp_path / "b"), max_minutes=1e-9)))
    train(load_config(DiTTrainConfig, None, dict(mix, out_dir=str(tmp_path / "b"))))
    a, b = tmp_path / "a" / "checkpoints" / "step_0000002", tmp_path / "b" / "checkpoints" / "step_0000002"
    _assert_same_checkpoint(a, b, ("model", "ema", "optimizer"))

    model = load_transformer(straight / "transformer")
    c = 4  # the tiny VAE's latent channels
    assert model.config.in_channels == 2 * c + 1 and model.config.ofs_embed_dim == model.config.time_embed_dim
    first = _tensors(tmp_path / "b" / "checkpoints" / "step_0000001", "model")
    # one step from the widened start: old weights barely moved, the old input channels carried over
    old = start.state_dict()["patch_embed.proj.weight"]
    assert torch.allclose(first["patch_embed.proj.weight"][:, :c], old, atol=1e-2)
    assert first["patch_embed.proj.weight"][:, c:].abs().max() < 1e-2  # new channels start at zero
    assert (Path(straight).parent / "samples" / "ema_step_0000002.png").is_file()
    with pytest.raises(VidFusionError, match="different transformer config"):
        train(load_config(DiTTrainConfig, None, dict(mix, out_dir=str(tmp_path / "c"), num_layers=2)))
