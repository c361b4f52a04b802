"""How much prompt adherence the VAE alone allows: the checker on ground-truth held-out clips, before and after a
round trip through a model's VAE (posterior mode). A generator decoded by this VAE can hardly score above it.

    python benchmarks/adherence_vae_bound.py [-n 60] [--model FOLDER]
"""

import argparse
import time

import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import eval_split, prompt_attributes
from vidfusion.evaluation.adherence import format_summary, score_video, summarise
from vidfusion.evaluation.reconstruction import reconstruct
from vidfusion.io.pretrained import load_vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="held-out clips")
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder with vae/")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    vae = load_vae(f"{args.model}/vae", dtype=torch.float32)
    truth, through_vae = [], []
    for clip in eval_split("heldout", args.n):
        attributes = prompt_attributes(clip.scene)
        truth.append(score_video(clip.video, attributes))
        through_vae.append(score_video(reconstruct(vae, clip.video), attributes))
    print("ground truth\n" + format_summary(summarise(truth)))
    print("through the VAE\n" + format_summary(summarise(through_vae)))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
