"""Trainers: config loading, LR/EMA/adaptive-weight arithmetic, atomic checkpoints, bit-identical resume, exports."""

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE, alphas_cumprod
from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import read_json, read_state_dict
from vidfusion.io.pretrained import load_pretrained, load_transformer, load_vae
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config
from vidfusion.models.vae import CogVideoXVAE, tiny_random_config
from vidfusion.training import checkpointing as ckpt
from vidfusion.training.common import EMA, lr_at
from vidfusion.training.config import DiTTrainConfig, VAETrainConfig, load_config
from vidfusion.training.losses import adaptive_gan_weight

SMALL = dict(device="cpu", batch_size=2, num_frames=9, height=32, width=32, num_workers=0, log_every=1, warmup_steps=1,
             progress=False)
SMALL_VAE = dict(SMALL, block_out_channels="8,16,16,32", latent_channels=4, norm_num_groups=4, disc_channels=8,
                 num_eval=1, scale_batches=1, image_every=2, frames_per_clip=2)
SMALL_DIT = dict(SMALL, num_attention_heads=2, attention_head_dim=16, num_layers=1, time_embed_dim=16,
                 max_text_seq_length=8, sample_steps=2, sample_prompts='["a red circle moving right"]')


# ------------------------------------------------------------------------------------------------------------ config


def test_config_toml_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('steps = 7\nlr = 1\nblock_out_channels = [8, 16, 16, 32]\nout_dir = "runs/a"\n')
    cfg = load_config(VAETrainConfig, path, ["steps=200", "lr=1e-4", "out_dir=runs/x", "max_minutes=2.5",
                                             "progress=false"])
    assert (cfg.steps, cfg.lr, cfg.out_dir, cfg.max_minutes, cfg.progress) == (200, 1e-4, "runs/x", 2.5, False)
    assert cfg.block_out_channels == (8, 16, 16, 32) and isinstance(cfg.lr, float)
    assert load_config(VAETrainConfig, path, ["max_minutes=none"]).max_minutes is None
    dit = load_config(DiTTrainConfig, None, ['sample_prompts=["a, b", "c"]', "vae_path=v", "num_layers=3"])
    assert dit.sample_prompts == ("a, b", "c") and dit.num_layers == 3


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(VidFusionError, match=r"unknown override key 'stepz'; valid keys: out_dir, steps"):
        load_config(VAETrainConfig, None, ["stepz=3"])
    with pytest.raises(VidFusionError, match="steps='many' is not a valid int"):
        load_config(VAETrainConfig, None, ["steps=many"])
    path = tmp_path / "bad.toml"
    path.write_text("learning_rate = 3\n")
    with pytest.raises(VidFusionError, match="unknown config .* key 'learning_rate'"):
        load_config(VAETrainConfig, path)
    with pytest.raises(VidFusionError, match="use 9 or 17"):
        load_config(VAETrainConfig, None, ["num_frames=13"])
    with pytest.raises(VidFusionError, match="vae_path is not set"):
        load_config(DiTTrainConfig, None, [])


def test_cli_passes_overrides_after_config(tmp_path, capsys):
    from vidfusion.cli import main

    path = tmp_path / "c.toml"
    path.write_text("steps = 1\n")
    assert main(["train", "vae", "--config", str(path), "steps=2", "stepz=1"]) == 2
    assert "unknown override key 'stepz'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other commands keep rejecting extra arguments
        main(["info", str(path), "steps=2"])


# -------------------------------------------------------------------------------------------------------- arithmetic


def test_lr_schedule_values():
    lr, warm, total, floor = 1e-3, 10, 111, 0.1  # cosine over updates 10 .. 110
    assert lr_at(0, lr, warm, total, floor) == pytest.approx(1e-4)
    assert lr_at(9, lr, warm, total, floor) == pytest.approx(1e-3)  # warm-up ends at full lr
    assert lr_at(10, lr, warm, total, floor) == pytest.approx(1e-3)  # the cosine starts at its top
    assert lr_at(60, lr, warm, total, floor) == pytest.approx(0.55e-3)  # halfway: mean of top and floor
    assert lr_at(35, lr, warm, total, floor) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, lr, warm, total, floor) == pytest.approx(1e-4)  # the last update uses the floor


