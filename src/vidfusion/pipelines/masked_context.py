"""Masked context conditioning: one model for text-to-video, image-to-video, extension and interpolation.

This is Video LDM's prediction from context frames (seed 003) on our CogVideoX-architecture transformer. The
transformer's input is [noisy latents (C), context latents (C), mask (1)] on the channel axis, 2C + 1 channels in all,
and a frame-rate label goes through the ofs embedding (the extra timestep-like embedding of CogVideoX 1.5). Which task
is asked for is said by the context alone:

    text-to-video   no frame known
    image-to-video  frame 0 known
    extension       the first K frames known (the end of the previous chunk)
    interpolation   every 4th frame known, at 4x the frame rate

Decisions worth knowing:
- Known frames are given per *pixel* frame. The causal VAE packs frame 0 into latent 0 and frames 4j-3..4j into
  latent j, so the mask channel of latent j is the fraction of its pixel frames that are known: 1 inside a known
  prefix, 1/4 for interpolation key frames (one per latent), 0 where nothing is known. This lets key frames that do
  not line up with latent frames condition the model at all.
- The context latents are the VAE encoding (posterior mean, scaled like the video latents) of the known frames with
  the gaps filled by holding the previous known frame, then zeroed where the mask is 0. Holding keeps the encoder's
  input a plausible video; the mask says which parts are real. Because the encoder is causal, the context latents of
  a known prefix are (up to the encoder's frame batching) the first latents of the full clip.
- No context = zero latents and a zero mask, which is what context dropout shows the model in training, so context
  guidance (Video LDM) works: v = v(t, c) + (s_text - 1)(v(t, c) - v(0, c)) + (s_ctx - 1)(v(t, c) - v(t, 0)), with
  one model call per active branch (batched).
- In training the context frames get pixel noise (sigma = exp(N(-3, 0.5)), the CogVideoX I2V recipe) before encoding,
  so the model does not copy the context's VAE artefacts and copes with generated context in long rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from vidfusion.diffusion.freeinit import freeinit_sample
from vidfusion.diffusion.guidance import dynamic_cfg_scale
from vidfusion.diffusion.prediction import add_noise
from vidfusion.diffusion.samplers import make_sampler, timesteps_from
from vidfusion.diffusion.schedule import alphas_cumprod, inference_timesteps
from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import Components
from vidfusion.models.transformer import TransformerConfig
from vidfusion.models.vae import CogVideoXVAE
from vidfusion.pipelines.text_to_video import (
    FALLBACK_DEFAULTS,
    VAE_SPATIAL,
    ModelFn,
    ModelFnWrapper,
    T2VRequest,
    check_request,
    decode,
    encode_prompts,
    initial_noise,
    latent_frames_for,
)

DEFAULT_FPS = 8.0


def is_context_config(transformer_config: TransformerConfig, latent_channels: int) -> bool:
    """[noisy, context, mask] input: 2C + 1 channels (readable from config.json before any weights load)."""
    return transformer_config.in_channels == 2 * latent_channels + 1


def is_context_model(components: Components) -> bool:
    return is_context_config(components.transformer.config, components.vae.config.latent_channels)


def check_context_model(components: Components, what: str) -> None:
    if not is_context_model(components):
        c = components.vae.config.latent_channels
        raise VidFusionError(
            f"{what} needs a masked-context model (2 x {c} + 1 = {2 * c + 1} input channels: noisy latents, context, "
            f"mask) but this transformer takes {components.transformer.config.in_channels}; use the shipped tiny "
            f"model or one trained with task_mix (vidfusion train dit ... task_mix=...)"
        )
    if components.transformer.config.ofs_embed_dim is None:
        raise VidFusionError(f"{what} needs a model with a frame-rate (ofs) embedding; this transformer has none")


def latent_mask(known: torch.Tensor, temporal: int = 4) -> torch.Tensor:
    """known [B, T] bool per pixel frame (T = temporal * k + 1) -> [B, k + 1] float: the known share of each latent."""
    if (known.shape[1] - 1) % temporal:
        raise VidFusionError(f"{known.shape[1]} frames is not {temporal}k + 1; use e.g. 17 frames")
    known = known.float()
    rest = known[:, 1:].unflatten(1, (-1, temporal)).mean(dim=-1)
    return torch.cat([known[:, :1], rest], dim=1)


def hold_fill(video: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """video [B, C, T, H, W], known [B, T] -> every unknown frame replaced by the last known frame before it (by the
    first known frame before that). Rows with no known frame come back unchanged."""
    b, _, t = video.shape[:3]
    index = torch.arange(t, device=video.device).expand(b, t)
    last = torch.cummax(torch.where(known, index, -1), dim=1).values
    first = torch.where(known, index, t).min(dim=1).values.clamp(max=t - 1)
    source = torch.where(last < 0, first[:, None], last)
    source = torch.where(known.any(dim=1, keepdim=True), source, index)
    return torch.gather(video, 2, source[:, None, :, None, None].expand_as(video))


@torch.no_grad()
def encode_context(
    vae: CogVideoXVAE, video: torch.Tensor, known: torch.Tensor, noise_sigmas: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context latents [B, F, C, h, w] (scaled, zero where unknown) and the mask [B, F] for `video` [B, 3, T, H, W]
    in [-1, 1] with `known` [B, T] frames. `noise_sigmas` [B] adds pixel noise first (training only)."""
    mask = latent_mask(known, vae.config.temporal_compression_ratio)
    param = next(vae.parameters())
    b, _, _, h, w = video.shape
    c, s = vae.config.latent_channels, vae.config.spatial_compression_ratio
    latents = torch.zeros(b, mask.shape[1], c, h // s, w // s, device=video.device)
    rows = known.any(dim=1).nonzero().flatten()
    if rows.numel():
        filled = hold_fill(video[rows].float(), known[rows])
        if noise_sigmas is not None:
            device = generator.device if generator is not None else filled.device
            noise = torch.randn(filled.shape, generator=generator, device=device).to(filled.device)
            filled = filled + noise_sigmas.to(rows.device)[rows].to(filled.device).view(-1, 1, 1, 1, 1) * noise
        z = vae.encode(filled.to(param.dtype)).mode().float() * vae.config.scaling_factor
        latents[rows] = z.permute(0, 2, 1, 3, 4).to(latents.device)
    mask = mask.to(latents.device)
    return latents * (mask > 0).view(b, -1, 1, 1, 1), mask


def model_input(x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[noisy x, context, mask] on the channel axis: [B, F, 2C + 1, h, w]."""
    b, f, _, h, w = x.shape
    m = mask.to(x.dtype).view(b, f, 1, 1, 1).expand(b, f, 1, h, w)
    return torch.cat([x, context.to(x.dtype), m], dim=2)


def generation_fps(components: Components) -> float:
    """The frame rate the model makes videos at (its frame-rate label for generation): the model folder's, else 8."""
    return float(components.defaults.get("fps", FALLBACK_DEFAULTS["fps"]))


def empty_context_model_fn(components: Components) -> ModelFn:
    """model_fn(x, text, t) of a masked-context model with nothing known: zero context and mask at the generation
    frame rate, what text-to-video samples with. For callers that batch their own latents (benchmarks)."""
    transformer, fps = components.transformer, generation_fps(components)

    def model_fn(x: torch.Tensor, text: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        empty = torch.zeros_like(x)
        return transformer(model_input(x, empty, empty[:, :, 0, 0, 0]), text, t, ofs=fps)

    return model_fn


@dataclass
class Context:
    """What a masked-context generation is conditioned on: frames [T, 3, H, W] in [-1, 1] (only the known ones are
    read), known [T] bool, and the frame rate of the video to make."""

    frames: torch.Tensor | None
    known: torch.Tensor | None
    fps: float = DEFAULT_FPS
    guidance_scale: float = 1.0  # context guidance; 1 = off (one model call fewer)
    # Pixel noise (std, [-1, 1] scale) on the known frames before encoding, as every training sample had (sigma =
    # exp(N(-3, 0.5)), median 0.05). 0 = clean frames, the I2V recipe; long videos can use it against drift.
    noise_sigma: float = 0.0
    # Start from these frames [T, 3, H, W] in [-1, 1] noised to `start_timestep` instead of from pure noise, running
    # only the steps from there (SDEdit). Interpolation starts from the linear blend of its keys, whose static pixels
    # are exact, so the model has only the moving ones left to redraw (pipelines/interpolation.py).
    start_frames: torch.Tensor | None = None
    start_timestep: int | None = None


@torch.no_grad()
def denoise_with_context(
    components: Components, latents: torch.Tensor, text: torch.Tensor, context_latents: torch.Tensor,
    mask: torch.Tensor, fps: float, num_steps: int, guidance_scale: float, context_scale: float, sampler_name: str,
    dynamic_cfg: bool = False, generator: torch.Generator | None = None, progress: bool | str = True,
    model_fn: ModelFn | None = None, start_timestep: int | None = None,
) -> torch.Tensor:
    """The sampling loop with text and context guidance. `text` is [negative; positive] when guidance_scale > 1.
    `start_timestep` as in text_to_video.denoise (FreeInit's later passes).

    `model_fn(x, texts, t)` replaces the plain transformer call (which passes ofs=fps). It gets all active branches
    in one batch of 1 to 3, so a CFG-parallel wrapper fits only a batch of exactly 2 (text guidance on, context
    guidance off); `vidfusion generate` uses sequence parallel instead, which lives inside the transformer and
    splits any batch."""
    transformer = components.transformer
    model_fn = model_fn or (lambda x, c, t: transformer(x, c, t, ofs=fps))
    text_guided = guidance_scale > 1.0
    context_guided = context_scale != 1.0 and bool(mask.any())
    no_context, no_mask = torch.zeros_like(context_latents), torch.zeros_like(mask)
    # Branches, in batch order: [negative text + context], positive text + context, [positive text, no context].
    positive = text[1:] if text_guided else text
    texts = torch.cat([text] + ([positive] if context_guided else []))
    contexts = torch.cat([context_latents] * (2 if text_guided else 1) + ([no_context] if context_guided else []))
    masks = torch.cat([mask] * (2 if text_guided else 1) + ([no_mask] if context_guided else []))
    n = texts.shape[0]
    sampler = make_sampler(sampler_name, components.schedule, num_steps)
    timesteps = timesteps_from(sampler, start_timestep)
    bar = tqdm(total=len(timesteps), desc=progress if isinstance(progress, str) else "sampling",
               disable=progress is False, leave=False, unit="step")
    dtype = latents.dtype
    for t in timesteps:
        x = model_input(latents.expand(n, -1, -1, -1, -1), contexts, masks)
        v = model_fn(x, texts, t.expand(n).to(x.device)).float()
        parts = list(v.chunk(n))
        v_uncond = parts.pop(0) if text_guided else None
        v_full = parts.pop(0)
        guided = v_full
        if text_guided:
            scale = dynamic_cfg_scale(guidance_scale, int(t), num_steps) if dynamic_cfg else guidance_scale
            guided = guided + (scale - 1.0) * (v_full - v_uncond)
        if context_guided:
            guided = guided + (context_scale - 1.0) * (v_full - parts.pop(0))
        latents, _ = sampler.step(guided, t, latents, generator=generator)
        latents = latents.to(dtype)
        bar.update()
    bar.close()
    return latents


def generate_with_context(
    components: Components, request: T2VRequest, context: Context, progress: bool | str = True,
    wrap_model_fn: ModelFnWrapper | None = None,
) -> torch.Tensor:
    """One video [T, 3, H, W] in [-1, 1] (float32, CPU), conditioned on the prompt and the known frames.

    wrap_model_fn gets the loop's model_fn(x, texts, t) (see denoise_with_context for what CFG parallel needs)."""
    check_context_model(components, "generation from context frames")
    conditioned = context.known is not None and bool(context.known.any())
    frames, height, width = check_request(components.transformer.config, request, allow_empty_prompt=conditioned)
    transformer = components.transformer
    device, dtype = next(transformer.parameters()).device, next(transformer.parameters()).dtype
    latent_frames, extra = latent_frames_for(components, frames)
    if extra:
        raise VidFusionError("masked-context models use patch_size_t = None (CogVideoX 1.0 patching); this one does not")
    known = context.known if context.known is not None else torch.zeros(frames, dtype=torch.bool)
    if known.shape != (frames,):
        raise VidFusionError(f"the context marks {known.shape[0]} frames but the video has {frames}; "
                             f"give one known flag per output frame")
    pixels = context.frames
    if pixels is None:
        if known.any():
            raise VidFusionError("known frames were marked but no frames were given; pass the context frames")
        pixels = torch.zeros(frames, 3, height, width)
    if tuple(pixels.shape) != (frames, 3, height, width):
        raise VidFusionError(f"context frames have shape {list(pixels.shape)}; expected [{frames}, 3, {height}, "
                             f"{width}] (resize the input to the model's size)")
    guided = request.guidance_scale > 1.0
    text = encode_prompts(components, [request.prompt], [request.negative_prompt or ""], guided).to(dtype)
    video = pixels.transpose(0, 1)[None].to(device)
    sigmas, noise_generator = None, None
    if context.noise_sigma > 0:
        # Its own generator, so the initial noise of the sample is the same with and without context noise.
        sigmas = torch.tensor([context.noise_sigma])
        noise_generator = torch.Generator("cpu").manual_seed(request.seed + 1_000_003)
    context_latents, mask = encode_context(components.vae, video, known[None].to(device), sigmas, noise_generator)
    context_latents, mask = context_latents.to(dtype), mask.to(dtype)

    generator = torch.Generator("cpu").manual_seed(request.seed)
    shape = (1, latent_frames, transformer.config.out_channels, height // VAE_SPATIAL, width // VAE_SPATIAL)
    latents = initial_noise(shape, generator, device, dtype)
    sampler = request.sampler or components.default_sampler
    model_fn = None
    if wrap_model_fn is not None:
        model_fn = wrap_model_fn(lambda x, c, t: transformer(x, c, t, ofs=context.fps))

    def sample(x: torch.Tensor, num_steps: int, label: str, start: int | None = None) -> torch.Tensor:
        return denoise_with_context(components, x, text, context_latents, mask, context.fps, num_steps,
                                    request.guidance_scale, context.guidance_scale, sampler, request.dynamic_cfg,
                                    generator, label if progress else False, model_fn, start)

    label = progress if isinstance(progress, str) else "sampling"
    if context.start_frames is not None:
        if request.freeinit is not None:
            raise VidFusionError("a start video (SDEdit) and FreeInit both set the initial latents; use one of them")
        start = start_latents(components, context, frames, height, width, device, request.num_steps)
        latents = add_noise(alphas_cumprod(components.schedule), start, latents.float(),
                            int(context.start_timestep)).to(dtype)
        latents = sample(latents, request.num_steps, label, context.start_timestep)
    elif request.freeinit is None:
        latents = sample(latents, request.num_steps, label)
    else:
        latents = freeinit_sample(sample, latents, components.schedule, request.freeinit, request.num_steps, generator)
    return decode(components, latents)[0].transpose(0, 1).float().cpu()


def start_latents(components: Components, context: Context, frames: int, height: int, width: int, device,
                  num_steps: int) -> torch.Tensor:
    """The scaled posterior mode [1, F, C, h, w] of `context.start_frames`; checks them and their timestep, which
    must be on the `num_steps` sampling grid (`freeinit.entry_timestep` finds one)."""
    start = context.start_frames
    if tuple(start.shape) != (frames, 3, height, width):
        raise VidFusionError(f"start frames have shape {list(start.shape)}; expected [{frames}, 3, {height}, {width}]")
    grid = inference_timesteps(components.schedule, num_steps)
    if context.start_timestep is None or int(context.start_timestep) not in grid.tolist():
        raise VidFusionError(f"start timestep {context.start_timestep} is not on the {num_steps}-step grid "
                             f"({grid.tolist()[:4]} ...); pick one with freeinit.entry_timestep")
    every = torch.ones(1, frames, dtype=torch.bool, device=device)
    return encode_context(components.vae, start.transpose(0, 1)[None].to(device), every)[0]


def first_frame_context(image: torch.Tensor, num_frames: int, fps: float = DEFAULT_FPS,
                        guidance_scale: float = 1.0) -> Context:
    """Image-to-video as a context: image [3, H, W] in [-1, 1] known at frame 0."""
    frames = image[None].expand(num_frames, -1, -1, -1).clone()
    known = torch.zeros(num_frames, dtype=torch.bool)
    known[0] = True
    return Context(frames, known, fps, guidance_scale)
