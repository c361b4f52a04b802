"""What the transformer keeps of a clip it is shown half-noised: held-out ground-truth clips are encoded, noised to
timestep t with the schedule's forward process, sampled back to t = 0 with their true captions (DDIM, the model's step
spacing, text-to-video with an empty context), decoded and scored by the adherence checker. t = 0 is the VAE's round
trip alone; the gap between a row and that one is what the denoiser loses from that noise level down.

With `--one-step` the sampler is left out: the clip is noised to exactly t and the model's single x0 prediction
(x0 = a x_t - s v) is decoded. If shape is lost there too, the denoiser loses it, not the sampler's trajectory.

    python benchmarks/sdedit_probe.py [-n 16] [--levels 300 500 700] [--guidance 6] [--model FOLDER] [--device cuda]
        [--one-step]

Needs a masked-context model such as the shipped one (the context stays empty, as in text-to-video).
"""

import argparse
import json
import time

import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import eval_split, prompt_attributes
from vidfusion.diffusion.guidance import cfg
from vidfusion.diffusion.samplers import make_sampler
from vidfusion.evaluation.adherence import format_summary, score_video, summarise
from vidfusion.evaluation.reconstruction import clip_latents
from vidfusion.io.pretrained import load_pretrained
from vidfusion.io.video import to_uint8_frames
from vidfusion.pipelines.masked_context import check_context_model, empty_context_model_fn
from vidfusion.pipelines.text_to_video import encode_prompts


def probe(components, clips, level: int, guidance: float, num_steps: int, device, one_step: bool = False) -> dict:
    vae, scale = components.vae, components.vae.config.scaling_factor
    model_fn = empty_context_model_fn(components)
    sampler = make_sampler("ddim", components.schedule, num_steps)
    steps = [int(t) for t in sampler.timesteps if int(t) <= level]
    if one_step and level > 0:
        steps = [level]
    scores = []
    for clip in clips:
        z0 = (clip_latents(vae, clip.video) * scale).permute(0, 2, 1, 3, 4)  # [1, F, C, h, w]
        if steps:
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(clip.index)).to(device)
            ab = sampler.alphas_cumprod[steps[0]].to(device)
            z = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
            text = encode_prompts(components, [clip.caption], [""], guidance > 1.0)
            for t in steps:
                inp = torch.cat([z, z]) if guidance > 1.0 else z
                v = model_fn(inp, text, torch.full((inp.shape[0],), t, device=device)).float()
                if guidance > 1.0:
                    v = cfg(*v.chunk(2), guidance)
                z = sampler.step(v, t, z)[1 if one_step else 0]  # (next sample, predicted x0)
        else:
            z = z0
        video = vae.decode((z / scale).permute(0, 2, 1, 3, 4)).clamp(-1, 1)
        scores.append(score_video(to_uint8_frames(video[0].float().transpose(0, 1)), prompt_attributes(clip.scene)))
    return {"level": level, "steps": len(steps), "table": summarise(scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=16, help="held-out clips")
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 300, 500, 700])
    parser.add_argument("--guidance", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=25, help="the sampler's step count (its spacing)")
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one-step", action="store_true", help="decode the model's x0 prediction at t (no sampler)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    components = load_pretrained(args.model, device=args.device)
    check_context_model(components, "the SDEdit probe")
    clips = eval_split("heldout", args.n)
    rows = []
    for level in args.levels:
        row = probe(components, clips, level, args.guidance, args.steps, args.device, args.one_step)
        rows.append(row)
        print(f"t = {level} ({row['steps']} steps)\n{format_summary(row['table'])}", flush=True)
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "guidance": args.guidance, "one_step": args.one_step,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
