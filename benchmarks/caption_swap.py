"""Which caption words does a text-to-video model use? Its v-prediction loss on ground-truth world clips with the true
caption against the same caption with one attribute word swapped (right <-> left, red <-> blue, circle <-> square ...).

If the model reads a word, the swapped caption predicts worse: the loss difference (swapped - true) is positive at
the timesteps where that attribute is decided. A difference of zero at every timestep means the word is ignored.
Clips are training-split samples whose caption contains a swappable word; noise is fixed per timestep.

    python benchmarks/caption_swap.py [--model FOLDER] [-n 24] [--timesteps 300 600 800 900 950]
"""

from __future__ import annotations

import argparse

import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import sample
from vidfusion.diffusion.prediction import add_noise, v_target
from vidfusion.diffusion.schedule import alphas_cumprod
from vidfusion.io.pretrained import load_pretrained
from vidfusion.pipelines.masked_context import empty_context_model_fn, is_context_model

SWAPS = {
    "motion": [("right", "left"), ("left", "right"), ("upward", "downward"), ("downward", "upward"),
               (" up", " down"), (" down", " up")],
    "colour": [("red", "blue"), ("blue", "red"), ("green", "yellow"), ("yellow", "green")],
    "shape": [("circle", "square"), ("square", "circle"), ("triangle", "star"), ("star", "triangle")],
}


def swapped_clips(n: int, limit: int = 2000) -> list[tuple]:
    """(sample, attribute, swapped caption) for the first n training samples that have a swappable word, taking the
    attributes in turn so that each gets about n / 3 clips."""
    clips, index, turn = [], 0, 0
    kinds = list(SWAPS)
    while len(clips) < n and index < limit:
        s = sample(index, "train")
        index += 1
        kind = kinds[turn % len(kinds)]
        for a, b in SWAPS[kind]:
            if a in s.caption:
                clips.append((s, kind, s.caption.replace(a, b, 1)))
                turn += 1
                break
    return clips


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("-n", type=int, default=24, help="clips (split evenly over motion, colour and shape)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[300, 600, 800, 900, 950])
    args = parser.parse_args()
    components = load_pretrained(args.model)
    acp = alphas_cumprod(components.schedule)
    clips = swapped_clips(args.n)
    video = torch.stack([torch.from_numpy(s.video).float() / 127.5 - 1 for s, _, _ in clips]).permute(0, 4, 1, 2, 3)
    x0 = (components.vae.encode(video).mean * components.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
    true = components.text_encoder([s.caption for s, _, _ in clips])
    swapped = components.text_encoder([caption for _, _, caption in clips])
    kinds = [kind for _, kind, _ in clips]
    counts = {k: kinds.count(k) for k in SWAPS}
    print(f"{len(clips)} clips: {counts}; loss(swapped) - loss(true), mean over clips, per timestep")

    predict = empty_context_model_fn(components) if is_context_model(components) else components.transformer

    for t in args.timesteps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        x_t, target = add_noise(acp, x0, noise, t), v_target(acp, x0, noise, t)
        steps = torch.full((len(clips),), t)
        loss_true = (predict(x_t, true, steps) - target).pow(2).flatten(1).mean(1)
        loss_swapped = (predict(x_t, swapped, steps) - target).pow(2).flatten(1).mean(1)
        diff = loss_swapped - loss_true
        by_kind = "  ".join(
            f"{k} {diff[[i for i, kk in enumerate(kinds) if kk == k]].mean().item():+.4f}" for k in SWAPS if counts[k]
        )
        print(f"t={t:4d}: loss {loss_true.mean().item():.4f}  {by_kind}", flush=True)


if __name__ == "__main__":
    main()