def test_ema_update_arithmetic():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
    ema.update(model)  # n = 0: decay min(0.9, 1/10) = 0.1
    expected = 0.1 * torch.tensor([[1.0, 2.0]]) + 0.9 * torch.tensor([[3.0, -2.0]])
    assert torch.allclose(ema.shadow["weight"], expected)
    ema.num_updates = 1000  # warm-up over: decay 0.9
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], 0.9 * expected + 0.1 * torch.tensor([[3.0, -2.0]]))


def test_adaptive_gan_weight_is_grad_norm_ratio():
    w = nn.Parameter(torch.tensor([1.0, 2.0, 2.0]))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    rec = (w * a).sum()  # grad a, norm 5
    g = 2.0 * (w * b).sum()  # grad 2b, norm 2
    assert adaptive_gan_weight(rec, g, w).item() == pytest.approx(5.0 / (2.0 + 1e-4))
    assert adaptive_gan_weight(rec, 0.0 * (w * b).sum(), w).item() == pytest.approx(1e4)  # clamped
    assert not adaptive_gan_weight(rec, g, w).requires_grad


# ----------------------------------------------------------------------------------------------------- checkpointing


def _adam_with_state() -> torch.optim.AdamW:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).square().sum().backward()
    opt.step()
    return opt


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    opt = _adam_with_state()
    tensors, meta = ckpt.flatten_optimizer_state(opt.state_dict())
    folder = ckpt.save_checkpoint(tmp_path, 1, {"optimizer": tensors}, {"optimizer": meta}, {}, keep=2)
    fresh = torch.optim.AdamW([nn.Parameter(p.detach().clone()) for g in opt.param_groups for p in g["params"]])
    ckpt.load_optimizer(fresh, folder, "optimizer")
    a, b = opt.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root, 1, {"model": {"w": torch.ones(3)}}, {}, {"data_position": 2}, keep=3)
    real_replace = os.replace

    def killed_at_rename(src, dst):  # the files are written, the folder rename never happens
        if Path(dst).name.startswith("step_"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(root, 2, {"model": {"w": torch.zeros(3)}}, {}, {"data_position": 4}, keep=3)
    monkeypatch.undo()

    def killed_mid_write(state, folder, stem, *args, **kwargs):
        (Path(folder) / f"{stem}.safetensors").write_bytes(b"half")  # a torn file, then death
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_state_dict", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(root, 3, {"model": {"w": torch.zeros(3)}}, {}, {"data_position": 6}, keep=3)
    monkeypatch.undo()
    (root / ".tmp-step_0000004-999").mkdir()  # what a SIGKILL mid-save leaves behind

    assert read_json(root / "latest") == {"step": 1, "dir": "step_0000001"}
    folder = ckpt.latest_checkpoint(root)
    assert folder == root / "step_0000001"
    assert torch.equal(ckpt.load_part(folder, "model")["w"], torch.ones(3))
    assert read_json(folder / "train_state.json") == {"data_position": 2, "step": 1}
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) == ["step_0000001"]
    # The next good save sweeps the temp folder, moves `latest`, and keeps only the newest `keep`.
    for step in (5, 6, 7):
        ckpt.save_checkpoint(root, step, {"model": {"w": torch.full((3,), float(step))}}, {}, {}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000006", "step_0000007"]


# ---------------------------------------------------------------------------------------------------------- trainers


def _tensors(folder: Path, part: str) -> dict[str, torch.Tensor]:
    return read_state_dict(folder, part)


def _assert_same_checkpoint(a: Path, b: Path, parts: tuple[str, ...]) -> None:
    for part in parts:
        ta, tb = _tensors(a, part), _tensors(b, part)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{part}/{k} differs after resume"
    assert read_json(a / "optimizer.json") == read_json(b / "optimizer.json")
    sa, sb = read_json(a / "train_state.json"), read_json(b / "train_state.json")
    assert (sa["step"], sa["data_position"], sa["ema_updates"]) == (sb["step"], sb["data_position"], sb["ema_updates"])


def test_vae_trainer_learns_resumes_bit_identically_and_exports(tmp_path):
    from vidfusion.training.train_vae import train

    common = dict(SMALL_VAE, steps=4, disc_start=0, ckpt_every=4, sample_every=4)
    straight = train(load_config(VAETrainConfig, None, dict(common, out_dir=str(tmp_path / "a"))))
    split_dir = str(tmp_path / "b")
    stopped = train(load_config(VAETrainConfig, None, dict(common, out_dir=split_dir, max_minutes=1e-9)))
    assert stopped.name == "step_0000001"  # the budget ran out after one step; it checkpointed and stopped
    train(load_config(VAETrainConfig, None, dict(common, out_dir=split_dir)))

    a, b = tmp_path / "a" / "checkpoints" / "step_0000004", tmp_path / "b" / "checkpoints" / "step_0000004"
    _assert_same_checkpoint(a, b, ("model", "ema", "optimizer", "disc", "disc_optimizer"))
    metrics = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert any('"train/d_loss"' in m for m in metrics) and any('"train/psnr_image"' in m for m in metrics)

    trained, earlier = _tensors(a, "model"), _tensors(tmp_path / "b" / "checkpoints" / "step_0000001", "model")
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert not torch.equal(trained["decoder.conv_out.conv.weight"], earlier["decoder.conv_out.conv.weight"])
    assert not torch.equal(trained["encoder.conv_in.conv.weight"], earlier["encoder.conv_in.conv.weight"])

    vae = load_vae(straight)
    ema = _tensors(a, "ema")
    assert all(torch.equal(vae.state_dict()[k], ema[k]) for k in ema)  # the export is the EMA
    assert vae.config.scaling_factor != 1.0 and vae.config.latent_channels == 4


def test_vae_decoder_only_stage_freezes_encoder_and_keeps_scale(tmp_path):
    """Stage 2 of the recipe: start from a stage-1 export, crop the clips, train only a (here wider) decoder."""
    from vidfusion.training.train_vae import train

    wide = dict(SMALL_VAE, decoder_block_out_channels="8,16,24,32", disc_start=100, sample_every=100)
    first = train(load_config(VAETrainConfig, None, dict(wide, steps=1, out_dir=str(tmp_path / "s1"))))
    start = load_vae(first)
    assert start.config.decoder_block_out_channels == (8, 16, 24, 32)
    assert start.decoder.up_blocks[0].resnets[0].conv1.conv.weight.shape[0] == 32  # widths reversed in the decoder
    second = train(load_config(VAETrainConfig, None, dict(wide, steps=2, out_dir=str(tmp_path / "s2"),
                                                              init_from=str(first), train_encoder=False,
                                                              crop_frames=1, crop_size=16)))
    after = load_vae(second)
    before, now = start.state_dict(), after.state_dict()
    assert all(torch.equal(before[k], now[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["decoder.conv_out.conv.weight"], now["decoder.conv_out.conv.weight"])
    assert after.config.scaling_factor == start.config.scaling_factor
    metrics = (tmp_path / "s2" / "metrics.jsonl").read_text()
    assert '"train/psnr_image"' in metrics and '"train/psnr_video"' not in metrics  # crop_frames=1: image batches

    with pytest.raises(VidFusionError, match="different VAE architecture"):
        train(load_config(VAETrainConfig, None, dict(SMALL_VAE, steps=1, out_dir=str(tmp_path / "s3"),
                                                     init_from=str(first))))
    with pytest.raises(VidFusionError, match="init_from"):
        load_config(VAETrainConfig, None, dict(SMALL_VAE, train_encoder=False))
    with pytest.raises(VidFusionError, match="8k \\+ 1"):
        load_config(VAETrainConfig, None, dict(SMALL_VAE, crop_frames=5))


def test_random_crop_is_a_window_of_the_clip():
    from vidfusion.training.train_vae import random_crop

    x = torch.arange(2 * 3 * 9 * 8 * 8, dtype=torch.float32).reshape(2, 3, 9, 8, 8)
    crops = [random_crop(x, 1, 4, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(c.shape == (2, 3, 1, 4, 4) for c in crops)
    for c in crops:
        t0, y0, x0 = (int(v) for v in torch.nonzero(x[0, 0] == c[0, 0, 0, 0, 0])[0])
        assert torch.equal(c, x[:, :, t0 : t0 + 1, y0 : y0 + 4, x0 : x0 + 4])
    assert len({float(c[0, 0, 0, 0, 0]) for c in crops}) > 5  # windows move
    assert random_crop(x, None, None, torch.Generator()).shape == x.shape


def _vae_export(folder: Path) -> Path:
    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_random_config(sample_height=32, sample_width=32))
    return ckpt.write_component(folder, vae.state_dict(), vae.config.to_dict())


def test_dit_trainer_learns_resumes_bit_identically_and_exports(tmp_path):
    from vidfusion.training.train_dit import train

    vae_path = str(_vae_export(tmp_path / "vae"))
    common = dict(SMALL_DIT, vae_path=vae_path, steps=3, ckpt_every=3, sample_every=3, text_dropout=0.5)
    straight = train(load_config(DiTTrainConfig, None, dict(common, out_dir=str(tmp_path / "a"))))
    split_dir = str(tmp_path / "b")
    train(load_config(DiTTrainConfig, None, dict(common, out_dir=split_dir, max_minutes=1e-9, sample_every=100)))
    assert ckpt.latest_checkpoint(Path(split_dir) / "checkpoints").name == "step_0000001"
    train(load_config(DiTTrainConfig, None, dict(common, out_dir=split_dir)))

    a, b = tmp_path / "a" / "checkpoints" / "step_0000003", tmp_path / "b" / "checkpoints" / "step_0000003"
    _assert_same_checkpoint(a, b, ("model", "ema", "optimizer"))
    losses = [float(line.split('"train/loss": ')[1].split(",")[0])
              for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses)
    assert (tmp_path / "a" / "samples" / "ema_step_0000003.png").is_file()

    trained, ema = _tensors(a, "model"), _tensors(a, "ema")
    earlier = _tensors(Path(split_dir) / "checkpoints" / "step_0000001", "model")
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert not any(torch.equal(trained[k], earlier[k]) for k in ("proj_out.weight", "patch_embed.proj.weight"))
    components = load_pretrained(straight)
    exported = components.transformer.state_dict()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    assert not all(torch.equal(trained[k], ema[k]) for k in ema)  # EMA lags the raw weights
    assert components.default_sampler == "ddim" and components.schedule.snr_shift_scale == 1.0
    assert components.transformer.config.use_rotary_positional_embeddings
    assert load_transformer(straight / "transformer").config.text_embed_dim == 384


def test_dit_echo_resumes_bit_identically_and_init_from_continues(tmp_path):
    """echo=2: two steps per batch; a stop-and-resume equals a straight run; an export's transformer seeds a new run."""
    from vidfusion.training.train_dit import echoed, train

    assert [(b, r) for b, r in echoed(iter("ab"), 2, 3)] == [("a", 0), ("a", 1), ("b", 0)]
    vae_path = str(_vae_export(tmp_path / "vae"))
    common = dict(SMALL_DIT, vae_path=vae_path, steps=4, echo=2, ckpt_every=2, sample_every=100, text_dropout=0.5)
    straight = train(load_config(DiTTrainConfig, None, dict(common, out_dir=str(tmp_path / "a"))))
    split_dir = str(tmp_path / "b")
    train(load_config(DiTTrainConfig, None, dict(common, out_dir=split_dir, max_minutes=1e-9)))
    assert ckpt.latest_checkpoint(Path(split_dir) / "checkpoints").name == "step_0000002"  # stops between batches
    train(load_config(DiTTrainConfig, None, dict(common, out_dir=split_dir)))
    a, b = tmp_path / "a" / "checkpoints" / "step_0000004", tmp_path / "b" / "checkpoints" / "step_0000004"
    _assert_same_checkpoint(a, b, ("model", "ema", "optimizer"))
    assert read_json(a / "train_state.json")["data_position"] == 2 * SMALL["batch_size"]  # 4 steps, 2 batches

    exported = load_transformer(straight / "transformer")
    seeded = train(load_config(DiTTrainConfig, None, dict(common, out_dir=str(tmp_path / "c"),
                                                          init_from=str(straight / "transformer"), max_minutes=1e-9)))
    first = _tensors(seeded, "model")
    moved = [k for k, v in exported.state_dict().items() if not torch.equal(first[k], v)]
    assert moved and all(torch.allclose(first[k], exported.state_dict()[k], atol=1e-2) for k in first)  # one step on
    with pytest.raises(VidFusionError, match="echo=3"):
        load_config(DiTTrainConfig, None, dict(common, echo=3))


def test_object_weights_cover_the_latent_cells_of_each_frame_group():
    """Masks -> latent weights: frame 0 alone, then 4-frame groups (the causal VAE's layout), 8x8 cells, grown by one
    cell; the weighted MSE normalises by the weights."""
    from vidfusion.training.train_dit import latent_object_weights, weighted_mse

    config = tiny_random_config()  # 4x temporal, 8x spatial
    objects = torch.zeros(2, 9, 64, 64, dtype=torch.bool)
    objects[0, 0, 3, 3] = True  # frame 0 -> latent frame 0, cell (0, 0)
    objects[0, 6, 40, 17] = True  # frame 6 -> latent frame 2 (frames 5-8), cell (5, 2)
    w = latent_object_weights(objects, config, 4.0)
    assert w.shape == (2, 3, 1, 8, 8)
    expected = torch.ones(2, 3, 8, 8)
    expected[0, 0, 0:2, 0:2] = 5.0
    expected[0, 2, 4:7, 1:4] = 5.0
    assert torch.equal(w[:, :, 0], expected)
    with pytest.raises(VidFusionError, match="4k\\+1"):
        latent_object_weights(objects[:, :8], config, 4.0)

    pred, target = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    assert torch.allclose(weighted_mse(pred, target, torch.full_like(w, 3.0)), torch.nn.functional.mse_loss(pred, target))
    sq = (pred - target).square()
    by_hand = (sq * w).sum() / (w.sum() * 4)
    assert torch.allclose(weighted_mse(pred, target, w), by_hand)


def test_dit_trainer_object_weight_reaches_the_loss(tmp_path):
    """Same seed, same data: object_weight changes the logged loss (the masks travel from the workers to the loss)."""
    from vidfusion.training.train_dit import train

    vae_path = str(_vae_export(tmp_path / "vae"))
    losses = {}
    for weight in (0.0, 8.0):
        out = tmp_path / f"w{weight}"
        train(load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, steps=1, ckpt_every=1,
                                                     sample_every=100, out_dir=str(out), object_weight=weight)))
        line = (out / "metrics.jsonl").read_text().splitlines()[0]
        losses[weight] = float(line.split('"train/loss": ')[1].split(",")[0])
    assert losses[0.0] > 0 and losses[8.0] > 0 and abs(losses[0.0] - losses[8.0]) > 1e-4 * losses[0.0]
    with pytest.raises(VidFusionError, match="object_weight"):
        load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, object_weight=-1))


