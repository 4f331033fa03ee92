import math

import numpy as np
import pytest
import torch

from gaussianvision.fit.metrics import psnr, ssim


def test_psnr_known_value():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.1)
    assert float(psnr(a, b)) == pytest.approx(20.0, abs=1e-4)  # mse 0.01 -> 20 dB


def test_ssim_identity_and_against_scikit_image():
    from skimage.data import astronaut
    from skimage.metrics import structural_similarity
    img = torch.from_numpy(astronaut()[100:164, 100:164].copy()).permute(2, 0, 1).float()[None] / 255
    noisy = (img + 0.05 * torch.randn_like(img)).clamp(0, 1)
    assert float(ssim(img, img)) == pytest.approx(1.0, abs=1e-6)
    ref = structural_similarity(noisy[0].double().numpy(), img[0].double().numpy(), channel_axis=0,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert float(ssim(noisy, img)) == pytest.approx(ref, abs=1e-4)
