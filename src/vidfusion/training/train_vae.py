"""Train the CogVideoX-layout VAE on the procedural world.

Loss per step: L1 + grad_weight * finite-difference L1 + kl_weight * KL (per pixel), plus from `disc_start` on the
hinge GAN term with the adaptive (VQGAN) weight; the 3D patch discriminator trains on the same step. Every
`image_every`-th step trains on single frames cut from the clips (T = 1 batches), so the causal first-frame path,
which image-to-video conditioning relies on, is trained too. See `losses` for the choice of terms.

`object_weight` w > 0 weights both L1 terms by 1 + w on pixels within 2 px of the world's objects. Measured on v3's VAE
(30 val clips): the objects cover 5% of the pixels but carry 70% of the squared error, because a moving shape has to
fit through the 4x temporal compression (frame 0, coded alone, reaches 37.2 dB; the later frames 32.0). Blurred
outlines are also what the adherence checker misreads as the wrong shape. The 2 px ring is the blur around an edge.

`latent_noise` s > 0 decodes z + u * s * std(z) * n (u ~ U(0, 1) per sample, n Gaussian) against the clean clip. The
encoder's posterior std is about 1e-4 latent stds (the KL weight is tiny), so without it the decoder never sees an
imprecise latent. A diffusion model's are: on v4's VAE, generated latents sit about 0.08 latent stds (rms) from
their re-encoding against about 0.01 for real clips' latents, and ground-truth latents with 0.2 stds of noise decode
to 22.5 dB, with the checker reading shape on 40% of held-out clips instead of 72% (`benchmarks/latent_noise_probe.py`).
With the encoder frozen the latent space does not move, so a robust decoder drops in under a trained transformer.
Measured in session 10 (one H100, 874 steps at batch 8 from v4's VAE, encoder frozen; model card, "session 10"): at
latent_noise 0.2, noise of 0.3 stds costs 7 dB instead of 14 and keeps shape on 60% of the clips instead of 11%, but
clean world-val PSNR falls from 34.17 to 32.59 dB and the shipped transformer's prompt adherence does not move (shape
+1.2 +- 1.7 points): its errors are in what it draws, not noise around a right drawing. With the encoder trained too
(latent_noise 0.1) the latents themselves become robust (33.70 dB clean) and a transformer adapted to them reads the
image-to-video input's shape on the last frame 0.31 of the time (v4 0.20), but text-to-video shape stays within noise.

Stages of one recipe are runs of this trainer with different settings: `crop_frames`/`crop_size` train on random
windows of the clips (cheap, early), `init_from` starts a run from an earlier stage's export, and `train_encoder=false`
freezes the encoder so the decoder (and a GAN term) can keep improving while a diffusion model trains on the latents.

The export (out_dir/export/vae/) holds the EMA weights and a config whose `scaling_factor` is 1 / std of the
latents, measured on a few batches at export time, so the DiT trainer sees unit-variance latents as CogVideoX does.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import load_weights, read_json, read_state_dict
from vidfusion.io.video import contact_sheet
from vidfusion.models.vae import VAE_PRESETS, CogVideoXVAE, VAEConfig
from vidfusion.training.checkpointing import (
    latest_checkpoint,
    optimizer_parts,
    restore,
    rng_state,
    save_checkpoint,
    step_dir_name,
    write_component,
)
from vidfusion.training.common import (
    EMA,
    Averager,
    Deadline,
    MetricLogger,
    Progress,
    WorldClips,
    adamw,
    autocast,
    autocast_dtype,
    describe_resume,
    eval_batch,
    export_dtype,
    grad_norm_and_clip,
    lr_at,
    make_loader,
    psnr,
    resolve_device,
    set_lr,
    step_generator,
    to_model_range,
)
from vidfusion.training.config import VAETrainConfig, config_to_dict
from vidfusion.training.losses import (
    PatchDiscriminator3D,
    adaptive_gan_weight,
    finite_difference_l1,
    hinge_d_loss,
    hinge_g_loss,
    kl_per_pixel,
    pixel_object_weights,
    weighted_l1,
)

NOISE_STREAM, FRAME_STREAM, CROP_STREAM, LATENT_STREAM = 0, 1, 2, 3


def vae_config(cfg: VAETrainConfig) -> VAEConfig:
    if cfg.preset not in VAE_PRESETS:
        raise VidFusionError(f"unknown VAE preset {cfg.preset!r}; use one of {', '.join(VAE_PRESETS)}")
    fields = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups",
              "decoder_block_out_channels")
    overrides = {k: getattr(cfg, k) for k in fields if getattr(cfg, k) is not None}
    return dataclasses.replace(VAE_PRESETS[cfg.preset], sample_height=cfg.height, sample_width=cfg.width, **overrides)


def single_frames(x: torch.Tensor, per_clip: int, generator: torch.Generator) -> torch.Tensor:
    """[B, 3, T, H, W] -> [B * k, 3, 1, H, W]: k distinct random frames of each clip."""
    b, _, t = x.shape[:3]
    k = min(per_clip, t)
    picks = torch.stack([torch.randperm(t, generator=generator)[:k] for _ in range(b)])  # [B, k], on the CPU
    frames = x[torch.arange(b, device=x.device)[:, None], :, picks.to(x.device)]  # [B, k, 3, H, W]
    return frames.flatten(0, 1).unsqueeze(2)


def random_crop(x: torch.Tensor, frames: int | None, size: int | None, generator: torch.Generator) -> torch.Tensor:
    """[B, 3, T, H, W] -> one random window of `frames` x `size` x `size` per batch (None keeps that axis whole)."""
    t, h, w = x.shape[2:]
    frames, size_h, size_w = frames or t, size or h, size or w
    t0, y0, x0 = (int(torch.randint(0, n - k + 1, (1,), generator=generator))
                  for n, k in ((t, frames), (h, size_h), (w, size_w)))
    return x[:, :, t0 : t0 + frames, y0 : y0 + size_h, x0 : x0 + size_w]


def noisy_latents(z: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """z + u * level * std(z) * n: u ~ U(0, 1) per sample and n ~ N(0, I), both from `generator` (on the CPU)."""
    if level <= 0:
        return z
    u = torch.rand(z.shape[0], generator=generator).view(-1, *[1] * (z.dim() - 1))
    n = torch.randn(z.shape, generator=generator)
    return z + (u * n).to(z.device, z.dtype) * (level * z.detach().float().std()).to(z.dtype)


def widened_latent_state(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size], old: int,
                         new: int, noise: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A `new`-latent-channel VAE's state that decodes exactly as the `old`-channel one's `state` does (Net2Net's
    wider layer, Chen et al. 2016).

    Added latent channel k copies channel (k - old) mod old: the encoder's mean and log-variance rows are copied, and
    every decoder weight that reads the latent (conv_in, the spatial norms' conv_y / conv_b) splits the source
    channel's column evenly over the channel and its copies, plus zero-sum noise of `noise` times the column's std.
    With the posterior mode the copies hold equal values, so the round trip is the old VAE's to rounding; the noise
    makes the copies' decoder columns differ, so their gradients differ and training can pull them apart. (Zero
    columns and a near-zero added encoder row, tried first, start the same but leave both with almost no gradient:
    after 800 steps the added channels were 30x smaller than the old ones and unused. Noise of 1e-3 column stds left
    the copies within 0.2% of each other after 850 steps at batch 16, so the default is 0.1.)"""
    source = [k if k < old else (k - old) % old for k in range(new)]
    groups = [[k for k in range(new) if source[k] == i] for i in range(old)]
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        value = state[key]
        if value.shape == shape:
            out[key] = value.clone()
        elif key.startswith("encoder.conv_out."):
            mean, logvar = value.chunk(2, dim=0)
            out[key] = torch.cat([mean[source], logvar[source]])
        elif value.ndim > 1 and value.shape[1] == old and shape[1] == new and value.shape[2:] == shape[2:]:
            widened = torch.empty(value.shape[0], new, *value.shape[2:], dtype=value.dtype)
            for i, group in enumerate(groups):
                column = value[:, i]
                jitter = torch.randn(len(group), *column.shape, generator=generator) * noise * column.std()
                jitter = jitter - jitter.mean(dim=0, keepdim=True)  # zero-sum: the copies still add up to the column
                for k, j in zip(group, jitter):
                    widened[:, k] = column / len(group) + j.to(value.dtype)
            out[key] = widened
        else:
            raise VidFusionError(f"cannot widen {key}: {list(value.shape)} -> {list(shape)}")
    return out