def test_vae_object_weights_ring_and_weighted_l1_terms():
    """Masks -> pixel weights grown by a 2 px ring; the weighted L1 terms normalise by the weights and reduce to the
    plain ones under equal weights; a difference counts at the larger weight of its two pixels."""
    from vidfusion.training.losses import finite_difference_l1, pixel_object_weights, weighted_l1

    objects = torch.zeros(1, 3, 16, 16, dtype=torch.bool)
    objects[0, 1, 8, 8] = True
    w = pixel_object_weights(objects, 8.0)
    assert w.shape == (1, 1, 3, 16, 16)
    expected = torch.ones(1, 1, 3, 16, 16)
    expected[0, 0, 1, 6:11, 6:11] = 9.0  # frame 1 only: the ring is spatial
    assert torch.equal(w, expected)

    x_hat, x = torch.randn(1, 3, 3, 16, 16), torch.randn(1, 3, 3, 16, 16)
    flat = torch.full_like(w, 2.5)
    assert torch.allclose(weighted_l1(x_hat, x, flat), (x_hat - x).abs().mean())
    assert torch.allclose(finite_difference_l1(x_hat, x, flat), finite_difference_l1(x_hat, x))
    assert torch.allclose(weighted_l1(x_hat, x, w), (w * (x_hat - x).abs()).sum() / (w.sum() * 3))
    # An error only inside the object: weighted 9x against the plain mean.
    bump = x.clone()
    bump[0, :, 1, 8, 8] += 1.0
    assert torch.allclose(weighted_l1(bump, x, w) / weighted_l1(bump, x), 9.0 * w.numel() / w.sum())
    # Two equal rows, so the H term is 0 and the W term is half the result.
    zero = torch.zeros(1, 1, 1, 2, 4)
    weights = torch.tensor([1.0, 1.0, 9.0, 9.0]).expand(1, 1, 1, 2, 4)
    err = torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(1, 1, 1, 2, 4)  # W diffs +1, -1, 0 at pairs weighted 1, 9, 9
    assert torch.allclose(finite_difference_l1(err, zero, weights), torch.tensor((1 * 1 + 9 * 1 + 9 * 0) / 19 / 2))


