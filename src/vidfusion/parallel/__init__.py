"""Multi-GPU inference: CFG parallelism, Ulysses sequence parallelism, VAE tiles split across ranks, and torchrun
process-group setup.

Typical use in a sampling script launched with `torchrun --nproc-per-node N`:

    state = init_distributed()
    state = make_parallel_groups(state, *parallel_degrees(state.world_size, guided=True))
    model_fn = parallelize(transformer, state)   # model_fn(x, context, t), for denoise(..., model_fn=model_fn)

`vidfusion generate --gpus N` does this for the pipelines (cli.cmd_generate; docs/inference.md).
"""

from __future__ import annotations

from vidfusion.models.transformer import CogVideoXTransformer
from vidfusion.parallel.cfg_parallel import ModelFn, cfg_parallel
from vidfusion.parallel.launch import (
    ParallelState,
    destroy_distributed,
    init_distributed,
    make_parallel_groups,
    parallel_degrees,
)
from vidfusion.parallel.sequence_parallel import (
    UlyssesParallel,
    chunk_sizes,
    disable_sequence_parallel,
    enable_sequence_parallel,
)
from vidfusion.parallel.vae_tiles import assign_tiles, split_vae_tiles, unsplit_vae_tiles


def parallelize(
    transformer: CogVideoXTransformer, state: ParallelState, model_fn: ModelFn | None = None
) -> ModelFn:
    """Turn on sequence parallel for `transformer` over state.sp_group and wrap `model_fn` (default: a plain call of
    the transformer) in CFG parallel over state.cfg_group. With one process it returns model_fn unchanged."""
    model_fn = model_fn or (lambda x, c, t: transformer(x, c, t))
    if state.world_size == 1:
        return model_fn
    if state.sp_group is not None:
        enable_sequence_parallel(transformer, state.sp_group)
    if state.cfg_group is not None:
        model_fn = cfg_parallel(model_fn, state.cfg_group)
    return model_fn


__all__ = [
    "ModelFn", "ParallelState", "UlyssesParallel", "cfg_parallel", "chunk_sizes", "destroy_distributed",
    "disable_sequence_parallel", "enable_sequence_parallel", "init_distributed", "make_parallel_groups",
    "parallel_degrees", "parallelize", "assign_tiles", "split_vae_tiles", "unsplit_vae_tiles",
]