def load_start_weights(vae: CogVideoXVAE, folder: str, widen_noise: float = 0.1) -> VAEConfig:
    """Copy an exported VAE's weights into `vae` (same architecture, or the same with more latent channels: see
    `widened_latent_state`) and return that export's config."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise VidFusionError(f"init_from={folder} is not an exported VAE folder (no config.json); pass e.g. "
                             f"runs/vae/export/vae")
    start = VAEConfig.from_dict(read_json(path / "config.json"))
    c = vae.config
    comparable = dataclasses.replace(start, scaling_factor=c.scaling_factor, sample_height=c.sample_height,
                                     sample_width=c.sample_width, latent_channels=c.latent_channels)
    if comparable != c or c.latent_channels < start.latent_channels:
        raise VidFusionError(f"init_from={folder} has a different VAE architecture than this config; use the same "
                             f"preset and channel settings as the run that exported it (latent_channels may grow)")
    state = read_state_dict(path)
    if c.latent_channels > start.latent_channels:
        shapes = {k: v.shape for k, v in vae.state_dict().items()}
        state = widened_latent_state({k: v.float() for k, v in state.items()}, shapes, start.latent_channels,
                                     c.latent_channels, widen_noise)
    load_weights(vae, state, path)
    return start


def is_image_step(cfg: VAETrainConfig, step: int) -> bool:
    return cfg.image_every > 0 and step % cfg.image_every == cfg.image_every - 1


def train(cfg: VAETrainConfig) -> Path:
    """Train (resuming from out_dir/checkpoints/latest when there is one); returns the export folder once `steps`
    are done, or the last checkpoint's folder when `max_minutes` ran out first."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / "checkpoints"
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.mixed_precision)
    deadline = Deadline(cfg.max_minutes)

    torch.manual_seed(cfg.seed)
    config = vae_config(cfg)
    vae = CogVideoXVAE(config).to(device).train()
    start_config = load_start_weights(vae, cfg.init_from, cfg.widen_noise) if cfg.init_from else None
    vae.encoder.requires_grad_(cfg.train_encoder)
    disc = PatchDiscriminator3D(config.out_channels, cfg.disc_channels).to(device).train()
    ema = EMA(vae, cfg.ema_decay)
    opt = adamw(vae, cfg.lr, (cfg.adam_beta1, cfg.adam_beta2), cfg.weight_decay, device)
    # GAN-style betas for the discriminator: a short first-moment memory follows the moving generator.
    disc_opt = adamw(disc, cfg.disc_lr, (0.5, 0.9), cfg.weight_decay, device)
    last_layer = vae.decoder.conv_out.conv.weight

    start, first_sample = 0, 0
    folder = latest_checkpoint(ckpt_root)
    if folder is not None:
        state = restore(folder, {"model": vae, "disc": disc}, {"optimizer": opt, "disc_optimizer": disc_opt}, ema)
        start, first_sample = state["step"], state["data_position"]
        note = describe_resume(state["config"], config_to_dict(cfg))
        print(f"resuming from {folder} (step {start})" + (f"; {note}" if note else ""))

    def save(step: int) -> Path:
        tensors = {"model": vae.state_dict(), "ema": ema.state_dict(), "disc": disc.state_dict(), "rng": rng_state()}
        opt_tensors, opt_json = optimizer_parts("optimizer", opt)
        d_tensors, d_json = optimizer_parts("disc_optimizer", disc_opt)
        train_state = {
            "data_position": first_sample + (step - start) * cfg.batch_size,
            "ema_updates": ema.num_updates,
            "config": config_to_dict(cfg),
            "vae_config": config.to_dict(),
        }
        return save_checkpoint(ckpt_root, step, {**tensors, **opt_tensors, **d_tensors}, {**opt_json, **d_json},
                               train_state, cfg.keep_checkpoints)

    ema_vae = CogVideoXVAE(config).to(device).eval().requires_grad_(False)
    eval_videos, _ = eval_batch(cfg.num_eval, cfg.num_frames, cfg.height, cfg.width)
    logger = MetricLogger(out)
    progress = Progress(start, cfg.steps, "vae", cfg.progress)
    averager = Averager()
    dataset = WorldClips(cfg.seed, cfg.num_frames, cfg.height, cfg.width, with_masks=cfg.object_weight > 0)
    loader = make_loader(dataset, first_sample, cfg.steps - start, cfg.batch_size, cfg.num_workers, device)

    for step, batch in enumerate(loader, start):
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        set_lr(opt, lr)
        set_lr(disc_opt, lr * cfg.disc_lr / cfg.lr)
        x = to_model_range(batch["video"], device)
        if cfg.object_weight > 0:  # one more channel, so crops and frame picks cut the weights with the pixels
            x = torch.cat([x, pixel_object_weights(batch["objects"].to(device), cfg.object_weight)], dim=1)
        if cfg.crop_frames or cfg.crop_size:
            x = random_crop(x, cfg.crop_frames, cfg.crop_size, step_generator(cfg.seed, step, CROP_STREAM))
        if is_image_step(cfg, step):
            x = single_frames(x, cfg.frames_per_clip, step_generator(cfg.seed, step, FRAME_STREAM))
        x, weights = (x[:, :3], x[:, 3:]) if cfg.object_weight > 0 else (x, None)
        metrics = train_step(cfg, step, x, vae, disc, opt, disc_opt, last_layer, device, amp, weights)
        ema.update(vae)
        metrics["lr"] = lr
        averager.add(metrics)
        progress.step(batch["video"].shape[0])
        done = step + 1

        if done % cfg.log_every == 0 or done == cfg.steps:
            values = averager.pop()
            values["throughput/clips_per_s"] = progress.throughput()
            logger.scalars(done, values)
            psnr_shown = values.get("train/psnr_video", values.get("train/psnr_image", 0.0))
            progress.show(loss=values["train/loss"], psnr=psnr_shown, clips_s=values["throughput/clips_per_s"])
        if done % cfg.sample_every == 0 or done == cfg.steps:
            write_samples(done, ema.copy_to(ema_vae), eval_videos, out, logger, device, amp)
        stop = deadline.reached() and done < cfg.steps
        if done % cfg.ckpt_every == 0 or done == cfg.steps or stop:
            save(done)
        if stop:
            progress.close()
            logger.close()
            print(f"max_minutes={cfg.max_minutes} reached at step {done}; run the same command again to resume")
            return ckpt_root / step_dir_name(done)
    progress.close()
    logger.close()
    scale = start_config.scaling_factor if start_config is not None and not cfg.train_encoder else None
    return export(cfg, ema.copy_to(ema_vae), device, amp, scale)


