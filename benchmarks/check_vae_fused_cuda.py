"""The fused VAE paths against the module path on CUDA, in fp32 with TF32 off: what the CPU tests cannot see (cuDNN's
channels-last convolutions, the compiled kernels on the GPU).

    python benchmarks/check_vae_fused_cuda.py

CogVideoX-5B VAE config, random weights; decode of 5 x 16 x 24 latents (17 x 128 x 192) and encode of the same size
of video. Prints, per variant (fuse_norms with frame_slice None, 1, 2, eager and compiled), the max relative
difference to the module path. Expect float reassociation only (~1e-5).
"""

import torch

from vidfusion.models.vae import VAE_PRESETS, CogVideoXVAE


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    vae = CogVideoXVAE(VAE_PRESETS["cogvideox-5b"]).cuda().eval()
    z = torch.randn(1, 16, 5, 16, 24, device="cuda")
    x = torch.rand(1, 3, 17, 128, 192, device="cuda") * 2 - 1
    with torch.no_grad():
        want, want_latents = vae.decode(z), vae.encode(x).mean
        for frame_slice in (None, 1, 2):
            for compile in (False, True):
                vae.fuse_norms(compile=compile, frame_slice=frame_slice)
                got, got_latents = vae.decode(z), vae.encode(x).mean
                decode = ((got - want).abs().max() / want.abs().max()).item()
                encode = ((got_latents - want_latents).abs().max() / want_latents.abs().max()).item()
                print(f"frame_slice={frame_slice} compile={compile}: decode {decode:.2e}, encode {encode:.2e}, "
                      f"output contiguous {got.is_contiguous()}", flush=True)
        vae.fuse_norms(enabled=False)


if __name__ == "__main__":
    main()
