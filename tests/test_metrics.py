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


def test_ssim_with_the_targets_blurs_computed_beforehand_is_the_same_number():
    """Fitter._eval_seconds times target_blurs and result()'s SSIM reuses them: bit for bit the same."""
    from gaussianvision.fit.metrics import target_blurs
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 30, 26, generator=g), torch.rand(3, 3, 30, 26, generator=g)
    assert torch.equal(ssim(a, b, target_stats=target_blurs(b)), ssim(a, b))
    assert not torch.equal(ssim(a, b, target_stats=target_blurs(a)), ssim(a, b))  # they are used
