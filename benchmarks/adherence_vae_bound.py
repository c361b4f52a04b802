"""How much prompt adherence the VAE alone allows: the checker on ground-truth held-out clips, before and after a
round trip through a model's VAE (posterior mode). A generator decoded by this VAE can hardly score above it.

    python benchmarks/adherence_vae_bound.py [-n 60] [--model FOLDER] [--sheet misses.png]

It also scores the clip's last frame alone for each object group's colour and shape, as `vidfusion eval i2v` scores
its output's last frame: the bound on the image-to-video "last frame keeps the input's colour and shape" figure.
"""

import argparse
import time

import cv2
import numpy as np
import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import eval_split, prompt_attributes
from vidfusion.evaluation.adherence import format_summary, score_video, summarise
from vidfusion.evaluation.context_eval import colour_shape_groups
from vidfusion.evaluation.reconstruction import reconstruct
from vidfusion.io.pretrained import load_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="held-out clips")
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder with vae/")
    parser.add_argument("--vae", default=None, help="a VAE folder itself (default: MODEL/vae)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sheet", default=None, metavar="PNG",
                        help="picture of the first 6 last frames whose shape the round trip loses (truth | VAE)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    vae = load_vae(args.vae or f"{args.model}/vae", device=args.device, dtype=torch.float32)
    truth, through_vae, last_truth, last_vae, misses = [], [], [], [], []
    for clip in eval_split("heldout", args.n):
        attributes = prompt_attributes(clip.scene)
        decoded = reconstruct(vae, clip.video)
        truth.append(score_video(clip.video, attributes))
        through_vae.append(score_video(decoded, attributes))
        groups = colour_shape_groups(attributes)
        last_truth.append(score_video(clip.video[-1:], groups))
        last_vae.append(score_video(decoded[-1:], groups))
        if last_vae[-1]["shape"] < 1 and len(misses) < 6:
            misses.append(np.concatenate([clip.video[-1], decoded[-1]], axis=1))
    print("ground truth\n" + format_summary(summarise(truth)))
    print("through the VAE\n" + format_summary(summarise(through_vae)))
    for name, rows in (("ground truth", last_truth), ("through the VAE", last_vae)):
        colour = sum(r["colour"] for r in rows) / len(rows)
        shape = sum(r["shape"] for r in rows) / len(rows)
        print(f"last frame only, {name}: colour {colour:.3f} shape {shape:.3f} (as eval i2v scores it)")
    if args.sheet and misses:
        rows = [cv2.resize(m, (2 * m.shape[1], 2 * m.shape[0]), interpolation=cv2.INTER_NEAREST) for m in misses]
        cv2.imwrite(args.sheet, cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(f"wrote {args.sheet}: {len(misses)} last frames, truth left, VAE round trip right")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
