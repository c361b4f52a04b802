"""The `vidfusion` command: argument parsing and printing only; the work lives in the pipelines.

Input problems (`VidFusionError`) print one line and exit 2 without a traceback; `--traceback` or VIDFUSION_DEBUG=1
shows it. Loading never touches the network: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from vidfusion.errors import VidFusionError

if TYPE_CHECKING:
    from vidfusion.models.transformer import TransformerConfig

SHIPPED_MODEL = Path(__file__).parent / "weights" / "tiny-t2v"
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def _device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VidFusionError(f"--device {device} asked for a GPU but torch sees none; use --device cpu")
    return torch.device(device), getattr(torch, DTYPES[dtype])


def _model_folder(arg: str | None) -> Path:
    if arg is None:
        if not SHIPPED_MODEL.is_dir():
            raise VidFusionError(f"the shipped model is missing from {SHIPPED_MODEL}; reinstall vidfusion or pass --model")
        return SHIPPED_MODEL
    if not Path(arg).is_dir():
        raise VidFusionError(f"model folder {arg} does not exist; pass --model with a diffusers-layout CogVideoX folder")
    return Path(arg)


def cmd_generate(args: argparse.Namespace) -> int | None:
    from vidfusion.io.checkpoint import read_json
    from vidfusion.io.pretrained import load_pretrained, read_defaults
    from vidfusion.io.video import output_format, write_video
    from vidfusion.models.transformer import TransformerConfig, set_attention_backend
    from vidfusion.parallel import destroy_distributed, init_distributed, make_parallel_groups, parallelize
    from vidfusion.pipelines.text_to_video import T2VRequest, check_request, sampling_default, text_to_video

    start = time.perf_counter()
    set_attention_backend(args.attention)  # an unknown name fails now
    output_format(args.output)  # an unsupported -o fails now, not after sampling
    model = _model_folder(args.model)
    device, dtype = _device_and_dtype(args.device, args.dtype)
    defaults = read_defaults(model)  # what the model was tuned for; flags override
    steps = sampling_default(defaults, "num_steps", args.steps)
    guidance = sampling_default(defaults, "guidance_scale", args.guidance)
    fps = sampling_default(defaults, "fps", args.fps)
    request = T2VRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frames, height=args.height,
        width=args.width, num_steps=steps, guidance_scale=guidance, dynamic_cfg=args.dynamic_cfg,
        sampler=args.sampler, seed=args.seed, freeinit=_freeinit_settings(args),
    )
    # Validate against the config alone so that bad input fails before the (slow) weight load.
    config = TransformerConfig.from_dict(read_json(model / "transformer" / "config.json"))
    frames, height, width = check_request(config, request)
    if args.length is not None:
        from vidfusion.pipelines.long_video import check_context_frames

        check_context_frames(args.context_frames, frames)
    if args.image is not None:
        from vidfusion.pipelines.image_to_video import load_image

        image = load_image(args.image)  # an unreadable image fails before the weight load too
    if args.vae_frame_slice is not None and (args.vae_frame_slice < 1 or not args.vae_fuse):
        raise VidFusionError(f"--vae-frame-slice {args.vae_frame_slice} needs --vae-fuse and a frame count >= 1 "
                             f"(1 uses the least memory)")
    processes = _process_count(args.gpus, args.device)
    if args.step_cache is not None and (processes > 1 or args.step_cache < 0):
        raise VidFusionError(f"--step-cache {args.step_cache} needs one process and a threshold >= 0 (0.1 is "
                             f"typical); drop --gpus or --step-cache")
    from vidfusion.pipelines.masked_context import is_context_config

    context_model = is_context_config(config, read_json(model / "vae" / "config.json")["latent_channels"])
    if not context_model and (args.length is not None or args.context_guidance is not None):
        raise VidFusionError("--length and --context-guidance need a masked-context model (the shipped tiny model "
                             "or one trained with task_mix); this model has no context input")
    degrees = _parallel_degrees(config, processes, guided=guidance > 1.0 and not context_model)
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(processes, args.argv)  # input was checked above, once, before N processes start

    state = init_distributed(use_cuda=device.type == "cuda")  # under torchrun; else a world of one, nothing started
    try:
        if state.world_size > 1:
            device = state.device  # cuda:LOCAL_RANK
            args.quiet = args.quiet or not state.is_main  # one progress bar
        components = load_pretrained(model, device=device, dtype=dtype)
        _configure_vae(components.vae, args)
        if args.step_cache is not None:
            from vidfusion.models.step_cache import FirstBlockCache

            components.transformer.step_cache = FirstBlockCache(args.step_cache)
        if args.fp8:
            from vidfusion.models.fp8 import convert_to_fp8

            convert_to_fp8(components.transformer)  # after the dtype cast: .to(dtype) would cast fp8 buffers too
        state = make_parallel_groups(state, *degrees)
        wrap = partial(parallelize, components.transformer, state) if state.world_size > 1 else None
        if context_model:
            from vidfusion.cli_context import generate_from_context

            # Sequence parallel only (see _parallel_degrees): it lives inside the transformer, so every
            # masked-context path (--image, --length) runs in parallel without a model_fn hook.
            parallelize(components.transformer, state)
            video = generate_from_context(args, components, request, image if args.image is not None else None)
            frames = video.shape[0]
        elif args.image is not None:
            from vidfusion.pipelines.image_to_video import image_to_video

            video = image_to_video(components, request, image, progress=not args.quiet, wrap_model_fn=wrap)
        else:
            video = text_to_video(components, request, progress=not args.quiet, wrap_model_fn=wrap)
        if state.is_main:  # every rank holds the same video
            write_video(video, args.output, fps=fps)
            elapsed = time.perf_counter() - start
            passes = f", FreeInit {request.freeinit.passes} passes" if request.freeinit else ""
            on = f", {state.world_size} processes (CFG x sequence {degrees[0]} x {degrees[1]})" if processes > 1 else ""
            print(f"wrote {args.output} ({frames} frames, {height}x{width}, {steps} steps{passes}, seed {args.seed}"
                  f"{on}) in {elapsed:.1f} s")
    finally:
        destroy_distributed()
    return None


def _configure_vae(vae, args: argparse.Namespace) -> None:
    """--vae-tiling / --vae-fuse / --vae-frame-slice; under torchrun, tiles are split across the ranks (each rank
    decodes some and all get the same video; vidfusion.parallel.vae_tiles)."""
    from vidfusion.parallel import split_vae_tiles

    if args.vae_tiling:
        vae.enable_tiling()
        split_vae_tiles(vae)  # nothing without torchrun
    if args.vae_fuse:
        vae.fuse_norms(frame_slice=args.vae_frame_slice)


def _process_count(gpus: int | None, device: str) -> int:
    """How many processes sample: torchrun's WORLD_SIZE when it launched us, else --gpus."""
    world = os.environ.get("WORLD_SIZE")
    if world is not None and gpus not in (None, int(world)):
        raise VidFusionError(f"--gpus {gpus} but torchrun started {world} processes; drop --gpus under torchrun")
    processes = int(world) if world is not None else (gpus or 1)
    if processes < 1:
        raise VidFusionError(f"--gpus {gpus} must be at least 1")
    if processes > 1 and device.startswith("cuda:"):
        raise VidFusionError(f"--device {device} with {processes} processes: each takes cuda:LOCAL_RANK; "
                             f"use --device cuda")
    return processes


