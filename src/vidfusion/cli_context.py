"""CLI commands of the masked-context model: `extend`, `interpolate`, and `eval i2v|long|interp`.

`generate --image/--length` also land here (`generate_from_context`) when the model is a masked-context model.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from vidfusion.errors import VidFusionError


def _components(args: argparse.Namespace, dtype: str = "auto"):
    from vidfusion.cli import _device_and_dtype, _model_folder
    from vidfusion.io.pretrained import load_pretrained

    device, torch_dtype = _device_and_dtype(args.device, dtype)
    return load_pretrained(_model_folder(args.model), device=device, dtype=torch_dtype)


def _read_video_for(components, path: str, max_frames: int | None = None):
    """A video file -> ([T, 3, H, W] in [-1, 1] at the model's size, the file's fps)."""
    import torch

    from vidfusion.io.video import fit_frames, read_video
    from vidfusion.pipelines.text_to_video import VAE_SPATIAL

    if not Path(path).is_file():
        raise VidFusionError(f"video {path} does not exist; pass the path of an .mp4/.gif/... file")
    frames, fps = read_video(path, max_frames=max_frames)
    config = components.transformer.config
    frames = fit_frames(frames, config.sample_height * VAE_SPATIAL, config.sample_width * VAE_SPATIAL)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0, fps


def _context_guidance(args: argparse.Namespace, components) -> float:
    from vidfusion.pipelines.text_to_video import sampling_default

    return float(sampling_default(components.defaults, "context_guidance", args.context_guidance))


def _interpolation_guidance(args: argparse.Namespace, components) -> tuple[float, float]:
    """(text, context) guidance for interpolation: the flags, else the model folder's interpolation defaults
    (`interpolation_guidance_scale`, `interpolation_context_guidance`), else its general ones. The shipped tiny model
    sets both to 1: unguided, it interpolates 0.91 +- 0.12 dB better than at CFG 6 / context 2 (docs/context.md)."""
    from vidfusion.pipelines.text_to_video import sampling_default

    d = components.defaults
    text = args.guidance if args.guidance is not None else d.get("interpolation_guidance_scale")
    context = args.context_guidance if args.context_guidance is not None else d.get("interpolation_context_guidance")
    return float(sampling_default(d, "guidance_scale", text)), float(sampling_default(d, "context_guidance", context))


def _request(args: argparse.Namespace, components, prompt: str):
    from vidfusion.pipelines.text_to_video import T2VRequest, sampling_default

    return T2VRequest(prompt, negative_prompt=getattr(args, "negative_prompt", ""),
                      num_steps=sampling_default(components.defaults, "num_steps", args.steps),
                      guidance_scale=sampling_default(components.defaults, "guidance_scale", args.guidance),
                      seed=args.seed)


def generate_from_context(args: argparse.Namespace, components, request, image):
    """`generate` for a masked-context model: --length rolls out chunks; --image conditions frame 0."""
    from vidfusion.pipelines.image_to_video import preprocess_image
    from vidfusion.pipelines.long_video import long_video
    from vidfusion.pipelines.masked_context import Context, first_frame_context, generate_with_context
    from vidfusion.pipelines.text_to_video import resolve_size, sampling_default

    fps = float(sampling_default(components.defaults, "fps"))
    context_scale = _context_guidance(args, components)
    if args.length is not None:
        if image is not None:
            raise VidFusionError("--image with --length is not supported yet; make the first chunk with --image, "
                                 "then `vidfusion extend` it")
        video, _ = long_video(components, request, args.length, context_frames=args.context_frames,
                              context_scale=context_scale, fps=fps, progress=not args.quiet,
                              colour_match=args.colour_match, context_noise=args.context_noise)
        return video
    if image is not None:
        frames, height, width = resolve_size(components.transformer.config, request)
        pixels = preprocess_image(image, height, width)[0]
        context = first_frame_context(pixels, frames, fps, context_scale)
    else:
        context = Context(None, None, fps, context_scale)
    return generate_with_context(components, request, context, progress=not args.quiet)


def cmd_extend(args: argparse.Namespace) -> None:
    from vidfusion.io.video import output_format, write_video
    from vidfusion.pipelines.long_video import long_video
    from vidfusion.pipelines.masked_context import generation_fps

    start = time.perf_counter()
    output_format(args.output)
    components = _components(args)
    video, fps = _read_video_for(components, args.video)
    request = _request(args, components, args.prompt)
    length = args.length if args.length is not None else video.shape[0] + args.add
    out, joins = long_video(components, request, length, start=video, context_frames=args.context_frames,
                            context_scale=_context_guidance(args, components), progress=not args.quiet,
                            colour_match=args.colour_match, context_noise=args.context_noise)
    write_video(out, args.output, fps=fps or generation_fps(components))
    print(f"wrote {args.output} ({video.shape[0]} + {out.shape[0] - video.shape[0]} frames, chunks joined at "
          f"{joins}) in {time.perf_counter() - start:.1f} s")


def cmd_interpolate(args: argparse.Namespace) -> None:
    from vidfusion.io.video import output_format, write_video
    from vidfusion.pipelines.interpolation import check_factor, interpolate
    from vidfusion.pipelines.masked_context import generation_fps

    start = time.perf_counter()
    output_format(args.output)
    check_factor(args.x)
    components = _components(args)
    video, fps = _read_video_for(components, args.video)
    fps = args.fps or fps or generation_fps(components)
    text_scale, context_scale = _interpolation_guidance(args, components)
    request = dataclasses.replace(_request(args, components, args.prompt), guidance_scale=text_scale)
    out = interpolate(components, video, args.x, request, fps, context_scale, progress=not args.quiet,
                      blend_start=args.blend_start)
    write_video(out, args.output, fps=fps * args.x)
    print(f"wrote {args.output} ({video.shape[0]} -> {out.shape[0]} frames, {fps:g} -> {fps * args.x:g} fps) in "
          f"{time.perf_counter() - start:.1f} s")


def cmd_eval_context(args: argparse.Namespace) -> None:
    from vidfusion.cli import _write_json
    from vidfusion.evaluation import context_eval

    start = time.perf_counter()
    components = _components(args)
    common = dict(seed=args.seed, steps=args.steps, guidance=args.guidance,
                  context_scale=_context_guidance(args, components),
                  progress=not args.quiet)
    if args.eval_command == "i2v":
        result = context_eval.evaluate_i2v(components, n=args.n, **common)
        print(f"I2V, {args.n} heldout images: first-frame PSNR {result['first_frame_psnr']:.2f} dB; last frame has "
              f"the input's colour {result['last_frame_colour']:.3f}, shape {result['last_frame_shape']:.3f}")
    elif args.eval_command == "long":
        result = context_eval.evaluate_long(components, n=args.n, chunks_x=args.times,
                                            context_frames=args.context_frames, keep_videos=1 if args.sheet else 0,
                                            colour_match=args.colour_match, context_noise=args.context_noise,
                                            **common)
        table = result["adherence"]
        for part in ("first", "last"):
            row = "  ".join(f"{k} {v:.3f}" for k, v in table[part].items())
            print(f"{part} chunk: {row}")
        print(f"frame change at joins {result['border_change']:.2f}, inside chunks {result['inside_change']:.2f}, "
              f"ratio {result['seam_ratio']:.2f}")
        if args.sheet and result["videos"]:
            from vidfusion.io.video import write_contact_sheet

            video = result["videos"][0]
            write_contact_sheet(video, args.sheet, num=min(len(video), 20), cols=10)
            print(f"wrote {args.sheet}")
        result.pop("videos")
    else:
        text_scale, context_scale = _interpolation_guidance(args, components)
        common.update(guidance=text_scale, context_scale=context_scale)
        result = context_eval.evaluate_interpolation(components, n=args.n, prompt=not args.no_prompt,
                                                     blend_start=args.blend_start, **common)
        print(f"interpolation x4, {args.n} val clips, PSNR of the in-between frames: {result['psnr']:.2f} dB, "
              f"linear blending {result['blend_psnr']:.2f} dB; on moving pixels {result['moving_psnr']:.2f} vs "
              f"{result['moving_blend_psnr']:.2f} dB")
    elapsed = time.perf_counter() - start
    print(f"{elapsed:.1f} s")
    if args.json:
        _write_json(args.json, {**result, "seconds": elapsed})


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model folder (default: the shipped tiny model)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale (default: the model's)")
    p.add_argument("--context-guidance", type=float, default=None, metavar="S",
                   help="context guidance scale; 1 disables (default: the model's, else 1; one more model call per "
                        "step when on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def drift_flags(p: argparse.ArgumentParser) -> None:
    """Options of chunk-by-chunk generation against drift (pipelines/long_video.py)."""
    p.add_argument("--colour-match", action="store_true",
                   help="shift each new chunk's colours to match the frames it continues (against colour drift)")
    p.add_argument("--context-noise", type=float, default=0.0, metavar="SIGMA",
                   help="pixel noise on the context frames, [-1, 1] scale, as in training (e.g. 0.05; default 0)")


def blend_start_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blend-start", type=int, default=None, metavar="T",
                   help="start each window from the linear blend of its keys noised to timestep T, instead of from "
                        "pure noise (SDEdit; lower keeps more of the blend; see pipelines/interpolation.py)")


def add_parsers(sub, eval_sub) -> None:
    ext = sub.add_parser("extend", help="continue a video chunk by chunk (masked-context model)")
    ext.add_argument("video")
    ext.add_argument("prompt", nargs="?", default="", help="what happens next (default: no text)")
    ext.add_argument("-o", "--output", default="extended.mp4")
    ext.add_argument("--length", type=int, default=None, help="total frames of the result")
    ext.add_argument("--add", type=int, default=48, help="frames to add when --length is not given (default 48)")
    ext.add_argument("--context-frames", type=int, default=5, metavar="K",
                     help="frames of context per chunk, 4s + 1 (default 5: two latent frames)")
    drift_flags(ext)
    _sampling_flags(ext)
    ext.set_defaults(func=cmd_extend)

    itp = sub.add_parser("interpolate", help="raise the frame rate x4 or x16 (masked-context model)")
    itp.add_argument("video")
    itp.add_argument("-x", type=int, default=4, help="factor: 4, 16 or 64")
    itp.add_argument("-o", "--output", default="interpolated.mp4")
    itp.add_argument("--prompt", default="", help="caption of the video (optional)")
    itp.add_argument("--fps", type=float, default=None, help="input frame rate (default: the file's)")
    blend_start_flag(itp)
    _sampling_flags(itp)
    itp.set_defaults(func=cmd_interpolate)

    for name, help_text, n in (("i2v", "image-to-video on the world's held-out first frames", 100),
                               ("long", "long videos: adherence of the first vs last chunk, seams", 20),
                               ("interp", "x4 interpolation PSNR on world clips vs linear blending", 50)):
        p = eval_sub.add_parser(name, help=help_text)
        p.add_argument("-n", type=int, default=n)
        p.add_argument("--json", default=None, metavar="OUT.json")
        _sampling_flags(p)
        if name == "long":
            p.add_argument("--times", type=int, default=10, help="length in trained lengths (default 10)")
            p.add_argument("--context-frames", type=int, default=5, metavar="K")
            p.add_argument("--sheet", default=None, metavar="PNG", help="contact sheet of the first video")
            drift_flags(p)
        if name == "interp":
            p.add_argument("--no-prompt", action="store_true", help="interpolate without the caption")
            blend_start_flag(p)
        p.set_defaults(func=cmd_eval_context)