def first_vae_step_metrics(out: Path, **overrides) -> dict:
    """The logged metrics of one VAE training step on SMALL_VAE with `overrides` (same seed, so same data)."""
    from vidfusion.training.train_vae import train

    train(load_config(VAETrainConfig, None, dict(SMALL_VAE, steps=1, ckpt_every=1, sample_every=100,
                                                 out_dir=str(out), disc_start=100, **overrides)))
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


def test_vae_trainer_object_weight_reaches_the_loss(tmp_path):
    """Same seed, same data: object_weight changes the logged L1 but not the (unweighted) PSNR of that first step."""

    logs = {w: first_vae_step_metrics(tmp_path / f"w{w}", object_weight=w) for w in (0.0, 8.0)}
    assert abs(logs[0.0]["train/l1"] - logs[8.0]["train/l1"]) > 1e-3 * logs[0.0]["train/l1"]
    assert logs[0.0]["train/psnr_video"] == pytest.approx(logs[8.0]["train/psnr_video"], abs=1e-5)
    with pytest.raises(VidFusionError, match="object_weight"):
        load_config(VAETrainConfig, None, dict(SMALL_VAE, object_weight=-1))


def test_noisy_latents_scale_with_the_latent_std_and_reach_the_decoder(tmp_path):
    from vidfusion.training.train_vae import noisy_latents

    z = 3.0 * torch.randn(64, 4, 2, 8, 8, generator=torch.Generator().manual_seed(1)) + 5.0
    assert noisy_latents(z, 0.0, torch.Generator().manual_seed(0)) is z
    noisy = noisy_latents(z, 0.5, torch.Generator().manual_seed(0))
    again = noisy_latents(z, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)  # deterministic under the step's generator
    per_sample = (noisy - z).flatten(1).std(dim=1) / z.std()  # u * 0.5 with u ~ U(0, 1): mean 0.25, max <= 0.5
    assert per_sample.max() <= 0.5 * 1.05 and per_sample.min() < 0.1
    assert per_sample.mean() == pytest.approx(0.25, abs=0.06)
    assert (noisy - z).mean().abs() < 0.05 * z.std()

    # Same seed, same data: the first step's decode (and so its PSNR) differs only through the latent noise.
    logs = {level: first_vae_step_metrics(tmp_path / f"n{level}", latent_noise=level) for level in (0.0, 2.0)}
    assert logs[0.0]["train/l1"] != logs[2.0]["train/l1"]
    with pytest.raises(VidFusionError, match="latent_noise"):
        load_config(VAETrainConfig, None, dict(SMALL_VAE, latent_noise=-0.1))


