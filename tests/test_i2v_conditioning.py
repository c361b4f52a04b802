"""Training-time I2V conditioning: image noise augmentation, image dropout, first-frame conditioning latents and the
CogVideoX1.5 first-latent-frame duplication."""

from types import SimpleNamespace

import pytest
import torch

from vidfusion.models.vae import CogVideoXVAE, latent_num_frames, pixel_num_frames, tiny_random_config
from vidfusion.pipelines.image_to_video import encode_image_latents
from vidfusion.pipelines.text_to_video import latent_frames_for
from vidfusion.training.conditioning import (
    augment_images,
    drop_duplicated_frames,
    drop_images,
    duplicate_first_frame,
    first_frame_latents,
    frames_to_add,
    image_noise_sigmas,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sigma_is_lognormal_minus3_half():
    log_sigma = image_noise_sigmas(200_000, gen(0)).log()
    assert abs(log_sigma.mean().item() + 3.0) < 0.01
    assert abs(log_sigma.std().item() - 0.5) < 0.01
    assert torch.equal(image_noise_sigmas(16, gen(1)), image_noise_sigmas(16, gen(1)))
    assert not torch.equal(image_noise_sigmas(16, gen(1)), image_noise_sigmas(16, gen(2)))


def test_augment_adds_per_sample_noise_of_that_sigma():
    images = torch.rand(6, 3, 64, 64, generator=gen(3)) * 2 - 1
    noisy, sigmas = augment_images(images, gen(4))
    assert noisy.shape == images.shape and sigmas.shape == (6,)
    assert torch.equal(sigmas, image_noise_sigmas(6, gen(4)))  # sigmas are the generator's first draw
    noise = (noisy - images) / sigmas.view(-1, 1, 1, 1)
    assert (noise.flatten(1).std(dim=1) - 1).abs().max() < 0.05  # per sample: the noise has that sample's sigma
    assert noise.mean().abs() < 0.02
    again, _ = augment_images(images, gen(4))
    assert torch.equal(noisy, again)
    other, _ = augment_images(images, gen(5))
    assert not torch.equal(noisy, other)
    # works on video-shaped input too, one sigma per sample
    clip = torch.zeros(2, 3, 5, 8, 8)
    noisy_clip, s = augment_images(clip, gen(6))
    assert torch.allclose(noisy_clip.flatten(1).std(dim=1), s, rtol=0.2)


def test_image_dropout_rate_and_determinism():
    latents = torch.randn(20_000, 2, 4, 2, 2, generator=gen(7)) + 5  # never zero by chance
    dropped, kept = drop_images(latents, 0.05, gen(8))
    assert abs((1 - kept.float().mean().item()) - 0.05) < 0.006
    assert torch.equal(dropped[kept], latents[kept])
    assert dropped[~kept].abs().max() == 0
    again, kept_again = drop_images(latents, 0.05, gen(8))
    assert torch.equal(kept, kept_again) and torch.equal(dropped, again)
    assert not torch.equal(kept, drop_images(latents, 0.05, gen(9))[1])
    assert drop_images(latents[:100], 0.0, gen(1))[1].all()
    assert not drop_images(latents[:100], 1.0, gen(1))[1].any()


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return CogVideoXVAE(tiny_random_config(scaling_factor=0.7)).eval()


def test_first_frame_latents(vae):
    video = torch.rand(2, 3, 9, 32, 32, generator=gen(10)) * 2 - 1
    clean, sigmas = first_frame_latents(vae, video, 4, gen(11), augment=False)
    assert clean.shape == (2, 4, 4, 4, 4) and torch.equal(sigmas, torch.zeros(2))
    assert torch.equal(clean[:, :1], encode_image_latents(vae, video[:, :, 0], gen(11)))
    assert clean[:, 1:].abs().max() == 0 and clean[:, 0].abs().min() > 0
    # only the first frame matters
    changed = video.clone()
    changed[:, :, 1:] = 0
    assert torch.equal(first_frame_latents(vae, changed, 4, gen(11), augment=False)[0], clean)

    # augmented: sigmas, then pixel noise, then the posterior sample, all from one generator
    latents, sigmas = first_frame_latents(vae, video, 4, gen(12))
    g = gen(12)
    noisy, want_sigmas = augment_images(video[:, :, 0], g)
    assert torch.equal(sigmas, want_sigmas)
    assert torch.equal(latents[:, :1], encode_image_latents(vae, noisy, g))
    assert (latents[:, 0] - clean[:, 0]).abs().max() > 1e-4  # the noise reached the latents
    assert torch.equal(latents, first_frame_latents(vae, video, 4, gen(12))[0])


@pytest.mark.parametrize("frames,latents,padded", [(49, 13, 14), (81, 21, 22), (161, 41, 42), (85, 22, 22)])
def test_first_frame_duplication_bookkeeping(frames, latents, padded):
    z = torch.randn(2, latent_num_frames(frames), 3, 2, 2, generator=gen(frames))
    assert z.shape[1] == latents
    dup, extra = duplicate_first_frame(z, patch_size_t=2)
    assert dup.shape[1] == padded and extra == padded - latents == frames_to_add(latents, 2)
    assert torch.equal(dup[:, extra:], z) and all(torch.equal(dup[:, i], z[:, 0]) for i in range(extra + 1))
    back = drop_duplicated_frames(dup, extra)
    assert torch.equal(back, z)
    if latents % 2:  # (an even count decodes to 4t frames, see vae.pixel_num_frames)
        assert pixel_num_frames(back.shape[1]) == frames
    # the same count the inference pipelines sample
    components = SimpleNamespace(transformer=SimpleNamespace(config=SimpleNamespace(patch_size_t=2)))
    assert latent_frames_for(components, frames) == (padded, extra)
    # CogVideoX 1.0 (no temporal patching) is left alone
    same, none = duplicate_first_frame(z, patch_size_t=None)
    assert same is z and none == 0