def _parallel_degrees(config: TransformerConfig, processes: int, guided: bool) -> tuple[int, int]:
    """(CFG, sequence-parallel) degrees. CFG parallel needs a [negative; positive] batch. A masked-context model's
    loop batches 1 to 3 branches (negative text, positive text, no context), which two ranks cannot always split
    evenly, so the caller passes guided=False for it: sequence parallel only, which splits the tokens of any batch."""
    from vidfusion.parallel import parallel_degrees

    if processes == 1:
        return 1, 1
    cfg, sp = parallel_degrees(processes, guided)
    heads = config.num_attention_heads
    if heads % sp:
        fits = [n for n in range(2, 17) if heads % parallel_degrees(n, guided)[1] == 0]
        raise VidFusionError(f"{processes} processes shard the sequence {sp} ways, which does not divide this "
                             f"model's {heads} attention heads; use --gpus {' or '.join(map(str, fits[:4])) or 1}")
    return cfg, sp


def _torchrun(processes: int, argv: list[str]) -> int:
    """Run this same command as `processes` torchrun workers on this machine; their exit code."""
    import subprocess

    # Drop --gpus: the workers read WORLD_SIZE (an abbreviated --gpu N still passes, as it equals WORLD_SIZE).
    child, skip = [], False
    for arg in argv:
        if not skip and arg != "--gpus" and not arg.startswith("--gpus="):
            child.append(arg)
        skip = arg == "--gpus" and not skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "vidfusion.cli", *child]
    return subprocess.run(command, check=False).returncode