def train_step(cfg: VAETrainConfig, step: int, x: torch.Tensor, vae: CogVideoXVAE, disc: PatchDiscriminator3D,
               opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer, last_layer: torch.Tensor,
               device: torch.device, amp: torch.dtype | None,
               weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One generator (+ discriminator) step on x [B, 3, T, H, W]; `weights` [B, 1, T, H, W] weight the L1 terms."""
    gan = step >= cfg.disc_start
    with autocast(device, amp), torch.set_grad_enabled(cfg.train_encoder):
        posterior = vae.encode(x)
    with autocast(device, amp):
        z = posterior.sample(step_generator(cfg.seed, step, NOISE_STREAM, device))
        x_hat = vae.decode(noisy_latents(z, cfg.latent_noise, step_generator(cfg.seed, step, LATENT_STREAM))).float()
    l1 = weighted_l1(x_hat, x, weights)
    grad_l1 = finite_difference_l1(x_hat, x, weights)
    rec = l1 + cfg.grad_weight * grad_l1
    kl = kl_per_pixel(posterior.kl().float(), x)
    loss = rec + cfg.kl_weight * kl
    kind = "video" if x.shape[2] > 1 else "image"
    metrics = {"train/l1": l1.detach(), "train/grad_l1": grad_l1.detach(), "train/kl": kl.detach(),
               f"train/psnr_{kind}": psnr(x_hat.detach(), x)}

    if gan:
        disc.requires_grad_(False)  # the generator step must not leave gradients in the discriminator
        with autocast(device, amp):
            g_loss = hinge_g_loss(disc(x_hat).float())
        weight = cfg.disc_weight * adaptive_gan_weight(rec, g_loss, last_layer)
        loss = loss + weight * g_loss
        metrics.update({"train/g_loss": g_loss.detach(), "train/gan_weight": weight})
    opt.zero_grad(set_to_none=True)
    loss.backward()
    metrics["train/grad_norm"] = grad_norm_and_clip(list(vae.parameters()), cfg.grad_clip)
    opt.step()
    metrics["train/loss"] = loss.detach()

    if gan:
        disc.requires_grad_(True)
        with autocast(device, amp):
            d_loss = hinge_d_loss(disc(x).float(), disc(x_hat.detach()).float())
        disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        metrics["train/disc_grad_norm"] = grad_norm_and_clip(list(disc.parameters()), cfg.grad_clip)
        disc_opt.step()
        metrics["train/d_loss"] = d_loss.detach()
    return metrics


@torch.no_grad()
def reconstruct(vae: CogVideoXVAE, videos_uint8: torch.Tensor, device: torch.device,
                amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = to_model_range(videos_uint8, device)
    with autocast(device, amp):
        x_hat = vae.decode(vae.encode(x).mode()).float().clamp(-1, 1)
    return x, x_hat


def write_samples(step: int, vae: CogVideoXVAE, videos_uint8: torch.Tensor, out: Path, logger: MetricLogger,
                  device: torch.device, amp: torch.dtype | None) -> None:
    """Input-over-reconstruction contact sheets of the fixed val clips (EMA weights) and their PSNR."""
    x, x_hat = reconstruct(vae, videos_uint8, device, amp)
    rows = []
    for real, fake in zip(x, x_hat):
        rows += [contact_sheet(real.transpose(0, 1), cols=8), contact_sheet(fake.transpose(0, 1), cols=8)]
    sheet = np.concatenate(rows, axis=0)
    path = out / "samples" / f"recon_{step_dir_name(step)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    logger.image(step, "samples/recon", sheet)
    logger.scalars(step, {"val/psnr": float(psnr(x_hat, x))})


@torch.no_grad()
def latent_scale(cfg: VAETrainConfig, vae: CogVideoXVAE, device: torch.device, amp: torch.dtype | None) -> float:
    """1 / std of posterior samples over `scale_batches` val batches (Stable Diffusion's recipe)."""
    dataset = WorldClips(0, cfg.num_frames, cfg.height, cfg.width, split="val")
    generator = torch.Generator(device).manual_seed(cfg.seed)
    total, total_sq, count = 0.0, 0.0, 0
    for b in range(cfg.scale_batches):
        videos = torch.stack([dataset[b * cfg.batch_size + i]["video"] for i in range(cfg.batch_size)])
        with autocast(device, amp):
            z = vae.encode(to_model_range(videos, device)).sample(generator).double()
        total, total_sq, count = total + z.sum().item(), total_sq + z.pow(2).sum().item(), count + z.numel()
    mean = total / count
    return 1.0 / max((total_sq / count - mean**2) ** 0.5, 1e-6)


def export(cfg: VAETrainConfig, ema_vae: CogVideoXVAE, device: torch.device, amp: torch.dtype | None,
           scale: float | None = None) -> Path:
    """Write the EMA weights; `scale` None measures the latent std (a frozen encoder keeps its start's scale)."""
    if scale is None:
        scale = latent_scale(cfg, ema_vae, device, amp)
    config = dataclasses.replace(ema_vae.config, scaling_factor=round(scale, 6))
    folder = write_component(Path(cfg.out_dir) / "export" / "vae", ema_vae.state_dict(), config.to_dict(),
                             export_dtype(cfg.export_dtype))
    print(f"exported EMA VAE to {folder} (scaling_factor {config.scaling_factor})")
    return folder


def main(config_path: str | None, overrides: list[str]) -> Path:
    from vidfusion.training.config import load_config

    return train(load_config(VAETrainConfig, config_path, overrides))
