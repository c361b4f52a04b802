"""Image-to-video for CogVideoX I2V checkpoints (5B-I2V, 1.5-5B-I2V): image + prompt -> frames that start from the image.

The image enters as a latent, not through the text stream: it is resized, encoded by the VAE, scaled, zero-padded to
the latent frame count and concatenated with the noisy latents on the channel axis at every step (so the transformer
takes 2 x 16 = 32 channels). Both halves of a guided batch see the same image latent; only the text differs.
Everything else (prompt encoding, noise, the sampling loop, decoding) is text_to_video's, and the parity test compares
the whole path with diffusers' CogVideoXImageToVideoPipeline.

Decisions worth knowing:
- The image latent is a posterior *sample*, drawn from the seeded generator before the initial noise, as the reference
  pipeline does; the same seed therefore gives the same video in both.
- The image is resized straight to the target size with Lanczos (no crop, aspect ratio not kept), as the reference does.
- Scaling follows the checkpoint: 5B-I2V multiplies the image latent by the VAE's scaling_factor like the video latents;
  1.5 checkpoints set `invert_scale_latents` and divide by it instead, because that is how they were trained.
- CogVideoX 1.5 patches two latent frames at a time. For an odd latent count the sampler runs on one extra latent frame
  at the front, which is dropped before decoding (`latent_frames_for` / `decode` of text_to_video). The image latent
  sits at frame 0, i.e. on the extra frame, followed by zeros: that is what the reference pipeline computes (its copy of
  the first image-latent frame is empty once the count is already even), and it matches training, where the first
  video latent is duplicated in front and the image latent is concatenated at frame 0 (training/conditioning.py).
- 1.5-I2V gets ofs = 2.0 on its extra embedding, as its pipeline passes. 5B-I2V's learned position table fixes the
  latent size, so other sizes are refused before any model work.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from vidfusion.diffusion.freeinit import freeinit_sample
from vidfusion.errors import VidFusionError
from vidfusion.io.pretrained import Components
from vidfusion.io.video import read_image
from vidfusion.models.vae import CogVideoXVAE, VAEConfig, latent_num_frames
from vidfusion.pipelines.text_to_video import (
    VAE_SPATIAL,
    ModelFnWrapper,
    T2VRequest,
    check_request,
    decode,
    denoise,
    encode_prompts,
    initial_noise,
    latent_frames_for,
)

# What CogVideoX1.5-I2V's pipeline passes to its ofs embedding.
COGVIDEOX15_OFS = 2.0

ImageLike = np.ndarray | Image.Image | str | os.PathLike


def load_image(image: ImageLike) -> np.ndarray:
    """A path, PIL image or uint8 array -> uint8 RGB [H, W, 3]."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
            raise VidFusionError(
                f"image array has dtype {image.dtype} and shape {image.shape}; pass uint8 RGB [H, W, 3] "
                f"(or the path of a PNG/JPEG/WebP file)"
            )
        return image
    raise VidFusionError(
        f"the image is a {type(image).__name__}, not an image; pass the path of a PNG/JPEG/WebP file or a uint8 "
        f"RGB [H, W, 3] array"
    )


def preprocess_image(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, height, width] float32 in [-1, 1], Lanczos-resized."""
    resized = Image.fromarray(image).resize((width, height), resample=Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(resized).astype(np.float32) / 255.0)
    return (pixels.permute(2, 0, 1)[None] * 2 - 1).contiguous()


def scale_image_latents(z: torch.Tensor, vae_config: VAEConfig) -> torch.Tensor:
    if vae_config.invert_scale_latents:
        return z / vae_config.scaling_factor
    return z * vae_config.scaling_factor


@torch.no_grad()
def encode_image_latents(
    vae: CogVideoXVAE, images: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> scaled image latents [B, 1, C, H/8, W/8] (a posterior sample)."""
    param = next(vae.parameters())
    posterior = vae.encode(images[:, :, None].to(param.device, param.dtype))
    return scale_image_latents(posterior.sample(generator), vae.config).permute(0, 2, 1, 3, 4)


def pad_image_latents(image_latents: torch.Tensor, num_latent_frames: int) -> torch.Tensor:
    """[B, 1, C, h, w] -> [B, num_latent_frames, C, h, w]: the image at frame 0, zeros after it."""
    b, _, c, h, w = image_latents.shape
    zeros = image_latents.new_zeros(b, num_latent_frames - 1, c, h, w)
    return torch.cat([image_latents, zeros], dim=1)