FREEINIT_FLAGS = {"freeinit_filter": "filter", "freeinit_ds": "d_s", "freeinit_dt": "d_t",
                  "freeinit_renoise": "renoise_timestep", "freeinit_coarse_to_fine": "coarse_to_fine",
                  "freeinit_from_top": "start_at_renoise", "freeinit_equal_steps": "equal_steps"}


def _freeinit_settings(args: argparse.Namespace):
    """FreeInitSettings from the --freeinit flags, or None when --freeinit is not given."""
    from vidfusion.diffusion.freeinit import FreeInitSettings

    given = {flag: getattr(args, flag) for flag in FREEINIT_FLAGS if getattr(args, flag) not in (None, False)}
    if args.freeinit is None:
        if given:
            raise VidFusionError(f"--{next(iter(given)).replace('_', '-')} needs --freeinit N; add e.g. --freeinit 3")
        return None
    settings = {FREEINIT_FLAGS[flag]: value for flag, value in given.items()}
    if "start_at_renoise" in settings:  # --freeinit-from-top turns it off
        if settings.get("equal_steps"):
            raise VidFusionError("--freeinit-equal-steps is for passes that enter at the re-noise level; "
                                 "drop it or --freeinit-from-top (from the top every pass runs all its steps)")
        settings["start_at_renoise"] = False
    return FreeInitSettings(passes=args.freeinit, **settings)


def cmd_info(args: argparse.Namespace) -> None:
    from vidfusion.io.inspect import describe

    print(describe(Path(args.path)))


def cmd_train(args: argparse.Namespace) -> None:
    if args.model == "vae":
        from vidfusion.training.train_vae import main as train_main
    else:
        from vidfusion.training.train_dit import main as train_main
    train_main(args.config, args.overrides)  # prints where the export or the last checkpoint went


