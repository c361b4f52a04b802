"""Classifier-free-guidance parallelism: the [uncond; cond] halves of a guided batch run on different ranks.

`cfg_parallel(model_fn, group)` returns a drop-in `model_fn(x, context, t)` for the sampling loop: rank r of the
group runs chunk r of the batch and an all_gather puts the chunks back in order, so every rank returns the same full
v-prediction and the (deterministic) sampler keeps the latents identical on all ranks.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from vidfusion.errors import VidFusionError

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_parallel(model_fn: ModelFn, group: dist.ProcessGroup | None = None) -> ModelFn:
    """Wrap `model_fn(x, context, t)` so each rank of `group` computes 1/size of the batch (size 2: one CFG half)."""
    size = dist.get_world_size(group)
    if size == 1:
        return model_fn
    rank = dist.get_rank(group)

    def parallel_model_fn(x: torch.Tensor, context: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % size:
            raise VidFusionError(
                f"batch {x.shape[0]} cannot be split over {size} CFG-parallel ranks; use guidance_scale > 1 "
                f"(a [negative; positive] batch) or run without CFG parallelism"
            )
        t = t.reshape(-1).expand(x.shape[0])  # a scalar or [1] timestep is shared by the batch
        mine = model_fn(x.chunk(size)[rank], context.chunk(size)[rank], t.chunk(size)[rank]).contiguous()
        parts = [torch.empty_like(mine) for _ in range(size)]
        dist.all_gather(parts, mine, group=group)
        return torch.cat(parts)

    return parallel_model_fn