def check_image_to_video_model(components: Components) -> None:
    t_cfg, latent_channels = components.transformer.config, components.vae.config.latent_channels
    if t_cfg.in_channels != 2 * latent_channels:
        raise VidFusionError(
            f"this transformer takes {t_cfg.in_channels} latent channels, not 2 x {latent_channels} (video + image), "
            f"so it is not an image-to-video model; use a -I2V checkpoint (e.g. CogVideoX-5b-I2V) with --image"
        )


def check_image_request(components: Components, request: T2VRequest) -> tuple[int, int, int]:
    """check_request plus what I2V adds; returns (frames, height, width)."""
    config = components.transformer.config
    frames, height, width = check_request(config, request)
    check_image_to_video_model(components)
    if config.use_learned_positional_embeddings:
        table_h, table_w = config.sample_height * VAE_SPATIAL, config.sample_width * VAE_SPATIAL
        if (height, width) != (table_h, table_w):
            raise VidFusionError(
                f"{height}x{width} does not fit this model's learned position table (CogVideoX-5B-I2V style); "
                f"use --height {table_h} --width {table_w}"
            )
        if latent_num_frames(frames) > latent_num_frames(config.sample_frames):
            raise VidFusionError(
                f"{frames} frames is more than this model's learned position table holds; "
                f"use at most {config.sample_frames} frames"
            )
    return frames, height, width


def image_to_video_latents(
    components: Components, request: T2VRequest, image: ImageLike, progress: bool | str = True,
    wrap_model_fn: ModelFnWrapper | None = None,
) -> tuple[torch.Tensor, int]:
    """Sampled latents [1, F, C, h, w] (scaled, with any front frames added for patch_size_t) and that extra count.

    wrap_model_fn gets the model_fn that adds the image latents (so CFG parallel splits the batch before them)."""
    frames, height, width = check_image_request(components, request)
    pixels = preprocess_image(load_image(image), height, width)
    transformer = components.transformer
    device, dtype = next(transformer.parameters()).device, next(transformer.parameters()).dtype
    guided = request.guidance_scale > 1.0
    context = encode_prompts(components, [request.prompt], [request.negative_prompt or ""], guided).to(dtype)
    latent_frames, extra = latent_frames_for(components, frames)

    # One CPU generator, in the reference's order: the image-latent sample, the initial noise, then the SDE sampler.
    generator = torch.Generator("cpu").manual_seed(request.seed)
    image_latents = encode_image_latents(components.vae, pixels, generator).to(device, dtype)
    image_latents = pad_image_latents(image_latents, latent_frames)
    shape = (1, latent_frames, transformer.config.out_channels, height // VAE_SPATIAL, width // VAE_SPATIAL)
    latents = initial_noise(shape, generator, device, dtype)
    ofs = COGVIDEOX15_OFS if transformer.config.ofs_embed_dim else None

    def model_fn(x: torch.Tensor, ctx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = image_latents.expand(x.shape[0], -1, -1, -1, -1)  # the uncond half sees the image too
        return transformer(torch.cat([x, cond], dim=2), ctx, t, ofs=ofs)

    if wrap_model_fn is not None:
        model_fn = wrap_model_fn(model_fn)
    sampler = request.sampler or components.default_sampler

    def sample(x: torch.Tensor, num_steps: int, label: str, start: int | None = None) -> torch.Tensor:
        return denoise(components, x, context, num_steps, request.guidance_scale, sampler, request.dynamic_cfg,
                       generator, label if progress else False, model_fn=model_fn, start_timestep=start)

    if request.freeinit is None:
        return sample(latents, request.num_steps, "sampling"), extra
    # FreeInit re-initialises only the video half; the image latents stay the condition of every pass.
    return freeinit_sample(sample, latents, components.schedule, request.freeinit, request.num_steps, generator), extra


def image_to_video(
    components: Components, request: T2VRequest, image: ImageLike, progress: bool | str = True,
    wrap_model_fn: ModelFnWrapper | None = None,
) -> torch.Tensor:
    """One video [T, 3, H, W] in [-1, 1] (float32, on CPU) whose first frame follows `image`."""
    latents, extra = image_to_video_latents(components, request, image, progress, wrap_model_fn)
    return decode(components, latents, extra)[0].transpose(0, 1).float().cpu()
