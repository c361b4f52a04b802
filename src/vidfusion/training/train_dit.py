"""Train the CogVideoX diffusion transformer on latents of the procedural world.

Per step: clips -> frozen VAE -> posterior sample * scaling_factor, as [B, F, C, h, w]; captions -> frozen MiniLM
(10% replaced by "", the pipeline's negative prompt, so classifier-free guidance has an unconditional model);
t ~ U{0..999} on the zero-terminal-SNR CogVideoX-5B schedule; loss = MSE(v_pred, v_target).

The plain v MSE *is* CogVideoX's loss: it regresses x0 with weight 1 / (1 - alphabar_t), and
x0_pred - x0 = -sqrt(1 - alphabar_t) (v_pred - v), so the weight cancels exactly (diffusion/prediction.py).
Computing it on v avoids multiplying by 1 / (1 - alphabar_0), about 1e3, in low precision.

`object_weight` w > 0 weights the squared error by 1 + w on latent cells the world's objects cover at any frame of the
cell (grown by one cell), normalised by the weights' sum. Objects fill about 5% of the pixels but carry everything a
caption says (colour, shape, motion); with plain MSE the backgrounds' textures and pans take most of the gradient.
The shipped v2 model learnt colour words but ignored motion and shape words (benchmarks/caption_swap.py).

`shape_contrast` lambda > 0 adds lambda * mean(relu(shape_margin - (L_swap - L_true))): L_true is a sample's loss with
its caption, L_swap with the same caption but one colour group's shape word replaced (world.shape_swapped_caption),
on the same noisy input, timestep and target. Object weighting taught v3 motion words, but shape words still change
the loss by at most 4e-4 (caption swap), so a wrong shape word costs the model nothing; the hinge asks for a gap of
shape_margin between the two. Samples whose caption is dropped this step, or that have no valid swap, do not take
part. Measured in session 9 (model card, "After v4"): 2,000 steps from v4 gave +4.9 +- 2.5 shape points over a
control run without the term; not shipped, because long videos and FreeInit got worse.

`timestep_power` p > 1 draws t = floor(T u^p) instead of uniformly, so low-noise steps are trained more often. Why:
the SDEdit probe (`benchmarks/sdedit_probe.py`: v4, ground-truth latents noised to t, sampled back with the true
caption) keeps shape on 40% of held-out clips from t = 300 (50% unguided) against 76% for the VAE alone. An outline
is decided below t of about 300, where its latent difference (18% of a colour swap's, squared) meets noise of similar
size.
Measured in session 10: power 2 for 2,000 steps from v4 scored shape 15.5% against 14.4% for the uniform control of
session 9 (+1.1 +- 2.0 points paired), so it is off by default.

`pixel_loss` lambda > 0 adds lambda * (L1 + finite-difference L1) between the frozen VAE decoder's decode of the
predicted x0 (x0 = a x_t - s v_pred) and the clip itself, object-weighted as the VAE trainer weights it (1 +
object_weight within 2 px of an object), on up to `pixel_loss_clips` samples of the step whose t < pixel_loss_max_t.
Why: a shape swap changes the latent by 18% of what a colour swap does (squared norm) but the pixels by 51% (L1), so
the latent MSE barely charges the model for a wrong outline, while the decoder's gradient says which latent
directions draw it. Low t only, because there the outline is decided (above) and x0 is predictable, so the decoded
prediction is a sharp picture rather than a mean over possible ones. Costs one decoder forward and backward on
those clips per step (two runs side by side on one H100: about 140 clips/s each).
Measured in session 11 (2,000 steps from v4, 4 clips, t < 400): lambda 0.2 scored shape 17.4% and lambda 1 14.7%,
against 14.4% for session 9's control (+3.0 +- 2.1 and +0.3 +- 2.2 points paired); the pixel term itself did not
fall during either run (0.078 -> 0.082). Off by default.

`attribute_loss` lambda > 0 adds lambda * the attribute probe's cross-entropy (training/attribute_probe.py): a head on
the video tokens after block `attribute_layer` predicts each token's shape, colour and motion shares from the world's
ground truth, so the middle layers must carry the caption's words to the object's place (REPA's idea, with the
world's labels for the representation). The head has its own optimiser, is checkpointed, and is never exported.
Measured in session 13 (4,000 steps from v4, lambda 0.02, block 4): shape 21.9% against 16.2% for a control run
beside it (+5.8 +- 2.6 points paired), but mostly because more outlines were read as crosses (model card); lambda
0.1 for 2,000 steps: 16.4%. Off by default.

With `task_mix` set the model is a masked-context model (pipelines/masked_context.py): each batch also carries which
frames are known and a frame rate (training/task_mix.py); the known frames are encoded (with pixel noise) into context
latents, concatenated with the noisy latents and the mask, and the frame rate goes to the ofs embedding. The loss is
the same v MSE over all latent frames, known ones included (Video LDM), so the known frames come out matching them.

Master weights are fp32; the forward runs under bf16 autocast on CUDA. The export (out_dir/export/) is a complete
diffusers-layout model folder (EMA transformer, the VAE, MiniLM + tokenizer, DDIM scheduler), so
`vidfusion generate --model out_dir/export` runs it directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vidfusion.diffusion.prediction import add_noise, v_target, x0_from_v
from vidfusion.diffusion.schedule import COGVIDEOX_5B_SCHEDULE, alphas_cumprod
from vidfusion.errors import VidFusionError
from vidfusion.io.checkpoint import load_weights, read_json, read_state_dict
from vidfusion.io.pretrained import Components, load_vae, save_pretrained
from vidfusion.io.video import contact_sheet
from vidfusion.models.text_encoder import TextEncoder, load_text_encoder, minilm_dir
from vidfusion.models.transformer import CogVideoXTransformer, TransformerConfig
from vidfusion.models.vae import latent_num_frames
from vidfusion.pipelines.masked_context import encode_context, model_input
from vidfusion.pipelines.text_to_video import (
    decode,
    denoise,
    encode_prompts,
    initial_noise,
)
from vidfusion.training.attribute_probe import AttributeHead, BlockOutput, probe_loss
from vidfusion.training.checkpointing import (
    latest_checkpoint,
    optimizer_parts,
    restore,
    rng_state,
    save_checkpoint,
    step_dir_name,
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
    export_dtype,
    grad_norm_and_clip,
    lr_at,
    make_loader,
    resolve_device,
    set_lr,
    step_generator,
    to_model_range,
)
from vidfusion.training.conditioning import image_noise_sigmas
from vidfusion.training.config import DiTTrainConfig, config_to_dict
from vidfusion.training.losses import (
    finite_difference_l1,
    pixel_object_weights,
    weighted_l1,
)
from vidfusion.training.task_mix import TaskMixClips

NOISE_STREAM, DROPOUT_STREAM, LATENT_STREAM, CONTEXT_STREAM = 0, 1, 2, 3
SCHEDULE = COGVIDEOX_5B_SCHEDULE


def transformer_config(cfg: DiTTrainConfig, vae_config, text_dim: int) -> TransformerConfig:
    spatial = vae_config.spatial_compression_ratio
    c = vae_config.latent_channels
    return TransformerConfig(
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=2 * c + 1 if cfg.task_mix else c,  # [noisy, context, mask] for a masked-context model
        ofs_embed_dim=cfg.time_embed_dim if cfg.task_mix else None,  # the frame-rate label
        out_channels=vae_config.latent_channels,
        time_embed_dim=cfg.time_embed_dim,
        text_embed_dim=text_dim,
        num_layers=cfg.num_layers,
        sample_height=cfg.height // spatial,
        sample_width=cfg.width // spatial,
        sample_frames=cfg.num_frames,
        patch_size=cfg.patch_size,
        temporal_compression_ratio=vae_config.temporal_compression_ratio,
        max_text_seq_length=cfg.max_text_seq_length,
        use_rotary_positional_embeddings=cfg.use_rotary_positional_embeddings,
    )


def load_frozen(cfg: DiTTrainConfig, device: torch.device):
    vae_dir = Path(cfg.vae_path)
    if not (vae_dir / "config.json").is_file():
        raise VidFusionError(
            f"vae_path={vae_dir} has no config.json; point it at a VAE export folder such as runs/vae/export/vae"
        )
    vae = load_vae(vae_dir, device)  # eval, requires_grad off
    encoder_dir = minilm_dir()
    text_encoder = load_text_encoder(encoder_dir, encoder_dir, cfg.max_text_seq_length, device)
    return vae, text_encoder


def train(cfg: DiTTrainConfig) -> Path:
    """Train (resuming from out_dir/checkpoints/latest when there is one); returns the export folder once `steps`
    are done, or the last checkpoint's folder when `max_minutes` ran out first."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / "checkpoints"
    device = resolve_device(cfg.device)
    amp = autocast_dtype(device, cfg.mixed_precision)
    deadline = Deadline(cfg.max_minutes)

    vae, text_encoder = load_frozen(cfg, device)
    config = transformer_config(cfg, vae.config, text_encoder.dim)
    torch.manual_seed(cfg.seed)
    model = CogVideoXTransformer(config).to(device).train()
    if cfg.init_from:
        load_start_weights(model, cfg.init_from)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    ema = EMA(model, cfg.ema_decay)
    opt = adamw(model, cfg.lr, (cfg.adam_beta1, cfg.adam_beta2), cfg.weight_decay, device)
    probe = None
    if cfg.attribute_loss > 0:
        head = AttributeHead(config.inner_dim, cfg.attribute_hidden).to(device).train()
        probe = Probe(head, adamw(head, cfg.lr, (cfg.adam_beta1, cfg.adam_beta2), cfg.weight_decay, device),
                      BlockOutput(model.transformer_blocks[cfg.attribute_layer - 1]))
    forward = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    ab = alphas_cumprod(SCHEDULE).to(device)

    start, first_sample = 0, 0
    folder = latest_checkpoint(ckpt_root)
    if folder is not None:
        modules, optimizers = {"model": model}, {"optimizer": opt}
        if probe is not None:
            modules["attribute_head"], optimizers["head_optimizer"] = probe.head, probe.optimizer
        state = restore(folder, modules, optimizers, ema)
        start, first_sample = state["step"], state["data_position"]
        note = describe_resume(state["config"], config_to_dict(cfg))
        print(f"resuming from {folder} (step {start})" + (f"; {note}" if note else ""))

    def save(step: int) -> Path:
        opt_tensors, opt_json = optimizer_parts("optimizer", opt)
        tensors = {"model": model.state_dict(), "ema": ema.state_dict(), "rng": rng_state(), **opt_tensors}
        if probe is not None:
            head_tensors, head_json = optimizer_parts("head_optimizer", probe.optimizer)
            tensors.update(attribute_head=probe.head.state_dict(), **head_tensors)
            opt_json = {**opt_json, **head_json}
        train_state = {
            "data_position": first_sample + -(-(step - start) // cfg.echo) * cfg.batch_size,  # batches begun
            "ema_updates": ema.num_updates,
            "config": config_to_dict(cfg),
            "transformer_config": config.to_dict(),
        }
        return save_checkpoint(ckpt_root, step, tensors, opt_json, train_state, cfg.keep_checkpoints)

    ema_model = CogVideoXTransformer(config).to(device).eval().requires_grad_(False)
    components = Components(ema_model, vae, text_encoder, SCHEDULE, "ddim")
    logger = MetricLogger(out)
    progress = Progress(start, cfg.steps, "dit", cfg.progress)
    averager = Averager()
    with_masks = cfg.object_weight > 0
    labels = None
    if probe is not None:  # token footprints: latent frames x (VAE stride * patch) pixels square
        labels = (vae.config.temporal_compression_ratio, vae.config.spatial_compression_ratio * cfg.patch_size)
    if cfg.task_mix:
        dataset = TaskMixClips(cfg.seed, cfg.num_frames, cfg.height, cfg.width, cfg.task_mix, cfg.extend_frames,
                               cfg.interp_fps, cfg.base_fps, cfg.context_dropout, with_masks=with_masks,
                               with_swaps=cfg.shape_contrast > 0, labels=labels)
    else:
        dataset = WorldClips(cfg.seed, cfg.num_frames, cfg.height, cfg.width, with_masks=with_masks,
                             with_swaps=cfg.shape_contrast > 0, labels=labels)
    # A checkpoint always falls on a batch boundary (validate: echo divides ckpt_every), so data_position counts
    # batches * batch_size and a resume starts a fresh batch.
    loader = make_loader(dataset, first_sample, -(-(cfg.steps - start) // cfg.echo), cfg.batch_size,
                         cfg.num_workers, device)

    for step, (batch, repeat) in enumerate(echoed(loader, cfg.echo, cfg.steps - start), start):
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        set_lr(opt, lr)
        if probe is not None:
            set_lr(probe.optimizer, lr)
        # Once per log window the parts of a step are timed (with device syncs), to show where the time goes.
        clock = SectionClock(device, enabled=step % cfg.log_every == 0 and repeat == 0)
        if repeat == 0:
            latents, captions = encode_batch(cfg, step, batch, vae, device, amp)
            condition = context_batch(cfg, step, batch, vae, device, amp) if cfg.task_mix else None
            weights = None
            if cfg.object_weight > 0:
                weights = latent_object_weights(batch["objects"].to(device), vae.config, cfg.object_weight)
            pixels = None
            if cfg.pixel_loss > 0:
                objects = batch["objects"] if cfg.object_weight > 0 else None
                pixels = PixelTarget(vae, batch["video"], objects, cfg.object_weight)
        clock.lap("time/vae_ms")
        x0, context = latents, caption_states(cfg, step, captions, text_encoder)
        negatives = shape_negatives(cfg, step, batch, text_encoder) if cfg.shape_contrast > 0 else None
        clock.lap("time/text_ms")
        targets = (batch["object_fractions"], batch["object_classes"]) if probe is not None else None
        metrics = train_step(cfg, step, x0, context, forward, model, opt, ab, device, amp, condition, weights,
                             negatives, pixels, probe, targets)
        clock.lap("time/step_ms")
        ema.update(model)
        clock.lap("time/ema_ms")
        metrics.update(clock.laps)
        metrics["lr"] = lr
        averager.add(metrics)
        progress.step(x0.shape[0])
        done = step + 1
        if repeat < cfg.echo - 1 and done < cfg.steps:
            continue  # logging, samples and checkpoints only between batches

        if done % cfg.log_every < cfg.echo or done == cfg.steps:
            values = averager.pop()
            values["throughput/clips_per_s"] = progress.throughput()
            logger.scalars(done, values)
            progress.show(loss=values["train/loss"], clips_s=values["throughput/clips_per_s"])
        if done % cfg.sample_every < cfg.echo or done == cfg.steps:
            ema.copy_to(ema_model)
            write_samples(cfg, done, components, out, logger, device, amp)
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
    ema.copy_to(ema_model)
    return export(cfg, components)


class SectionClock:
    """Wall time of consecutive sections in ms, synchronising the device at each lap; a no-op when disabled."""

    def __init__(self, device: torch.device, enabled: bool):
        self.device, self.enabled, self.laps = device, enabled, {}
        self.last = self._now() if enabled else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.enabled:
            now = self._now()
            self.laps[name], self.last = 1e3 * (now - self.last), now


def echoed(loader, echo: int, num_steps: int):
    """(batch, repeat) pairs: each batch `echo` times in a row, `num_steps` pairs in all."""
    count = 0
    for batch in loader:
        for repeat in range(echo):
            if count == num_steps:
                return
            yield batch, repeat
            count += 1


def load_start_weights(model: CogVideoXTransformer, folder: str) -> None:
    """Load `folder`'s transformer; a plain text-to-video start for a masked-context model is widened first."""
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise VidFusionError(f"init_from={folder} is not a transformer folder (no config.json); pass e.g. "
                             f"runs/dit/export/transformer")
    start = TransformerConfig.from_dict(read_json(path / "config.json"))
    state = read_state_dict(path)
    widened = dataclasses.replace(start, in_channels=model.config.in_channels,
                                  ofs_embed_dim=model.config.ofs_embed_dim)
    if start != model.config and widened == model.config and start.in_channels < model.config.in_channels:
        state = widen_start_weights(model, state)
    elif start != model.config:
        raise VidFusionError(f"init_from={folder} has a different transformer config than this run; use the shape "
                             f"settings of the run that exported it")
    load_weights(model, state, path)


def widen_start_weights(model: CogVideoXTransformer, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A text-to-video state dict -> one for `model` with more input channels and a frame-rate embedding, such that
    the widened model computes exactly what the start model did while the context is empty: the new input channels
    get zero weights, and the frame-rate embedding's last layer is zero, so it adds nothing until it learns to."""
    state = dict(state)
    own = model.state_dict()
    key = "patch_embed.proj.weight"
    old = state[key]
    new = torch.zeros_like(own[key], dtype=old.dtype)
    new[:, : old.shape[1]] = old
    state[key] = new
    for name, tensor in own.items():
        if name.startswith("ofs_embedding.") and name not in state:
            zero = name.startswith("ofs_embedding.linear_2.")
            state[name] = torch.zeros_like(tensor) if zero else tensor.detach().clone()
    return state


@torch.no_grad()
def encode_batch(cfg: DiTTrainConfig, step: int, batch: dict, vae, device: torch.device,
                 amp: torch.dtype | None) -> tuple[torch.Tensor, list[str]]:
    """(scaled latents [B, F, C, h, w] in fp32, the batch's captions)."""
    x = to_model_range(batch["video"], device)
    with autocast(device, amp):
        z = vae.encode(x).sample(step_generator(cfg.seed, step, LATENT_STREAM, device))
    return (z.float() * vae.config.scaling_factor).permute(0, 2, 1, 3, 4).contiguous(), list(batch["caption"])


@torch.no_grad()
def context_batch(cfg: DiTTrainConfig, step: int, batch: dict, vae, device: torch.device,
                  amp: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The masked-context inputs of a task-mix batch: context latents [B, F, C, h, w], mask [B, F], fps [B]."""
    x = to_model_range(batch["video"], device)
    known = batch["known"].to(device)
    generator = step_generator(cfg.seed, step, CONTEXT_STREAM, device)
    sigmas = image_noise_sigmas(x.shape[0], generator).to(device) if cfg.context_noise else None
    with autocast(device, amp):
        latents, mask = encode_context(vae, x, known, sigmas, generator)
    return {"latents": latents.float(), "mask": mask.float(), "fps": batch["fps"].to(device, torch.float32)}


@torch.no_grad()
def caption_states(cfg: DiTTrainConfig, step: int, captions: list[str], text_encoder: TextEncoder) -> torch.Tensor:
    """Text states [B, L, D] with this step's dropout (captions replaced by "")."""
    # Text in fp32, as the pipeline encodes prompts at inference.
    return text_encoder(["" if d else c for c, d in zip(captions, dropped_captions(cfg, step, len(captions)))])


def dropped_captions(cfg: DiTTrainConfig, step: int, n: int) -> list[bool]:
    """Which of the step's n captions are dropped for classifier-free guidance (a function of seed and step only)."""
    return (torch.rand(n, generator=step_generator(cfg.seed, step, DROPOUT_STREAM)) < cfg.text_dropout).tolist()


def training_timesteps(n: int, power: float, generator: torch.Generator, device) -> torch.Tensor:
    """n timesteps, floor(T * u ** power) with u ~ U(0, 1); power 1 draws them uniformly (as randint, bit for bit
    the draw of runs before the option existed)."""
    steps = SCHEDULE.num_train_timesteps
    if power == 1.0:
        return torch.randint(0, steps, (n,), generator=generator, device=device)
    u = torch.rand(n, generator=generator, device=device)
    return (steps * u.pow(power)).long().clamp(max=steps - 1)


def train_step(cfg: DiTTrainConfig, step: int, x0: torch.Tensor, context: torch.Tensor, forward, model,
               opt: torch.optim.Optimizer, ab: torch.Tensor, device: torch.device,
               amp: torch.dtype | None, condition: dict[str, torch.Tensor] | None = None,
               weights: torch.Tensor | None = None,
               negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
               pixels: PixelTarget | None = None, probe: Probe | None = None,
               targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One optimiser step. `negatives` (shape-swapped caption states [B, L, D], and a bool [B] of the samples that
    have one) adds cfg.shape_contrast * mean(relu(shape_margin - (L_swapped - L_true))) over those samples, with
    per-sample losses on the same noisy input, timestep and target. `pixels` adds cfg.pixel_loss * `pixel_loss` on
    the first cfg.pixel_loss_clips samples whose t is below cfg.pixel_loss_max_t (none: no term this step).
    `probe` with `targets` (object shares per token [B, K, F, h, w], object classes [B, K, 3]) adds
    cfg.attribute_loss * the attribute probe's loss on the tokens of the true caption's forward, and steps its
    head."""
    generator = step_generator(cfg.seed, step, NOISE_STREAM, device)
    t = training_timesteps(x0.shape[0], cfg.timestep_power, generator, device)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    x_t = add_noise(ab, x0, noise, t)

    def predict(text: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            if condition is None:
                return forward(x_t, text, t).float()
            x_in = model_input(x_t, condition["latents"], condition["mask"])
            return forward(x_in, text, t, condition["fps"]).float()

    v_pred = predict(context)
    target = v_target(ab, x0, noise, t)
    loss = F.mse_loss(v_pred, target) if weights is None else weighted_mse(v_pred, target, weights)
    metrics = {}
    if probe is not None:
        out = probe_loss(probe.head, probe.block.take(), *targets, cfg.object_weight)
        loss = loss + cfg.attribute_loss * out.loss
        metrics.update(out.metrics)
    if negatives is not None and bool(negatives[1].any()):
        swapped_context, valid = negatives
        rows = valid.nonzero().flatten()
        w = weights[rows] if weights is not None else None
        true_loss = per_sample_mse(v_pred[rows], target[rows], w)
        swapped_loss = per_sample_mse(predict(swapped_context)[rows], target[rows], w)
        gap = swapped_loss - true_loss
        contrast = F.relu(cfg.shape_margin - gap).mean()
        loss = loss + cfg.shape_contrast * contrast
        metrics.update({"train/shape_gap": gap.detach().mean(), "train/shape_hinge": contrast.detach()})
    if pixels is not None:
        rows = (t < cfg.pixel_loss_max_t).nonzero().flatten()[: cfg.pixel_loss_clips]
        if len(rows):
            x0_pred = x0_from_v(ab, x_t[rows], v_pred[rows], t[rows])
            term = pixel_loss(x0_pred, pixels, rows, device, amp)
            loss = loss + cfg.pixel_loss * term
            metrics["train/pixel_loss"] = term.detach()
    opt.zero_grad(set_to_none=True)
    if probe is not None:
        probe.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = grad_norm_and_clip([p for p in model.parameters() if p.grad is not None], cfg.grad_clip)
    opt.step()
    if probe is not None:
        grad_norm_and_clip(list(probe.head.parameters()), cfg.grad_clip)
        probe.optimizer.step()
    return {"train/loss": loss.detach(), "train/grad_norm": grad_norm, **metrics}


@dataclasses.dataclass
class Probe:
    """The attribute probe's trainable head, its optimiser, and the hook that keeps its block's tokens."""

    head: AttributeHead
    optimizer: torch.optim.Optimizer
    block: BlockOutput


@dataclasses.dataclass
class PixelTarget:
    """What the pixel loss compares with: the frozen VAE, the batch's uint8 clips [B, 3, T, H, W], and its object
    masks [B, T, H, W] with their weight (None: unweighted L1). Only the rows the loss uses are converted."""

    vae: torch.nn.Module
    video: torch.Tensor
    objects: torch.Tensor | None = None
    object_weight: float = 0.0


def pixel_loss(x0_pred: torch.Tensor, pixels: PixelTarget, rows: torch.Tensor, device: torch.device,
               amp: torch.dtype | None) -> torch.Tensor:
    """L1 + finite-difference L1 (both weighted) between the decode of predicted scaled latents [b, F, C, h, w] and
    the batch's clips `rows`. Gradients reach x0_pred through the decoder, whose weights stay frozen."""
    z = (x0_pred / pixels.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
    with autocast(device, amp):
        video = pixels.vae.decode(z).float()
    target = to_model_range(pixels.video[rows.to(pixels.video.device)], device)
    weights = None
    if pixels.objects is not None:
        weights = pixel_object_weights(pixels.objects[rows.to(pixels.objects.device)].to(device), pixels.object_weight)
    return weighted_l1(video, target, weights) + finite_difference_l1(video, target, weights)


@torch.no_grad()
def shape_negatives(cfg: DiTTrainConfig, step: int, batch: dict, text_encoder: TextEncoder
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states of the batch's shape-swapped captions, and which samples take part: those with a swap whose
    true caption was not dropped this step (a dropped caption has nothing to contrast)."""
    swapped = list(batch["swapped_caption"])
    valid = torch.tensor([bool(c) and not d for c, d in zip(swapped, dropped_captions(cfg, step, len(swapped)))])
    states = text_encoder(swapped)
    return states, valid.to(states.device)


def latent_object_weights(objects: torch.Tensor, vae_config, weight: float) -> torch.Tensor:
    """Object masks [B, T, H, W] (bool) -> loss weights [B, F, 1, h, w] on the latent grid: 1 + weight where a latent
    cell covers an object in any of its frames (frame 0 alone, then groups of temporal_compression_ratio frames, as
    the causal VAE encodes them) or borders one (3x3 dilation: an edge blurred by motion spills into neighbours)."""
    r, s = vae_config.temporal_compression_ratio, vae_config.spatial_compression_ratio
    m = objects.float()
    latent_num_frames(m.shape[1], r)  # raises, naming the valid counts, unless T = r k + 1
    first = F.max_pool2d(m[:, :1], s)  # [B, 1, h, w]
    rest = F.max_pool3d(m[:, 1:].unsqueeze(1), (r, s, s)).squeeze(1)  # [B, F - 1, h, w]
    cells = torch.cat([first, rest], dim=1)
    cells = F.max_pool2d(cells, 3, stride=1, padding=1)
    return (1.0 + weight * cells).unsqueeze(2)


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """[B] losses: each sample's (weighted) MSE, as weighted_mse / F.mse_loss compute it over the whole batch."""
    err = (pred - target).square().flatten(1)
    if weights is None:
        return err.mean(dim=1)
    w = weights.expand_as(pred).flatten(1)
    return (w * err).sum(dim=1) / w.sum(dim=1)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * (pred - target)^2) / sum(w) over every element, w broadcast over channels; equals the plain MSE when
    all weights are equal."""
    w = weights.expand_as(pred)
    return (w * (pred - target).square()).sum() / w.sum()


@torch.no_grad()
def sample_videos(cfg: DiTTrainConfig, components: Components, prompts: list[str], device: torch.device,
                  amp: torch.dtype | None) -> torch.Tensor:
    """EMA samples [N, 3, T, H, W] in [-1, 1] for `prompts`: DDIM, CFG against "", fixed seed."""
    config = components.transformer.config
    guided = cfg.sample_guidance > 1.0
    context = encode_prompts(components, prompts, [""] * len(prompts), guided)
    spatial = components.vae.config.spatial_compression_ratio
    shape = (len(prompts), latent_num_frames(cfg.num_frames), config.out_channels, cfg.height // spatial,
             cfg.width // spatial)
    generator = torch.Generator("cpu").manual_seed(cfg.sample_seed)
    latents = initial_noise(shape, generator, device, torch.float32)
    model_fn = None
    if cfg.task_mix:  # text-to-video samples: empty context at the base frame rate
        empty = torch.zeros(shape[:2], device=device)

        def model_fn(x: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            blank = torch.zeros_like(x)
            return components.transformer(model_input(x, blank, empty[:1].expand(x.shape[0], -1)), c, t,
                                          ofs=cfg.base_fps)
    with autocast(device, amp):
        latents = denoise(components, latents, context, cfg.sample_steps, cfg.sample_guidance, "ddim",
                          generator=generator, progress=False, model_fn=model_fn)
    return decode(components, latents.float()).float()


def write_samples(cfg: DiTTrainConfig, step: int, components: Components, out: Path, logger: MetricLogger,
                  device: torch.device, amp: torch.dtype | None) -> None:
    prompts = list(cfg.sample_prompts)
    if not prompts:
        return
    videos = sample_videos(cfg, components, prompts, device, amp)
    sheet = np.concatenate([contact_sheet(v.transpose(0, 1).cpu(), cols=8) for v in videos], axis=0)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text("".join(f"{i}: {p}\n" for i, p in enumerate(prompts)))
    Image.fromarray(sheet).save(folder / f"ema_{step_dir_name(step)}.png")
    logger.image(step, "samples/ema", sheet)


def export(cfg: DiTTrainConfig, components: Components) -> Path:
    folder = Path(cfg.out_dir) / "export"
    save_pretrained(components, folder, dtype=export_dtype(cfg.export_dtype))
    print(f"exported the EMA transformer with its VAE, text encoder and DDIM scheduler to {folder}")
    return folder


def main(config_path: str | None, overrides: list[str]) -> Path:
    from vidfusion.training.config import load_config

    return train(load_config(DiTTrainConfig, config_path, overrides))
