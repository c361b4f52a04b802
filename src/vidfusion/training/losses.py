"""VAE training losses: reconstruction terms, a 3D patch discriminator, hinge GAN losses and the adaptive GAN weight.
The reconstruction terms and object weights also make the DiT trainer's pixel loss (train_dit.py).

Reconstruction = L1 + grad_weight * L1 of finite differences along height, width and time, optionally weighted per
pixel (object weighting, see train_vae). The difference term is
our perceptual stand-in because it needs no downloaded network: a blurred edge or a flickering frame costs little
pixel L1 but a lot of gradient L1, which is exactly what LPIPS is used for in VAE training. Multi-scale SSIM was the
alternative; it needs several 2x downsamplings (5 scales want >= 160 px frames, our clips are 128 px), has no
temporal term, and its gradients are poorly scaled near 1, so the finite differences win for small clips.

The discriminator sees videos [B, 3, T, H, W] and single frames (T = 1) alike: 3D convolutions with temporal kernel
3 and padding 1 work down to one frame. GroupNorm instead of BatchNorm, so outputs do not depend on the batch mix
(real and fake pass separately) and there are no running statistics to checkpoint.

The generator's GAN term is weighted by the VQGAN rule: lambda = ||grad_w L_rec|| / (||grad_w L_G|| + 1e-4) at the
decoder's last layer w, clamped to [0, 1e4] and detached, so the adversarial gradient reaching the decoder is about as
large as the reconstruction gradient whatever the discriminator's current scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weighted_l1(x_hat: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w |x_hat - x|) / sum(w), w [B, 1, T, H, W] broadcast over channels; the plain mean L1 when w is None."""
    if weights is None:
        return (x_hat - x).abs().mean()
    w = weights.expand_as(x)
    return (w * (x_hat - x).abs()).sum() / w.sum()


def pixel_object_weights(objects: torch.Tensor, weight: float, ring: int = 2) -> torch.Tensor:
    """Object masks [B, T, H, W] (bool) -> L1 weights [B, 1, T, H, W]: 1 + weight within `ring` px of an object."""
    m = objects.float().unsqueeze(1)
    k = 2 * ring + 1
    m = F.max_pool3d(m, (1, k, k), stride=1, padding=(0, ring, ring))
    return 1.0 + weight * m


def finite_difference_l1(x_hat: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 between the finite differences of x_hat and x along H, W and (when T > 1) T; inputs [B, C, T, H, W].
    With pixel weights [B, 1, T, H, W] each difference takes the larger weight of its two pixels, so an object's
    outline counts as the object does."""
    dims = (3, 4, 2) if x.shape[2] > 1 else (3, 4)
    terms = []
    for d in dims:
        w = None if weights is None else torch.maximum(weights.narrow(d, 1, weights.shape[d] - 1),
                                                       weights.narrow(d, 0, weights.shape[d] - 1))
        terms.append(weighted_l1(x_hat.diff(dim=d), x.diff(dim=d), w))
    return sum(terms) / len(terms)


def kl_per_pixel(kl_sum: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Batch mean of the summed KL, divided by the number of pixel values per sample."""
    return kl_sum.mean() / x[0].numel()


class PatchDiscriminator3D(nn.Module):
    """Video patch discriminator: three strided 3D conv stages and a 1-channel logit map (about 30 px receptive
    field per logit at 128 px)."""

    def __init__(self, in_channels: int = 3, channels: int = 64):
        super().__init__()
        c = channels

        def stage(cin: int, cout: int, stride: tuple[int, int, int], norm: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv3d(cin, cout, 3, stride=stride, padding=1)]
            if norm:
                layers.append(nn.GroupNorm(min(32, cout // 4), cout))
            layers.append(nn.LeakyReLU(0.2))
            return layers

        self.net = nn.Sequential(
            *stage(in_channels, c, (1, 2, 2), norm=False),
            *stage(c, 2 * c, (2, 2, 2), norm=True),
            *stage(2 * c, 4 * c, (2, 2, 2), norm=True),
            nn.Conv3d(4 * c, 1, 3, padding=1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """||d rec / d w|| / (||d g / d w|| + 1e-4), clamped to [0, max_weight], detached (VQGAN)."""
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = rec_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
