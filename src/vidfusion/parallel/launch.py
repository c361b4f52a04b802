"""Process-group setup for multi-GPU inference under torchrun, and the CFG x sequence-parallel process groups.

    torchrun --nproc-per-node 4 my_script.py   # 2 CFG halves x 2 sequence shards

Ranks are laid out as a (cfg, sp) device mesh, sp fastest: with 4 ranks, {0, 1} and {2, 3} shard the sequence of
one CFG half each, {0, 2} and {1, 3} exchange the halves. Sequence-parallel traffic (two all-to-alls per layer)
thus stays between neighbouring ranks; the CFG all_gather happens once per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from vidfusion.errors import VidFusionError


@dataclass
class ParallelState:
    """This process's place in the job. Groups are None when there is nothing to split (a single process)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    cfg_group: dist.ProcessGroup | None = None
    sp_group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints progress."""
        return self.rank == 0


def init_distributed(
    backend: str | None = None, init_method: str | None = None, use_cuda: bool | None = None
) -> ParallelState:
    """Start the default process group from torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without them (a plain `python ...` run) nothing is started and a world of one is returned. use_cuda (None: when
    CUDA is available) puts each rank on cuda:LOCAL_RANK, else on the CPU. backend: nccl on CUDA, else gloo.
    init_method overrides env:// (tests use file://).
    """
    use_cuda = torch.cuda.is_available() if use_cuda is None else use_cuda
    if "WORLD_SIZE" not in os.environ:
        return ParallelState(rank=0, world_size=1, local_rank=0, device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise VidFusionError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                f"use --nproc-per-node {torch.cuda.device_count()} or fewer"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(
            backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
            timeout=timedelta(minutes=30),  # rank 0 may spend minutes loading weights or decoding before a collective
            device_id=device if device.type == "cuda" else None,
        )
    return ParallelState(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def parallel_degrees(world_size: int, guided: bool) -> tuple[int, int]:
    """(cfg, sp): the two CFG halves on separate ranks when guided and the world is even; the rest shards tokens."""
    if guided and world_size % 2 == 0:
        return 2, world_size // 2
    return 1, world_size


def make_parallel_groups(state: ParallelState, cfg_degree: int, sp_degree: int) -> ParallelState:
    """Return `state` with its cfg_group and sp_group from a (cfg, sp) mesh; needs cfg_degree * sp_degree ranks."""
    if cfg_degree * sp_degree != state.world_size:
        raise VidFusionError(
            f"CFG degree {cfg_degree} x sequence-parallel degree {sp_degree} != {state.world_size} processes; "
            f"choose degrees whose product is the process count (see parallel_degrees)"
        )
    if cfg_degree not in (1, 2):
        raise VidFusionError(f"CFG degree {cfg_degree} is not 1 or 2; a guided batch has two halves")
    if state.world_size == 1:
        return state
    mesh = init_device_mesh(state.device.type, (cfg_degree, sp_degree), mesh_dim_names=("cfg", "sp"))
    state.cfg_group, state.sp_group = mesh.get_group("cfg"), mesh.get_group("sp")
    return state


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
