"""Multi-process inference on CPU with gloo: Ulysses sequence parallel, CFG parallel and both on a (cfg, sp) mesh
each give the single-process output on every rank: relative error max|got - want| / max|want| < 1e-5 in fp32."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from vidfusion.errors import VidFusionError
from vidfusion.models.transformer import CogVideoXTransformer, tiny_config
from vidfusion.models.vae import CogVideoXVAE
from vidfusion.models.vae import tiny_random_config as tiny_vae_config
from vidfusion.parallel import (
    ParallelState,
    assign_tiles,
    cfg_parallel,
    chunk_sizes,
    enable_sequence_parallel,
    init_distributed,
    make_parallel_groups,
    parallel_degrees,
    parallelize,
    split_vae_tiles,
    unsplit_vae_tiles,
)

from test_fused_ops import randomize  # noqa: E402  (the same random weights as the fused-op tests)

TOL = 1e-5


@torch.no_grad()
def random_model(like: str, seed: int, **overrides) -> CogVideoXTransformer:
    """Random weights everywhere (LayerNorm affines and biases too), identical on every rank for the same seed."""
    return randomize(CogVideoXTransformer(tiny_config(like, **overrides)).eval(), seed)


def inputs(model: CogVideoXTransformer, frames: int, height: int, width: int, text_len: int, seed: int = 0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, frames, cfg.in_channels, height, width, generator=g)
    ctx = torch.randn(2, text_len, cfg.text_embed_dim, generator=g)
    return x, ctx, torch.tensor([900, 40])


# (preset, latent frames, height, width, text length): odd token counts (45 video tokens, 7 text) exercise uneven shards.
CASES = [("cogvideox-2b", 3, 6, 10, 7), ("cogvideox-5b", 3, 8, 12, 7), ("cogvideox1.5-5b", 4, 10, 6, 5)]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    state = init_distributed(init_method=f"file://{store}")
    assert state.device.type == "cpu" and state.world_size == world
    results: dict[str, object] = {}
    with torch.no_grad():
        if world == 2:
            for i, (like, f, h, w, n_text) in enumerate(CASES):
                model = random_model(like, seed=i)
                x, ctx, t = inputs(model, f, h, w, n_text)
                want = model(x, ctx, t)
                # CFG parallel: each rank runs one half of the batch.
                got_cfg = cfg_parallel(lambda a, c, s: model(a, c, s))(x, ctx, t)
                # Sequence parallel over both ranks.
                enable_sequence_parallel(model)
                got_sp = model(x, ctx, t)
                results[like] = (rel_err(got_cfg, want), rel_err(got_sp, want), want.abs().mean().item())
                if like == "cogvideox-5b":
                    # Dynamo traces the collectives too: no graph break (aot_eager: no codegen, see test_fused_ops).
                    got = torch.compile(model, fullgraph=True, backend="aot_eager")(x, ctx, t)
                    results["compiled_sp"] = rel_err(got, want)
            results["vae"] = _vae_tiles_case()
            try:
                enable_sequence_parallel(random_model("cogvideox-5b", seed=0, num_attention_heads=3))
            except VidFusionError as e:
                results["heads_error"] = str(e)
            try:
                with torch.enable_grad():
                    model(x, ctx, t)
            except VidFusionError as e:
                results["grad_error"] = str(e)
        else:
            # 4 ranks as 2 CFG x 2 SP, through parallelize() as the CLI would use it.
            model = random_model("cogvideox-5b", seed=7)
            x, ctx, t = inputs(model, 3, 6, 10, 7)
            want = model(x, ctx, t)
            mesh_state = make_parallel_groups(state, *parallel_degrees(world, guided=True))
            got = parallelize(model, mesh_state)(x, ctx, t)
            results["cfg2_sp2"] = (rel_err(got, want), want.abs().mean().item())
            # 4-way sequence parallel (4 heads), 7 text tokens = 2 + 2 + 2 + 1, 45 video tokens = 12 + 11 + 11 + 11.
            model = random_model("cogvideox-2b", seed=8, num_attention_heads=4)
            x, ctx, t = inputs(model, 3, 6, 10, 7)
            want = model(x, ctx, t)
            enable_sequence_parallel(model)
            got = model(x, ctx, t)
            results["sp4"] = (rel_err(got, want), want.abs().mean().item())
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _vae_tiles_case() -> dict:
    """Tiled decode and encode of a tiny VAE with its tiles split over the ranks, against the same calls run whole
    here; and how many tiles this rank computed itself (6 tiles of 4 x 4 latents every 3, over 6 x 8 latents)."""
    torch.manual_seed(0)
    vae = CogVideoXVAE(tiny_vae_config()).eval()
    vae.enable_tiling(32, 32)
    g = torch.Generator().manual_seed(1)
    z, x = torch.randn(1, 4, 3, 6, 8, generator=g), torch.randn(1, 3, 9, 48, 64, generator=g)
    want_video, want_latents = vae.decode(z), vae.encode(x).mean
    split_vae_tiles(vae)
    mine = []
    split = vae.map_tiles
    vae.map_tiles = lambda fn, tiles: split(lambda t: mine.append(t.shape) or fn(t), tiles)
    got_video = vae.decode(z)
    decoded_here = len(mine)
    got_latents = vae.encode(x).mean
    unsplit_vae_tiles(vae)
    return {"decode_equal": torch.equal(got_video, want_video), "encode_equal": torch.equal(got_latents, want_latents),
            "decoded_here": decoded_here}


def _spawn(world: int, tmp_path) -> list[dict]:
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def test_sequence_and_cfg_parallel_two_ranks(tmp_path):
    results = _spawn(2, tmp_path)
    for rank, res in enumerate(results):
        for like, *_ in CASES:
            err_cfg, err_sp, scale = res[like]
            assert scale > 0.1, like  # a non-trivial output
            assert err_cfg < TOL, (rank, like, "cfg", err_cfg)
            assert err_sp < TOL, (rank, like, "sp", err_sp)
        assert res["compiled_sp"] < TOL, (rank, res["compiled_sp"])
        assert "num_attention_heads=3" in res["heads_error"] and "\n" not in res["heads_error"]
        assert "inference-only" in res["grad_error"]
        vae = res["vae"]
        assert vae["decode_equal"] and vae["encode_equal"], (rank, vae)  # bit for bit
    # 6 tiles: rows of 4 and 3 latents (starts 0, 3 of 6) by columns of 4, 4 and 2 (starts 0, 3, 6 of 8), dealt
    # largest first: each rank decodes 3 of them
    assert [res["vae"]["decoded_here"] for res in results] == [3, 3]


def test_cfg_times_sequence_parallel_four_ranks(tmp_path):
    for rank, res in enumerate(_spawn(4, tmp_path)):
        for key in ("cfg2_sp2", "sp4"):
            err, scale = res[key]
            assert scale > 0.1 and err < TOL, (rank, key, err)


def test_tiles_are_dealt_largest_first_to_the_least_loaded_rank():
    assert assign_tiles([6, 6, 3, 6, 6, 3, 2, 2, 1], 2) == [0, 1, 0, 0, 1, 1, 0, 1, 0]  # loads 17 and 17
    assert assign_tiles([4, 4, 4], 1) == [0, 0, 0]
    assert assign_tiles([1, 9], 3) == [1, 0]


def test_chunk_sizes_match_tensor_split():
    for n in (0, 1, 7, 45, 226, 17550):
        for p in (1, 2, 3, 4, 8):
            assert chunk_sizes(n, p) == [len(c) for c in torch.arange(n).tensor_split(p)]


def test_single_process_and_bad_degrees():
    state = init_distributed() if "WORLD_SIZE" not in os.environ else None
    if state is not None:
        assert state.world_size == 1 and state.is_main and state.cfg_group is None
        fn = parallelize(random_model("cogvideox-2b", seed=0), state)
        x, ctx, t = inputs(random_model("cogvideox-2b", seed=0), 3, 6, 10, 7)
        assert torch.equal(fn(x, ctx, t), random_model("cogvideox-2b", seed=0)(x, ctx, t))
    assert parallel_degrees(4, guided=True) == (2, 2) and parallel_degrees(3, guided=True) == (1, 3)
    assert parallel_degrees(4, guided=False) == (1, 4)
    with pytest.raises(VidFusionError, match="!= 4 processes"):
        make_parallel_groups(ParallelState(0, 4, 0, torch.device("cpu")), 2, 3)