def test_shape_swapped_captions_change_only_one_shape():
    from vidfusion.data.captions import parse_prompt
    from vidfusion.data.world import HELDOUT_PAIRS, scene_and_caption, shape_swapped_caption

    swapped = 0
    for index in range(120):
        scene, caption, _ = scene_and_caption(index)
        text = shape_swapped_caption(index)
        assert text == shape_swapped_caption(index)  # deterministic
        if not text:
            continue
        swapped += 1
        want, got = parse_prompt(caption), parse_prompt(text)
        changed = [(a, b) for a, b in zip(want["objects"], got["objects"]) if a != b]
        assert len(changed) == 1 and len(caption.split()) - len(text.split()) in (-1, 0, 1)  # "plus sign" is 2 words
        (a, b), = changed
        assert a["shape"] != b["shape"] and {**a, "shape": b["shape"]} == b
        assert (b["colour"], b["shape"]) not in HELDOUT_PAIRS
    assert swapped >= 115


def test_training_timesteps_power():
    from vidfusion.training.train_dit import training_timesteps

    uniform = training_timesteps(20000, 1.0, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(uniform, torch.randint(0, 1000, (20000,), generator=torch.Generator().manual_seed(0)))
    low = training_timesteps(20000, 2.0, torch.Generator().manual_seed(0), "cpu")
    assert low.min() >= 0 and low.max() <= 999 and low.dtype == torch.long
    # P(t < 300) = sqrt(0.3) = 0.548 for power 2 (0.3 uniform); mean T / (p + 1) = 333.
    assert (low < 300).float().mean() == pytest.approx(0.548, abs=0.01)
    assert low.float().mean() == pytest.approx(333, abs=6)
    with pytest.raises(VidFusionError, match="timestep_power"):
        load_config(DiTTrainConfig, None, {"vae_path": "x", "timestep_power": 0})


def test_dit_shape_contrast_term(tmp_path):
    """The hinge equals the margin when the swapped caption is the true one (the two losses are equal), its gradient
    then cancels, and a trainer run logs the gap; per-sample losses agree with the batch losses."""
    from vidfusion.training.train_dit import per_sample_mse, train, train_step, weighted_mse

    pred, target = torch.randn(3, 2, 4, 5, 5), torch.randn(3, 2, 4, 5, 5)
    w = 1 + 3 * torch.rand(3, 2, 1, 5, 5)
    assert torch.allclose(per_sample_mse(pred, target, None).mean(), F.mse_loss(pred, target))
    assert torch.allclose(per_sample_mse(pred[:1], target[:1], w[:1]), weighted_mse(pred[:1], target[:1], w[:1]))

    cfg = load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path="x", shape_contrast=2.0, shape_margin=0.05))
    torch.manual_seed(0)
    model = CogVideoXTransformer(tiny_config("cogvideox-5b", in_channels=4, out_channels=4, text_embed_dim=8,
                                             max_text_seq_length=6, sample_height=8, sample_width=8,
                                             sample_frames=5))
    x0, context = torch.randn(2, 2, 4, 8, 8), torch.randn(2, 6, 8)
    ab = alphas_cumprod(COGVIDEOX_5B_SCHEDULE)

    def step(negatives):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        out = train_step(cfg, 0, x0, context, m, m, opt, ab, torch.device("cpu"), None, negatives=negatives)
        return out, m

    plain, m_plain = step(None)
    same, m_same = step((context.clone(), torch.tensor([True, True])))
    other, m_other = step((torch.randn(2, 6, 8), torch.tensor([True, False])))
    assert same["train/shape_gap"].item() == 0.0
    assert torch.allclose(same["train/loss"], plain["train/loss"] + 2.0 * 0.05)
    for a, b in zip(m_plain.parameters(), m_same.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert other["train/shape_gap"].item() != 0.0
    assert any(not torch.allclose(a, b) for a, b in zip(m_plain.parameters(), m_other.parameters()))

    vae_path = str(_vae_export(tmp_path / "vae"))
    out = tmp_path / "run"
    train(load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, steps=1, ckpt_every=1,
                                                 sample_every=100, out_dir=str(out), shape_contrast=1.0)))
    assert '"train/shape_gap"' in (out / "metrics.jsonl").read_text()
    with pytest.raises(VidFusionError, match="shape_contrast"):
        load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, shape_contrast=-1))


