"""What linear blending and a perfect latent interpolator score on `vidfusion eval interp`'s clips.

A model that generates in the VAE's latent space and decodes its frames can at best produce the VAE's round trip of
the true frames. This script scores that oracle exactly as `evaluate_interpolation` scores the model: the world's
val clips rendered at 4x the frame rate, every 4th frame a key copied exactly, windows of the transformer's 17
frames (5 keys) sharing their end keys, PSNR over the in-between frames (all pixels, and the moving pixels only).
If the oracle is below blending, no latent interpolator decoded by this VAE can beat blending on these clips.

    python benchmarks/interpolation_vae_bound.py [-n 50] [--model FOLDER]
"""

import argparse
import time

import numpy as np
import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import render, scene_and_caption
from vidfusion.evaluation.context_eval import linear_blend, moving_psnr
from vidfusion.evaluation.reconstruction import psnr, reconstruct
from vidfusion.io.pretrained import load_vae
from vidfusion.pipelines.interpolation import STEP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="val clips (eval interp's default)")
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder with vae/")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk", type=int, default=17, help="frames per window (the transformer's sample_frames)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    vae = load_vae(f"{args.model}/vae", device=args.device, dtype=torch.float32)
    keys_per_window = (args.chunk - 1) // STEP + 1
    rows = []
    for index in range(args.n):
        scene, _, _ = scene_and_caption(index, "val")
        truth = render(scene, (args.chunk - 1) * STEP + 1)
        keys = truth[::STEP]
        oracle = np.empty_like(truth)
        for first in range(0, keys.shape[0] - 1, keys_per_window - 1):
            a = first * STEP
            window = truth[a:a + args.chunk]
            oracle[a:a + window.shape[0]] = reconstruct(vae, window)
        oracle[::STEP] = keys
        blend = linear_blend(keys)
        between = np.ones(truth.shape[0], dtype=bool)
        between[::STEP] = False
        truth_b = truth[between].astype(np.float64)
        moving = np.abs(truth_b - blend[between]).max(axis=-1, keepdims=True) > 8
        rows.append({name: (psnr(video[between], truth[between]), moving_psnr(video[between], truth_b, moving))
                     for name, video in (("blend", blend), ("vae_oracle", oracle))})
    for name in ("blend", "vae_oracle"):
        whole = np.mean([r[name][0] for r in rows])
        moving = np.mean([r[name][1] for r in rows])
        print(f"{name:10s} in-between frames {whole:.2f} dB, moving pixels {moving:.2f} dB")
    better = np.mean([r["vae_oracle"][0] > r["blend"][0] for r in rows])
    print(f"oracle above blending on {better:.0%} of {args.n} clips ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
