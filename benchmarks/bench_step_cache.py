"""Quality cost and speed of the first-block step cache (models/step_cache.py) against exact sampling.

For each prompt the same seed is sampled exactly and with the cache at each threshold; reported: PSNR of the decoded
frames against the exact ones, the share of transformer calls that skipped blocks 1.., and the sampling time ratio
(both measured in this process, on this machine). On the tiny model this shows the quality side; the speed that
matters is on CogVideoX-5B on a GPU, where blocks 1.. are 41/42 of the step.

    python benchmarks/bench_step_cache.py [--model FOLDER] [-n 8] [--thresholds 0.05 0.1 0.2] [--device cpu] [--fp8]

--fp8 then also measures e4m3 linear layers (models/fp8.py) alone and with the cache at each threshold, against the
same exact videos (on a CPU the fp8 GEMMs are emulated by torch, so only the quality column means anything there).
"""

import argparse
import time


from vidfusion.cli import SHIPPED_MODEL
from vidfusion.data.world import scene_and_caption
from vidfusion.evaluation.reconstruction import psnr
from vidfusion.io.pretrained import load_pretrained
from vidfusion.io.video import to_uint8_frames
from vidfusion.models.step_cache import FirstBlockCache
from vidfusion.pipelines.text_to_video import T2VRequest, sampling_default, text_to_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("-n", type=int, default=8, help="held-out prompts")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp8", action="store_true", help="also fp8 linear layers, alone and with the cache")
    args = parser.parse_args()
    components = load_pretrained(args.model, device=args.device)
    steps = sampling_default(components.defaults, "num_steps")
    prompts = [scene_and_caption(i, "heldout")[1] for i in range(args.n)]

    def run(prompt: str, cache: FirstBlockCache | None):
        components.transformer.step_cache = cache
        if cache is not None:
            cache.reset()
        start = time.perf_counter()
        video = text_to_video(components, T2VRequest(prompt, num_steps=steps), progress=False)
        return to_uint8_frames(video), time.perf_counter() - start

    run(prompts[0], None)  # warm-up: first calls pay for allocations and kernel selection
    exact = [run(p, None) for p in prompts]
    print(f"{args.n} prompts, {steps} steps; exact sampling {sum(t for _, t in exact):.1f} s")

    def measure(label: str, threshold: float | None) -> None:
        cache = FirstBlockCache(threshold) if threshold is not None else None
        psnrs, seconds, hits, calls = [], 0.0, 0, 0
        for prompt, (reference, _) in zip(prompts, exact):
            video, t = run(prompt, cache)
            psnrs.append(psnr(video, reference))
            seconds += t
            if cache is not None:
                hits, calls = hits + cache.hits, calls + cache.calls
        ratio = sum(t for _, t in exact) / seconds
        skipped = f"skipped {hits}/{calls} calls, " if cache is not None else ""
        print(f"{label}: PSNR vs exact {sum(psnrs) / len(psnrs):.2f} dB (min {min(psnrs):.2f}), "
              f"{skipped}{ratio:.2f}x faster end to end", flush=True)

    for threshold in args.thresholds:
        measure(f"threshold {threshold:g}", threshold)
    if args.fp8:
        from vidfusion.models.fp8 import convert_to_fp8

        convert_to_fp8(components.transformer)
        measure("fp8", None)
        for threshold in args.thresholds:
            measure(f"fp8 + threshold {threshold:g}", threshold)
    components.transformer.step_cache = None


if __name__ == "__main__":
    main()