def test_dit_pixel_loss_decodes_the_predicted_x0(tmp_path):
    """The term is L1 + finite-difference L1 between the decode of x0 = a x_t - s v_pred and the clip, on the first
    pixel_loss_clips samples below pixel_loss_max_t; its gradient reaches the transformer through the frozen decoder,
    which does not change; with no sample below the threshold the step is the plain one."""
    from vidfusion.diffusion.prediction import add_noise, x0_from_v
    from vidfusion.training.common import step_generator
    from vidfusion.training.losses import finite_difference_l1, pixel_object_weights, weighted_l1
    from vidfusion.training.train_dit import NOISE_STREAM, PixelTarget, train, train_step, training_timesteps

    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_random_config(sample_height=32, sample_width=32)).eval().requires_grad_(False)
    model = CogVideoXTransformer(tiny_config("cogvideox-5b", in_channels=4, out_channels=4, text_embed_dim=8,
                                             max_text_seq_length=6, sample_height=4, sample_width=4,
                                             sample_frames=9))
    x0, context = torch.randn(3, 3, 4, 4, 4), torch.randn(3, 6, 8)
    video = torch.randint(0, 256, (3, 3, 9, 32, 32), dtype=torch.uint8)
    objects = torch.rand(3, 9, 32, 32) > 0.8
    pixels = PixelTarget(vae, video, objects, 4.0)
    clips, weights = video.float() / 127.5 - 1, pixel_object_weights(objects, 4.0)
    ab = alphas_cumprod(COGVIDEOX_5B_SCHEDULE)
    vae_before = copy.deepcopy(vae.state_dict())

    def step(max_t, with_pixels=True):
        cfg = load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path="x", pixel_loss=0.5, pixel_loss_clips=2,
                                                     pixel_loss_max_t=max_t))
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        out = train_step(cfg, 0, x0, context, m, m, opt, ab, torch.device("cpu"), None,
                         pixels=pixels if with_pixels else None)
        return out, m

    plain, m_plain = step(1000, with_pixels=False)
    full, m_full = step(1000)
    # The same draw as train_step's: the first two samples (all are below 1000) take part.
    generator = step_generator(0, 0, NOISE_STREAM, torch.device("cpu"))
    t = training_timesteps(3, 1.0, generator, "cpu")
    noise = torch.randn(x0.shape, generator=generator)
    x_t = add_noise(ab, x0, noise, t)
    with torch.no_grad():
        v = model(x_t, context, t)
        z = x0_from_v(ab, x_t[:2], v[:2], t[:2]) / vae.config.scaling_factor
        decoded = vae.decode(z.permute(0, 2, 1, 3, 4))
    by_hand = weighted_l1(decoded, clips[:2], weights[:2]) + finite_difference_l1(decoded, clips[:2], weights[:2])
    assert torch.allclose(full["train/pixel_loss"], by_hand, atol=1e-5)
    assert torch.allclose(full["train/loss"], plain["train/loss"] + 0.5 * by_hand, atol=1e-5)
    assert any(not torch.allclose(a, b) for a, b in zip(m_plain.parameters(), m_full.parameters()))
    assert all(torch.equal(vae_before[k], v) for k, v in vae.state_dict().items())

    assert t.min() > 0  # no sample has t below the smallest t: no term, the plain step exactly
    none, m_none = step(int(t.min()))
    assert "train/pixel_loss" not in none and torch.equal(none["train/loss"], plain["train/loss"])
    for a, b in zip(m_plain.parameters(), m_none.parameters()):
        assert torch.equal(a, b)

    vae_path = str(_vae_export(tmp_path / "vae"))
    out = tmp_path / "run"
    train(load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, steps=1, ckpt_every=1,
                                                 sample_every=100, out_dir=str(out), pixel_loss=1.0,
                                                 pixel_loss_max_t=1000, object_weight=4.0)))
    assert '"train/pixel_loss"' in (out / "metrics.jsonl").read_text()
    with pytest.raises(VidFusionError, match="pixel_loss"):
        load_config(DiTTrainConfig, None, dict(SMALL_DIT, vae_path=vae_path, pixel_loss_max_t=0))


