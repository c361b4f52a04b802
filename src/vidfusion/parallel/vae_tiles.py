"""VAE decoding (and encoding) split across ranks by spatial tiles.

With tiling on, the VAE runs each overlapping tile through every time chunk on its own and only then blends the
tiles (`CogVideoXVAE._tiled`). `split_vae_tiles(vae, group)` makes each rank run some of the tiles and broadcast
them, so every rank blends the same tiles into the same video as a single process would, bit for bit: the tiles
are computed by the same code on the same inputs, only elsewhere.

Tiles are unequal (the last row and column are cut by the frame's edge), so they are dealt largest first to the
rank with the least work so far (by input size), the same on every rank. The 5B decode at 480 x 720 has 9 tiles.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from vidfusion.models.vae import CogVideoXVAE

TileFn = Callable[[torch.Tensor], torch.Tensor]


def assign_tiles(sizes: list[int], ranks: int) -> list[int]:
    """Owner rank of each tile: largest tile first, each to the rank with the least total size so far (ties: the
    lowest rank)."""
    load = [0] * ranks
    owners = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owner = min(range(ranks), key=lambda r: (load[r], r))
        owners[index] = owner
        load[owner] += sizes[index]
    return owners


def map_tiles_over_ranks(fn: TileFn, tiles: list[torch.Tensor], group: dist.ProcessGroup | None = None
                         ) -> list[torch.Tensor]:
    """[fn(t) for t in tiles] on every rank of `group`, each tile computed by one rank and broadcast."""
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    owners = assign_tiles([t.numel() for t in tiles], size)
    outputs: list[torch.Tensor | None] = [fn(t) if owner == rank else None for t, owner in zip(tiles, owners)]
    # Output shapes depend on fn (encode or decode), so the owners tell the others before the tensors move.
    mine = [(i, tuple(out.shape), out.dtype) for i, out in enumerate(outputs) if out is not None]
    everyone: list[list | None] = [None] * size
    dist.all_gather_object(everyone, mine, group=group)
    for owner, entries in enumerate(everyone):
        source = owner if group is None else dist.get_global_rank(group, owner)
        for index, shape, dtype in entries:
            if outputs[index] is None:
                outputs[index] = torch.empty(shape, dtype=dtype, device=tiles[index].device)
            outputs[index] = outputs[index].contiguous()  # broadcast sends and receives dense tensors
            dist.broadcast(outputs[index], src=source, group=group)
    return outputs  # type: ignore[return-value]


def split_vae_tiles(vae: CogVideoXVAE, group: dist.ProcessGroup | None = None) -> None:
    """Run the VAE's tiles on the ranks of `group` (default: all) when tiling is on (`vae.enable_tiling()`); every
    rank must then call encode/decode with the same input. Untiled calls are not split. With one rank it does
    nothing."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        vae.map_tiles = lambda fn, tiles: map_tiles_over_ranks(fn, tiles, group)


def unsplit_vae_tiles(vae: CogVideoXVAE) -> None:
    vae.map_tiles = None