def cmd_eval_adherence(args: argparse.Namespace) -> None:
    from vidfusion.evaluation.adherence import format_confusion, format_summary
    from vidfusion.evaluation.prompt_eval import evaluate_adherence
    from vidfusion.io.pretrained import load_pretrained

    start = time.perf_counter()
    model = _model_folder(args.model)
    device, dtype = _device_and_dtype(args.device, "auto")
    components = load_pretrained(model, device=device, dtype=dtype)
    result = evaluate_adherence(components, n=args.n, split=args.split, seed=args.seed, num_steps=args.steps,
                                guidance=args.guidance, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    settings = result["settings"]
    print(f"{model.name}: {args.n} {args.split} prompts, {settings['num_steps']} steps, "
          f"guidance {settings['guidance_scale']}, seed {args.seed}, {elapsed:.1f} s")
    print(format_summary(result["table"]))
    print(format_confusion(result["shape_confusion"]))
    if args.json:
        _write_json(args.json, {**result, "seconds": elapsed})


def cmd_eval_temporal(args: argparse.Namespace) -> None:
    from vidfusion.evaluation.temporal import evaluate_files, format_table, load_feature_encoder, mean_scores

    start = time.perf_counter()
    for path in args.videos:
        if not Path(path).is_file():
            raise VidFusionError(f"video {path} does not exist; pass paths of .mp4/.gif/... files")
    device, _ = _device_and_dtype(args.device, "fp32")
    encoder = _vae_folder(args.vae) if args.vae else None
    rows = evaluate_files(args.videos, load_feature_encoder(encoder, device), args.max_frames)
    elapsed = time.perf_counter() - start
    print(format_table(rows))
    if args.json:
        _write_json(args.json, {"videos": rows, "mean": mean_scores(rows), "seconds": elapsed})


def _vae_folder(arg: str | None) -> Path:
    folder = _model_folder(arg)
    if (folder / "vae").is_dir():
        return folder / "vae"
    if (folder / "config.json").is_file():
        return folder
    raise VidFusionError(f"{folder} has neither a vae/ folder nor a config.json; pass --model with a model folder "
                         f"or a diffusers-layout VAE folder")


def cmd_eval_vae(args: argparse.Namespace) -> None:
    from vidfusion.evaluation.reconstruction import evaluate_datasets, format_table, reconstruction_datasets
    from vidfusion.io.pretrained import load_vae

    start = time.perf_counter()
    folder = _vae_folder(args.model)
    # Reconstruction error is measured in fp32: bf16 rounding would be charged to the VAE.
    device, dtype = _device_and_dtype(args.device, "fp32")
    datasets = reconstruction_datasets(args.world_n, args.real)  # bad paths fail before the weight load
    results = evaluate_datasets(load_vae(folder, device=device, dtype=dtype), datasets)
    elapsed = time.perf_counter() - start
    print(f"{folder}: posterior mode, 17 frames at 128x128, fp32, {elapsed:.1f} s")
    print(format_table(results))
    if args.json:
        _write_json(args.json, {"vae": str(folder), "datasets": results, "seconds": elapsed})


def _write_json(path: str, obj: dict) -> None:
    import json

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(obj, indent=1))
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    from vidfusion.cli_context import drift_flags

    parser = argparse.ArgumentParser(prog="vidfusion", description="Latent video diffusion.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text to video")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", default="video.mp4", help=".mp4, .gif, .png (contact sheet) or a folder/")
    gen.add_argument("--model", default=None, help="diffusers-layout model folder (default: the shipped tiny model)")
    gen.add_argument("--image", default=None, metavar="PATH",
                     help="first frame for image-to-video (the shipped model, or an -I2V checkpoint such as "
                          "CogVideoX-5b-I2V)")
    gen.add_argument("--length", type=int, default=None, metavar="N",
                     help="N frames, longer than the model's clip: chunk by chunk from context (masked-context "
                          "models such as the shipped one)")
    gen.add_argument("--context-frames", type=int, default=5, metavar="K",
                     help="with --length: frames of context per chunk, 4s + 1 (default 5)")
    drift_flags(gen)
    gen.add_argument("--context-guidance", type=float, default=None, metavar="S",
                     help="context guidance scale for masked-context models; 1 disables (default: the model's, "
                          "2 for the shipped one)")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--frames", type=int, default=None, help="4k+1 frames (default: the model's trained length)")
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, else 50)")
    gen.add_argument("--guidance", type=float, default=None,
                     help="classifier-free guidance scale, 1 disables (default: the model's, else 6)")
    gen.add_argument("--dynamic-cfg", action="store_true", help="CogVideoX's cosine guidance ramp")
    gen.add_argument("--sampler", default=None, help="ddim or dpm (default: the checkpoint's scheduler)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--fps", type=int, default=None, help="frame rate of the file (default: the model's, else 8)")
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    gen.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--gpus", type=int, default=None, metavar="N",
                     help="sample on N GPUs (CPU processes without CUDA) through torchrun: CFG x sequence parallel")
    gen.add_argument("--step-cache", type=float, default=None, metavar="T",
                     help="approximate: skip blocks 1.. on steps where block 0's residual changed by less than T "
                          "(relative L1; first-block cache, see benchmarks/bench_step_cache.py for the quality cost)")
    gen.add_argument("--fp8", action="store_true",
                     help="approximate: e4m3 linear layers in the transformer blocks (fast on Hopper GPUs; see "
                          "docs/inference.md for the quality cost)")
    gen.add_argument("--attention", default="auto", metavar="NAME",
                     help="attention kernel: the SDPA ones auto, cudnn, flash, efficient, math (default auto), or "
                          "flash-cute (FlashAttention's CuTe-DSL kernel, if installed; see docs/inference.md)")
    gen.add_argument("--vae-tiling", action="store_true",
                     help="decode in overlapping spatial tiles (diffusers' tiling: less memory, slightly different "
                          "output); with --gpus the tiles are split across the GPUs")
    gen.add_argument("--vae-fuse", action="store_true",
                     help="decode with fused, compiled VAE norms (2.3x faster for CogVideoX-5B on an H100, after a "
                          "~30 s compile on the first decode)")
    gen.add_argument("--vae-frame-slice", type=int, default=None, metavar="N",
                     help="with --vae-fuse: the full-resolution level in N-frame slices (the same output in less "
                          "memory; 1 for the least)")
    gen.add_argument("--freeinit", type=int, default=None, metavar="N",
                     help="FreeInit with N sampling passes (3 is typical; later passes run the steps below the "
                          "re-noise level)")
    gen.add_argument("--freeinit-filter", default=None, choices=["butterworth", "gaussian", "ideal", "box"],
                     help="low-pass filter (default butterworth)")
    gen.add_argument("--freeinit-ds", type=float, default=None, metavar="D", help="spatial stop frequency (default 0.25)")
    gen.add_argument("--freeinit-dt", type=float, default=None, metavar="D", help="temporal stop frequency (default 0.25)")
    gen.add_argument("--freeinit-renoise", type=int, default=None, metavar="T",
                     help="timestep the previous pass is re-noised to (default: where alphabar ~ 0.0133; 820 for the "
                          "shipped model; see docs/freeinit.md)")
    gen.add_argument("--freeinit-coarse-to-fine", action="store_true",
                     help="earlier passes use fewer steps (pass i of N: steps * i / N)")
    gen.add_argument("--freeinit-from-top", action="store_true",
                     help="later passes sample from t = 999 as in the paper, instead of entering at the re-noise "
                          "level (see docs/freeinit.md)")
    gen.add_argument("--freeinit-equal-steps", action="store_true",
                     help="later passes run --steps steps below the re-noise level, on a finer grid, instead of the "
                          "grid's steps there (20 of 25 at the default level)")
    gen.set_defaults(func=cmd_generate)

    train = sub.add_parser("train", help="train the VAE or the diffusion transformer (resumes from out_dir)")
    train.add_argument("model", choices=["vae", "dit"])
    train.add_argument("--config", default=None, help="TOML file, e.g. configs/vae_tiny.toml (default: the defaults)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. steps=200 lr=1e-4")
    train.set_defaults(func=cmd_train)

    info = sub.add_parser("info", help="print a checkpoint's configs and parameter counts")
    info.add_argument("path")
    info.set_defaults(func=cmd_info)

    evaluate = sub.add_parser("eval", help="evaluate a model")
    eval_sub = evaluate.add_subparsers(dest="eval_command", required=True)
    adh = eval_sub.add_parser("adherence", help="prompt adherence on the procedural world's captions")
    adh.add_argument("--model", default=None, help="diffusers-layout model folder (default: the shipped tiny model)")
    adh.add_argument("-n", type=int, default=200, help="number of prompts (the split's first n captions)")
    adh.add_argument("--split", default="heldout", choices=["heldout", "val"])
    adh.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every prompt")
    adh.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, else 50)")
    adh.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's, else 6)")
    adh.add_argument("--json", default=None, metavar="OUT.json", help="also write the table and per-prompt rows")
    adh.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    adh.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    adh.set_defaults(func=cmd_eval_adherence)
    vae = eval_sub.add_parser("vae", help="VAE reconstruction PSNR/SSIM on world and real clips")
    vae.add_argument("--model", default=None,
                     help="model folder with vae/, or a VAE folder (default: the shipped tiny model)")
    vae.add_argument("--world-n", type=int, default=50, help="world 'val' clips to reconstruct (0 skips them)")
    vae.add_argument("--real", nargs="+", default=[], metavar="DIR",
                     help="folders of real videos (searched recursively); 17 middle frames, centre-cropped to 128")
    vae.add_argument("--json", default=None, metavar="OUT.json", help="also write per-clip rows")
    vae.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    vae.set_defaults(func=cmd_eval_vae)
    temporal = eval_sub.add_parser("temporal", help="frame consistency, flicker and motion of video files")
    temporal.add_argument("videos", nargs="+", metavar="VIDEO")
    temporal.add_argument("--json", default=None, metavar="OUT.json", help="also write per-video rows and the mean")
    temporal.add_argument("--max-frames", type=int, default=None, help="read only the first N frames of each video")
    temporal.add_argument("--vae", default=None,
                          help="model or VAE folder whose encoder gives the features (default: the shipped tiny model)")
    temporal.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    temporal.set_defaults(func=cmd_eval_temporal)

    from vidfusion.cli_context import add_parsers as add_context_parsers
    from vidfusion.data.curation.command import add_parser as add_curate_parser

    add_context_parsers(sub, eval_sub)

    add_curate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    # `train vae --config f steps=3`: argparse matches the overrides positional before --config (empty) and would
    # reject what follows, so train takes the leftovers as overrides; every other command stays strict.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    debug = args.traceback or os.environ.get("VIDFUSION_DEBUG") == "1"
    args.argv = list(sys.argv[1:] if argv is None else argv)  # generate --gpus N re-runs the command under torchrun
    try:
        code = args.func(args)
    except VidFusionError as e:
        if debug:
            raise
        print(f"vidfusion: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidfusion: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
