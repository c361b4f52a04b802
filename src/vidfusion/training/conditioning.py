"""Training-time image conditioning for CogVideoX-style image-to-video (the CogVideoX1.5-I2V recipe, seed 000).

The conditioning latents are built exactly as pipelines/image_to_video.py builds them at inference (same encode,
same checkpoint scale, image at latent frame 0 and zeros after it), plus what only training does:

- noise augmentation: each sample's conditioning image gets Gaussian noise with sigma = exp(N(-3, 0.5)) in [-1, 1]
  pixel space before VAE encoding (median sigma 0.05, about 6/255), so the model does not rely on pixel-exact latents;
  inference encodes the clean image;
- image dropout: the image latents of a sample are zeroed with probability p (5% in the recipe), so the model keeps a
  text-only path;
- first-frame duplication: with patch_size_t = 2 and an odd latent count, the first *video* latent is copied in front
  (81 frames -> 21 latents -> 22, frames 0 and 1 equal) and the loss covers all latent frames, copy included. The
  padded image latents then have the padded count. After sampling the front frames are dropped again.

Every random draw takes an explicit generator, drawn on the generator's device, so a seed fixes the batch.
"""

from __future__ import annotations

import torch

from vidfusion.models.vae import CogVideoXVAE
from vidfusion.pipelines.image_to_video import encode_image_latents, pad_image_latents

IMAGE_NOISE_LOG_MEAN = -3.0
IMAGE_NOISE_LOG_STD = 0.5
IMAGE_DROPOUT = 0.05


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device)


def image_noise_sigmas(
    batch: int, generator: torch.Generator | None = None,
    log_mean: float = IMAGE_NOISE_LOG_MEAN, log_std: float = IMAGE_NOISE_LOG_STD,
) -> torch.Tensor:
    """Per-sample pixel-noise levels [batch], sigma = exp(N(log_mean, log_std)), float32 on the generator's device."""
    device = generator.device if generator is not None else "cpu"
    return torch.exp(log_mean + log_std * torch.randn(batch, generator=generator, device=device))


def augment_images(
    images: torch.Tensor, generator: torch.Generator | None = None,
    log_mean: float = IMAGE_NOISE_LOG_MEAN, log_std: float = IMAGE_NOISE_LOG_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, 3, ...] in [-1, 1] -> (images + sigma_b * noise, sigmas [B]). Not clamped, as in the recipe."""
    sigmas = image_noise_sigmas(images.shape[0], generator, log_mean, log_std).to(images.device)
    noise = _randn(tuple(images.shape), generator, images)
    scale = sigmas.view(-1, *[1] * (images.ndim - 1))
    return (images.float() + scale * noise).to(images.dtype), sigmas


def drop_images(
    image_latents: torch.Tensor, p: float = IMAGE_DROPOUT, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the image latents [B, ...] of each sample with probability p -> (latents, kept [B] bool)."""
    device = generator.device if generator is not None else "cpu"
    kept = (torch.rand(image_latents.shape[0], generator=generator, device=device) >= p).to(image_latents.device)
    return image_latents * kept.view(-1, *[1] * (image_latents.ndim - 1)).to(image_latents.dtype), kept


@torch.no_grad()
def first_frame_latents(
    vae: CogVideoXVAE, video: torch.Tensor, num_latent_frames: int, generator: torch.Generator | None = None,
    augment: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning latents [B, num_latent_frames, C, h, w] from each clip's first frame, and the noise sigmas [B].

    video [B, 3, T, H, W] in [-1, 1]. num_latent_frames is the count the transformer sees (after any duplication).
    With augment=False the clean frame is encoded and the sigmas are zero. Draw order: sigmas, pixel noise, posterior.
    """
    images = video[:, :, 0]
    sigmas = torch.zeros(images.shape[0], device=images.device)
    if augment:
        images, sigmas = augment_images(images, generator)
    return pad_image_latents(encode_image_latents(vae, images, generator), num_latent_frames), sigmas


def frames_to_add(num_latent_frames: int, patch_size_t: int | None) -> int:
    """How many latent frames go in front so that patch_size_t divides the count (0 for CogVideoX 1.0)."""
    return (patch_size_t - num_latent_frames % patch_size_t) % patch_size_t if patch_size_t else 0


def duplicate_first_frame(latents: torch.Tensor, patch_size_t: int | None) -> tuple[torch.Tensor, int]:
    """Video latents [B, F, C, h, w] -> (latents with the first frame repeated in front as needed, frames added)."""
    extra = frames_to_add(latents.shape[1], patch_size_t)
    if extra == 0:
        return latents, 0
    return torch.cat([latents[:, :1].expand(-1, extra, -1, -1, -1), latents], dim=1), extra


def drop_duplicated_frames(latents: torch.Tensor, extra: int) -> torch.Tensor:
    """The inverse of duplicate_first_frame."""
    return latents[:, extra:]
