"""PSNR/SSIM against hand computations and a slow per-window SSIM, real-clip cropping, and evaluate_vae plumbing."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vidfusion.errors import VidFusionError
from vidfusion.evaluation.reconstruction import (
    PSNR_CAP,
    centre_crop_clips,
    evaluate_vae,
    psnr,
    resize_and_crop,
    ssim,
)

ASL = Path("/work/shared/data/videos/intel/asl_gestures")


def _video(seed: int, shape=(2, 16, 16, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_psnr_identical_is_capped():
    x = _video(0)
    assert psnr(x, x) == PSNR_CAP


def test_psnr_hand_example():
    a = np.zeros((1, 2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 10  # one of 12 values off by 10: MSE = 100 / 12
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100 / 12)), abs=1e-9)
    # Per frame, then averaged: frame 0 differs by 1 everywhere (48.13 dB), frame 1 by 2 (42.11 dB).
    c = np.full((2, 4, 4, 3), 100, np.uint8)
    d = c + np.array([1, 2], np.uint8)[:, None, None, None]
    expected = (10 * math.log10(255**2 / 1) + 10 * math.log10(255**2 / 4)) / 2
    assert psnr(c, d) == pytest.approx(expected, abs=1e-9)
    # float input on [-1, 1] with data_range=2 gives the same number as uint8 on 0..255
    assert psnr(c / 127.5 - 1, d / 127.5 - 1, data_range=2.0) == pytest.approx(expected, abs=1e-9)


def _slow_ssim(a: np.ndarray, b: np.ndarray, L: float = 255.0) -> float:
    """Wang et al. 2004 written out: every valid 11x11 window, Gaussian-weighted statistics, per channel."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    frame_scores = []
    for t in range(a.shape[0]):
        values = []
        for c in range(a.shape[3]):
            x, y = a[t, :, :, c].astype(np.float64), b[t, :, :, c].astype(np.float64)
            for i in range(x.shape[0] - 10):
                for j in range(x.shape[1] - 10):
                    px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                    mx, my = (w * px).sum(), (w * py).sum()
                    vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                    cov = (w * (px - mx) * (py - my)).sum()
                    values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        frame_scores.append(np.mean(values))
    return float(np.mean(frame_scores))


def test_ssim_matches_slow_reference():
    a = _video(1, (2, 14, 15, 3))
    noise = np.random.default_rng(2).normal(0, 25, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    # a smoother pair too, where the means dominate differently than for white noise
    s = np.linspace(0, 255, 14 * 15 * 3).reshape(1, 14, 15, 3).astype(np.uint8)
    s2 = np.clip(s.astype(int) + 20, 0, 255).astype(np.uint8)
    for x, y in ((a, b), (s, s2)):
        assert ssim(x, y) == pytest.approx(_slow_ssim(x, y), abs=1e-10)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(_slow_ssim(a, b), abs=1e-10)


def test_ssim_identity_and_monotone_in_noise():
    x = _video(3, (3, 32, 32, 3))
    assert abs(ssim(x, x) - 1) < 1e-6
    rng = np.random.default_rng(4)
    noise = rng.normal(0, 1, x.shape)
    scores = [ssim(x, np.clip(x + s * noise, 0, 255).astype(np.uint8)) for s in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_ssim_rejects_tiny_frames():
    with pytest.raises(VidFusionError, match="smaller than"):
        ssim(_video(0, (1, 8, 8, 3)), _video(1, (1, 8, 8, 3)))


def test_resize_and_crop_takes_the_centre():
    # 2 tall x 6 wide, shorter side to 1 -> 1x3: area interpolation averages 2x2 blocks; the centre block holds
    # columns 2 and 3 of both rows: mean(20, 30, 80, 90) = 55.
    frame = (np.arange(12, dtype=np.uint8).reshape(1, 2, 6, 1) * 10).repeat(3, axis=3)
    out = resize_and_crop(frame, size=1)
    assert out.shape == (1, 1, 1, 3)
    assert (out == 55).all()


@pytest.mark.skipif(not ASL.is_dir(), reason="real clips not present")
def test_centre_crop_real_clip():
    path = sorted(ASL.glob("*.mkv"))[0]
    (clip,) = centre_crop_clips([path])
    assert clip.shape == (17, 128, 128, 3) and clip.dtype == np.uint8
    assert clip.std() > 5  # real footage, not a blank frame


class _Posterior:
    def __init__(self, x):
        self.x = x

    def mode(self):
        return self.x


class _IdentityVAE:
    def encode(self, x):
        return _Posterior(x)

    def decode(self, z):
        return z


class _OffsetVAE(_IdentityVAE):
    def decode(self, z):
        return z + 2 / 255  # exactly one grey level up, then clamped


def test_evaluate_vae_identity_and_offset():
    clips = [_video(5, (5, 16, 16, 3)), _video(6, (5, 16, 16, 3))]
    result = evaluate_vae(_IdentityVAE(), clips, names=["a", "b"])
    assert result["n"] == 2 and [r["name"] for r in result["clips"]] == ["a", "b"]
    assert result["psnr"] == PSNR_CAP
    assert abs(result["ssim"] - 1) < 1e-6
    # +1 grey level except where 255 clamps: PSNR from the exact count of changed values
    shifted = evaluate_vae(_OffsetVAE(), clips[:1])
    changed = (clips[0] < 255).reshape(5, -1).mean(axis=1)  # per-frame MSE = fraction changed * 1^2
    assert shifted["psnr"] == pytest.approx(np.mean(10 * np.log10(255**2 / changed)), abs=1e-9)


def test_cli_eval_vae_on_the_shipped_vae(tmp_path, capsys):
    import json

    from vidfusion.cli import main

    out = tmp_path / "vae.json"
    assert main(["eval", "vae", "--world-n", "2", "--json", str(out)]) == 0
    assert "world-val" in capsys.readouterr().out
    result = json.loads(out.read_text())["datasets"]["world-val"]
    assert result["n"] == 2 and 5 < result["psnr"] < 60 and 0 < result["ssim"] < 1
    assert main(["eval", "vae", "--world-n", "0"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
