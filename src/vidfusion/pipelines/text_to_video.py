"""Text-to-video: prompt -> text-encoder states -> noise -> sampling loop -> VAE decode -> frames.

It follows diffusers' CogVideoXPipeline step for step (the parity test compares the two), with the loop split into
functions that the other pipelines (FreeInit, image-to-video, extension) reuse:

- `check_request` turns impossible sizes into one-line errors before any model work;
- `encode_prompts` gives [negative; positive] states for classifier-free guidance;
- `initial_noise` draws on a CPU generator so a seed gives the same video on every device;
- `denoise` is the sampling loop (guidance, dynamic CFG, sampler state);
- `decode` unscales latents and runs the VAE.

`denoise` calls the transformer through `model_fn(x, context, t)`; the pipelines take `wrap_model_fn`, which gets
their own model_fn and returns the one to sample with (multi-GPU: `functools.partial(vidfusion.parallel.parallelize,
transformer, state)`). Without it they sample exactly as before.

`T2VRequest.freeinit` (None: off) runs the sampling loop through `diffusion.freeinit.freeinit_sample`, which calls
`denoise` once per pass; pass 0 is the plain loop on the same noise, so one pass gives the plain result bit for bit.

CogVideoX 1.5 patches two latent frames at a time: when the latent count is odd the reference samples one extra
latent frame at the front and drops it before decoding; `latent_frames_for` and `decode` do the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from vidfusion.diffusion.freeinit import FreeInitSettings, check_settings, freeinit_sample
from vidfusion.diffusion.guidance import cfg, dynamic_cfg_scale
from vidfusion.diffusion.samplers import check_sampler_name, make_sampler, timesteps_from
from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import Components
from vidfusion.models.transformer import TransformerConfig
from vidfusion.models.vae import latent_num_frames

VAE_SPATIAL = 8
# CogVideoX's own sampling settings, used when neither the user nor the model folder names one.
FALLBACK_DEFAULTS = {"num_steps": 50, "guidance_scale": 6.0, "fps": 8, "context_guidance": 1.0}

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, context, t) -> v
ModelFnWrapper = Callable[[ModelFn], ModelFn]


def sampling_default(model_defaults: dict, key: str, value=None):
    """`value` if the user gave one, else the model folder's tuned default, else CogVideoX's."""
    return value if value is not None else model_defaults.get(key, FALLBACK_DEFAULTS[key])


@dataclass
class T2VRequest:
    prompt: str
    negative_prompt: str = ""
    num_frames: int | None = None  # None: the model's trained length
    height: int | None = None
    width: int | None = None
    num_steps: int = 50
    guidance_scale: float = 6.0
    dynamic_cfg: bool = False
    sampler: str | None = None  # None: the sampler named by the checkpoint's scheduler
    seed: int = 0
    freeinit: FreeInitSettings | None = None  # None: plain sampling


def resolve_size(config: TransformerConfig, request: T2VRequest) -> tuple[int, int, int]:
    frames = request.num_frames or config.sample_frames
    height = request.height or config.sample_height * VAE_SPATIAL
    width = request.width or config.sample_width * VAE_SPATIAL
    return frames, height, width


def check_request(config: TransformerConfig, request: T2VRequest,
                  allow_empty_prompt: bool = False) -> tuple[int, int, int]:
    """Validate against the transformer's config alone, so bad input fails before any weights load.

    Returns (frames, height, width) with the model's defaults filled in. An empty prompt is allowed only where frames
    condition the video (interpolation, extension): the models are trained with 10% empty captions."""
    if not allow_empty_prompt and (not request.prompt or not request.prompt.strip()):
        raise VidFusionError('the prompt is empty; describe the video, e.g. vidfusion generate "a red circle moving right"')
    frames, height, width = resolve_size(config, request)
    latent_num_frames(frames)  # 4k+1, or an error that names the nearest valid counts
    multiple = VAE_SPATIAL * config.patch_size
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            fix = max(multiple, round(value / multiple) * multiple)
            raise VidFusionError(f"--{name} {value} is not a multiple of {multiple}; use {fix}")
    if request.num_steps < 1:
        raise VidFusionError(f"--steps {request.num_steps} must be at least 1")
    if request.sampler is not None:
        check_sampler_name(request.sampler)
    if request.freeinit is not None:
        check_settings(request.freeinit)
    return frames, height, width


def latent_frames_for(components: Components, num_frames: int) -> tuple[int, int]:
    """(latent frames to sample, extra frames prepended for patch_size_t)."""
    latent = latent_num_frames(num_frames)
    patch_t = components.transformer.config.patch_size_t
    extra = (patch_t - latent % patch_t) % patch_t if patch_t else 0
    return latent + extra, extra


@torch.no_grad()
def encode_prompts(components: Components, prompts: list[str], negatives: list[str], guided: bool) -> torch.Tensor:
    if components.text_encoder is None:
        raise VidFusionError("this model was loaded without its text encoder; load it with text_encoder=True")
    context = components.text_encoder(prompts)
    if guided:
        context = torch.cat([components.text_encoder(negatives), context])
    return context


def initial_noise(shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Drawn on the (CPU) generator's device, as diffusers' randn_tensor does, then moved: a seed gives the same
    video on every device."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


@torch.no_grad()
def denoise(
    components: Components,
    latents: torch.Tensor,
    context: torch.Tensor,
    num_steps: int,
    guidance_scale: float,
    sampler_name: str,
    dynamic_cfg: bool = False,
    generator: torch.Generator | None = None,
    progress: bool | str = True,
    model_fn: ModelFn | None = None,
    start_timestep: int | None = None,
) -> torch.Tensor:
    """Run the sampler from `latents` [B, F, C, h, w]. `context` is [negative; positive] when guidance_scale > 1.

    `model_fn(x, context, t)` replaces the plain transformer call (image conditioning adds channels there).
    `start_timestep`: `latents` are noised to that level, and only the steps at or below it run (None: all).
    """
    transformer = components.transformer
    model_fn = model_fn or (lambda x, c, t: transformer(x, c, t))
    guided = guidance_scale > 1.0
    sampler = make_sampler(sampler_name, components.schedule, num_steps)
    timesteps = timesteps_from(sampler, start_timestep)
    bar = tqdm(total=len(timesteps), desc=progress if isinstance(progress, str) else "sampling",
               disable=progress is False, leave=False, unit="step")
    dtype = latents.dtype
    for t in timesteps:
        x = torch.cat([latents] * 2) if guided else latents
        v = model_fn(x, context, t.expand(x.shape[0]).to(x.device)).float()
        if guided:
            scale = dynamic_cfg_scale(guidance_scale, int(t), num_steps) if dynamic_cfg else guidance_scale
            v_uncond, v_cond = v.chunk(2)
            v = cfg(v_uncond, v_cond, scale)
        latents, _ = sampler.step(v, t, latents, generator=generator)
        latents = latents.to(dtype)
        bar.update()
    bar.close()
    return latents


@torch.no_grad()
def decode(components: Components, latents: torch.Tensor, extra_frames: int = 0) -> torch.Tensor:
    """[B, F, C, h, w] scaled latents -> [B, 3, T, H, W] video in [-1, 1]."""
    latents = latents[:, extra_frames:]
    z = latents.permute(0, 2, 1, 3, 4) / components.vae.config.scaling_factor
    return components.vae.decode(z).clamp(-1, 1)


def text_to_video(
    components: Components, request: T2VRequest, progress: bool = True, wrap_model_fn: ModelFnWrapper | None = None
) -> torch.Tensor:
    """One video [T, 3, H, W] in [-1, 1] (float32, on CPU). wrap_model_fn: see the module docstring."""
    from vidfusion.pipelines.masked_context import Context, generate_with_context, generation_fps, is_context_model

    if is_context_model(components):  # a masked-context model makes text-to-video from an empty context
        context = Context(None, None, fps=generation_fps(components))
        return generate_with_context(components, request, context, progress, wrap_model_fn)
    frames, height, width = check_request(components.transformer.config, request)
    transformer = components.transformer
    device, dtype = next(transformer.parameters()).device, next(transformer.parameters()).dtype
    guided = request.guidance_scale > 1.0
    context = encode_prompts(components, [request.prompt], [request.negative_prompt or ""], guided).to(dtype)
    latent_frames, extra = latent_frames_for(components, frames)
    shape = (1, latent_frames, transformer.config.out_channels, height // VAE_SPATIAL, width // VAE_SPATIAL)
    # One CPU generator for the initial noise and then the SDE sampler's draws, in the reference pipeline's order
    # (FreeInit's fresh noise comes from it too, between passes).
    generator = torch.Generator("cpu").manual_seed(request.seed)
    latents = initial_noise(shape, generator, device, dtype)
    sampler = request.sampler or components.default_sampler

    def model_fn(x: torch.Tensor, ctx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return transformer(x, ctx, t)

    if wrap_model_fn is not None:
        model_fn = wrap_model_fn(model_fn)

    def sample(x: torch.Tensor, num_steps: int, label: str, start: int | None = None) -> torch.Tensor:
        return denoise(components, x, context, num_steps, request.guidance_scale, sampler, request.dynamic_cfg,
                       generator, label if progress else False, model_fn=model_fn, start_timestep=start)

    if request.freeinit is None:
        latents = sample(latents, request.num_steps, "sampling")
    else:
        latents = freeinit_sample(sample, latents, components.schedule, request.freeinit, request.num_steps, generator)
    video = decode(components, latents, extra)
    return video[0].transpose(0, 1).float().cpu()
