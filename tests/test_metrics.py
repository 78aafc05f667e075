import math

import numpy as np
import pytest
import torch

from nerfmine.metrics import psnr, ssim


def test_psnr_closed_form():
    target = torch.zeros(8, 8, 3)
    prediction = torch.full((8, 8, 3), 0.1)
    assert psnr(prediction, target) == pytest.approx(20.0, abs=1e-5)  # 0.1 is float32


def test_psnr_clips_prediction():
    target = torch.ones(4, 4, 3)
    assert math.isinf(psnr(torch.full((4, 4, 3), 1.7), target))


def test_ssim_identical_is_one_and_noise_lowers_it():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(32, 29, 3, generator=gen)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    noisy = (image + 0.2 * torch.randn(image.shape, generator=gen)).clamp(0, 1)
    assert ssim(noisy, image) < 0.9


def test_ssim_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed")
    rng = np.random.default_rng(1)
    a = rng.random((37, 41, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ours = ssim(torch.from_numpy(b), torch.from_numpy(a))
    ref = skimage_metrics.structural_similarity(
        b, a, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_ssim_rejects_tiny_images():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(5, 5, 3), torch.zeros(5, 5, 3))