def test_vae_widened_latent_starts_as_the_narrow_vae_and_trains(tmp_path):
    """latent_channels 4 -> 6 from a 4-channel export: at step 0 the round trip (posterior mode) is the old VAE's,
    the old channels' means are unchanged, and training moves the added channels' decoder columns."""
    from vidfusion.models.vae import CogVideoXVAE
    from vidfusion.training.train_vae import load_start_weights, train, vae_config

    first = train(load_config(VAETrainConfig, None, dict(SMALL_VAE, steps=1, disc_start=100, sample_every=100,
                                                         out_dir=str(tmp_path / "s1"))))
    narrow = load_vae(first)
    wide_cfg = load_config(VAETrainConfig, None, dict(SMALL_VAE, latent_channels=6, init_from=str(first),
                                                      out_dir=str(tmp_path / "s2")))
    torch.manual_seed(0)
    wide = CogVideoXVAE(vae_config(wide_cfg))
    load_start_weights(wide, str(first))
    clip = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        z_narrow = narrow.encode(clip).mode()
        z_wide = wide.encode(clip).mode()
        assert z_wide.shape[1] == 6 and torch.allclose(z_wide[:, :4], z_narrow, atol=1e-5)
        assert torch.equal(z_wide[:, 4:], z_wide[:, :2])  # added channels 4, 5 copy channels 0, 1
        torch.testing.assert_close(wide.decode(z_wide), narrow.decode(z_narrow), atol=1e-5, rtol=0)
    w_narrow, w_wide = narrow.decoder.conv_in.conv.weight, wide.decoder.conv_in.conv.weight
    torch.testing.assert_close(w_wide[:, 0] + w_wide[:, 4], w_narrow[:, 0], atol=1e-6, rtol=0)  # split, zero-sum noise
    torch.testing.assert_close(w_wide[:, 3], w_narrow[:, 3])  # a channel without a copy keeps its column
    assert not torch.equal(w_wide[:, 0], w_wide[:, 4])  # the copies differ, so training can pull them apart

    second = train(load_config(VAETrainConfig, None, dict(SMALL_VAE, latent_channels=6, init_from=str(first),
                                                          steps=2, disc_start=100, sample_every=100,
                                                          out_dir=str(tmp_path / "s2"))))
    trained = load_vae(second)
    assert trained.config.latent_channels == 6
    assert not torch.equal(trained.decoder.conv_in.conv.weight[:, 4:], w_wide[:, 4:])

    with pytest.raises(VidFusionError, match="latent_channels may grow"):
        load_start_weights(CogVideoXVAE(vae_config(load_config(VAETrainConfig, None, dict(
            SMALL_VAE, latent_channels=2, out_dir=str(tmp_path / "s3"))))), str(first))
