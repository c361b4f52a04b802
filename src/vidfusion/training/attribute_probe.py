"""Attribute probe: an auxiliary loss that makes the transformer's middle layers say what object is where.

A small head reads the video tokens after block `attribute_layer` and predicts, per token, the share of its footprint
that each shape, colour and motion covers (and the share that is background), from the world's ground truth. The
loss is the cross-entropy against those shares, object tokens weighted 1 + object_weight. The head is trained with
the transformer and dropped at export; sampling never runs it.

Why: the shipped transformer ignores shape words (a shape swap in the caption changes its loss by 4e-4, a colour swap
by 1.6e-2; benchmarks/caption_swap.py), and none of the loss changes tried in sessions 9-12 taught them. The v loss
charges a wrong outline very little, so the gradient that would bind "star" to the object's tokens is tiny. The probe
asks for that binding directly: at high noise the only way to know which shape a token will show is the caption,
so the middle layers must carry the caption's shape (and colour, and motion) to the object's place. This is
REPA's idea (Yu et al. 2024: aligning a diffusion transformer's middle layer with a strong representation speeds up
training many times over), with the world's labels as the representation, since no pretrained vision encoder can be
downloaded here. Separate heads per attribute keep shape and colour apart, which held-out colour-shape pairs need.

Measured in session 13 (model card): the head learns to name the shape of half the object tokens, so the middle
layers do carry the caption's shape; the generated outlines still do not follow it (shape +5.8 +- 2.6 points over a
control in 4,000 steps, most of it more blobs read as crosses).

Token footprints follow the transformer's token grid: latent frame 0 is pixel frame 0 alone and latent frame k >= 1
is pixel frames 4k-3 .. 4k (the causal VAE's grouping); each token is patch_size x 8 pixels square.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidfusion.data.world import COLOURS, MOTIONS, SHAPES, SceneSpec
from vidfusion.errors import VidFusionError

ATTRIBUTE_CLASSES = {"shape": SHAPES, "colour": COLOURS, "motion": MOTIONS}
MAX_OBJECTS = 3  # the world draws 1 to 3 objects


def object_classes(scene: SceneSpec) -> np.ndarray:
    """int64 [MAX_OBJECTS, 3]: each object's shape, colour and motion index (ATTRIBUTE_CLASSES order); -1 pads."""
    if len(scene.objects) > MAX_OBJECTS:
        raise VidFusionError(f"scene has {len(scene.objects)} objects; the attribute probe handles {MAX_OBJECTS}")
    out = np.full((MAX_OBJECTS, len(ATTRIBUTE_CLASSES)), -1, dtype=np.int64)
    for i, obj in enumerate(scene.objects):
        out[i] = [SHAPES.index(obj.shape), COLOURS.index(obj.colour), MOTIONS.index(obj.motion)]
    return out


def token_fractions(ids: np.ndarray, temporal: int, cell: int) -> np.ndarray:
    """Object id maps uint8 [T, H, W] (world.object_id_maps) -> float32 [MAX_OBJECTS, F, H / cell, W / cell]: the
    share of each token's footprint (frame 0 alone, then groups of `temporal` frames; cell x cell pixels) that
    object i covers."""
    t, h, w = ids.shape
    if (t - 1) % temporal or h % cell or w % cell:
        raise VidFusionError(f"id maps of {t}x{h}x{w} do not tile into tokens of {temporal} frames x {cell} px; "
                             f"use {temporal}k+1 frames and sizes divisible by {cell}")
    out = np.zeros((MAX_OBJECTS, 1 + (t - 1) // temporal, h // cell, w // cell), dtype=np.float32)
    for i in range(MAX_OBJECTS):
        m = (ids == i + 1).astype(np.float32)
        first = m[:1].reshape(1, 1, h // cell, cell, w // cell, cell).mean(axis=(1, 3, 5))
        rest = m[1:].reshape(-1, temporal, h // cell, cell, w // cell, cell).mean(axis=(1, 3, 5))
        out[i] = np.concatenate([first, rest])
    return out


def class_targets(fractions: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token class shares for each attribute: fractions [B, K, F, h, w], classes [B, K, 3] ->
    {name: [B, F*h*w, 1 + len(classes)]}, column 0 background, rows summing to 1. Tokens are in the transformer's
    order (frame, row, column)."""
    b, k = fractions.shape[:2]
    frac = fractions.flatten(2).transpose(1, 2)  # [B, N, K]
    background = (1.0 - frac.sum(-1, keepdim=True)).clamp(min=0.0)
    targets = {}
    for a, (name, values) in enumerate(ATTRIBUTE_CLASSES.items()):
        onehot = torch.zeros(b, k, len(values), device=fractions.device, dtype=frac.dtype)
        present = classes[..., a] >= 0
        onehot[present] = F.one_hot(classes[..., a][present], len(values)).to(frac.dtype)
        targets[name] = torch.cat([background, frac @ onehot], dim=-1)
    return targets


class AttributeHead(nn.Module):
    """Token states [B, N, dim] -> logits per attribute {name: [B, N, 1 + classes]} (a two-layer MLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.sizes = [1 + len(v) for v in ATTRIBUTE_CLASSES.values()]
        self.fc2 = nn.Linear(hidden, sum(self.sizes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc2(F.silu(self.fc1(self.norm(x))))
        return dict(zip(ATTRIBUTE_CLASSES, logits.split(self.sizes, dim=-1)))


@dataclass
class ProbeOutput:
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


def probe_loss(head: AttributeHead, tokens: torch.Tensor, fractions: torch.Tensor, classes: torch.Tensor,
               object_weight: float) -> ProbeOutput:
    """Sum over attributes of the soft-target cross-entropy, averaged over tokens with weight 1 + object_weight on
    tokens that any object touches. Metrics: each attribute's loss, and its accuracy on tokens mostly covered by one
    object (the majority class, background excluded)."""
    targets = class_targets(fractions.to(tokens.device, torch.float32), classes.to(tokens.device))
    logits = head(tokens.float())
    covered = 1.0 - targets["shape"][..., 0]  # [B, N]
    weights = 1.0 + object_weight * (covered > 0).float()
    total, metrics = tokens.new_zeros((), dtype=torch.float32), {}
    majority = covered > 0.5
    for name, target in targets.items():
        ce = -(target * F.log_softmax(logits[name].float(), dim=-1)).sum(-1)
        term = (weights * ce).sum() / weights.sum()
        total = total + term
        metrics[f"probe/{name}_loss"] = term.detach()
        if bool(majority.any()):
            right = logits[name].argmax(-1) == target.argmax(-1)
            metrics[f"probe/{name}_acc"] = right[majority].float().mean().detach()
    return ProbeOutput(total, metrics)


class BlockOutput:
    """Keeps the video tokens a transformer block returned on its latest call (a forward hook), so the trainer can
    read a middle layer without changing the model's forward."""

    def __init__(self, block: nn.Module):
        self.tokens: torch.Tensor | None = None
        self.handle = block.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args, output) -> None:
        self.tokens = output[0]

    def take(self) -> torch.Tensor:
        tokens, self.tokens = self.tokens, None
        if tokens is None:
            raise VidFusionError("the attribute probe's block did not run in this forward")
        return tokens
