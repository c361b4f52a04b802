"""How much an imprecise latent costs after decoding: ground-truth held-out clips are encoded (posterior mode), noise of
std sigma (in latent stds, the units the transformer sees) is added, and the decode is scored by PSNR and by the
adherence checker. With `--generated N`, also how far the model's own generated latents sit from the VAE's latent
manifold: the rms distance between a latent and the re-encoding of its decode, for N generated videos and for N
ground-truth clips (needs the text encoder).

    python benchmarks/latent_noise_probe.py [-n 24] [--sigmas 0 0.05 0.1 0.2 0.3] [--vae FOLDER] [--generated 6]

A decoder trained with `latent_noise` (training/train_vae.py) should lose less at each sigma.
"""

import argparse
import json
import time

import numpy as np
import torch

from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import eval_split, prompt_attributes
from vidfusion.evaluation.adherence import score_video, summarise
from vidfusion.evaluation.reconstruction import clip_latents, psnr
from vidfusion.io.pretrained import load_vae
from vidfusion.io.video import to_uint8_frames


def noise_rows(vae, clips, sigmas: list[float], device) -> list[dict]:
    scale = vae.config.scaling_factor
    latents = [clip_latents(vae, c.video) for c in clips]
    rows = []
    for sigma in sigmas:
        generator = torch.Generator().manual_seed(0)
        scores, values = [], []
        for clip, z in zip(clips, latents):
            noise = torch.randn(z.shape, generator=generator).to(device)
            video = to_uint8_frames(vae.decode(z + sigma / scale * noise)[0].float().transpose(0, 1))
            scores.append(score_video(video, prompt_attributes(clip.scene)))
            values.append(psnr(clip.video, video))
        table = summarise(scores)
        rows.append({"sigma": sigma, "psnr": float(np.mean(values)),
                     **{k: v["accuracy"] for k, v in table.items()}})
    return rows


def off_manifold(model: str, vae, n: int, device) -> dict:
    """rms of (z - E(D(z))) in latent stds for n generated latents and n ground-truth clips' latents. The model's
    transformer and text encoder generate; `vae` (the one probed) encodes and decodes."""
    from vidfusion.evaluation.prompt_eval import scene_and_caption
    from vidfusion.io.pretrained import load_pretrained
    from vidfusion.pipelines.text_to_video import T2VRequest, text_to_video

    components = load_pretrained(model, device=device)
    components.vae, scale, decode = vae, vae.config.scaling_factor, vae.decode

    def distance(z: torch.Tensor) -> float:
        again = vae.encode(decode(z).clamp(-1, 1)).mode()
        return float(((z - again) * scale).pow(2).mean().sqrt())

    # The pipeline returns pixels only; its latents are caught on their way into the decoder.
    generated = []

    def decode_and_measure(z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        generated.append(distance(z))
        return decode(z, *args, **kwargs)

    vae.decode = decode_and_measure
    try:
        for index in range(n):
            _, prompt, _ = scene_and_caption(index, "heldout")
            text_to_video(components, T2VRequest(prompt, seed=0), progress=False)
    finally:
        vae.decode = decode
    truth = [distance(clip_latents(vae, c.video)) for c in eval_split("heldout", n)]
    return {"generated_rms": float(np.sqrt(np.mean(np.square(generated)))),
            "truth_rms": float(np.sqrt(np.mean(np.square(truth))))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=24, help="held-out clips")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder (its vae/ unless --vae)")
    parser.add_argument("--vae", default=None, help="VAE folder to probe instead of the model's")
    parser.add_argument("--generated", type=int, default=0, help="also measure N generated latents' distance")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    vae_folder = args.vae or f"{args.model}/vae"
    vae = load_vae(vae_folder, device=args.device)
    result = {"vae": vae_folder, "n": args.n, "rows": noise_rows(vae, eval_split("heldout", args.n), args.sigmas,
                                                                 args.device)}
    print(f"{'sigma':>6} {'PSNR':>7} " + " ".join(f"{k:>7}" for k in ("colour", "shape", "motion", "count", "all")))
    for r in result["rows"]:
        print(f"{r['sigma']:>6.2f} {r['psnr']:>7.2f} "
              + " ".join(f"{r[k]:>7.3f}" for k in ("colour", "shape", "motion", "count", "all")))
    if args.generated:
        result["off_manifold"] = off_manifold(args.model, vae, args.generated, args.device)
        print("off-manifold rms (latent stds):", result["off_manifold"])
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
