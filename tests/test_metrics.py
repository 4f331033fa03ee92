import math

import numpy as np
import pytest
import torch

from gaussianvision.fit.metrics import fast_ssim_applies, psnr, ssim, ssim_fast, ssim_reference


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
    assert float(ssim_reference(noisy, img)) == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_fast_ssim_matches_the_reference(dtype):
    """The fused numba SSIM (fit/_ssim_kernels.py) against its torch twin: odd sizes down to the window,
    values outside [0, 1] with and without the clamp, a batch large enough to run on the pool's threads."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(3)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for shape in [(1, 3, 11, 11), (2, 3, 30, 26), (2, 1, 17, 40), (6, 3, 120, 97)]:
        a = (torch.rand(*shape, generator=g, dtype=torch.float64) * 1.2 - 0.1).to(dtype)
        b = torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)
        for clamp in (True, False):
            want = ssim_reference(a, b, clamp=clamp)
            got = ssim_fast(a, b, clamp=clamp)
            assert got.dtype == want.dtype == dtype and got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=tol, msg=f"{shape} clamp={clamp}")
    half = torch.rand(2, 3, 20, 20, generator=g)
    assert ssim_fast(half.half(), half).dtype == torch.float32  # float16 computed in float32, as the twin does


def test_ssim_takes_the_fast_kernel_only_where_it_applies():
    pytest.importorskip("numba")
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert fast_ssim_applies(a, b)
    assert not fast_ssim_applies(a[..., :10], b[..., :10])  # under the window
    assert not fast_ssim_applies(a, b[:1])
    x = a.clone().requires_grad_(True)
    assert not fast_ssim_applies(x, b)  # a gradient is wanted: the differentiable twin
    ssim(x, b).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        assert fast_ssim_applies(x, b)


def test_ssim_with_the_targets_blurs_computed_beforehand_is_the_same_number():
    """Fitter._eval_seconds times target_blurs and result()'s SSIM reuses them: bit for bit the same."""
    from gaussianvision.fit.metrics import target_blurs
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, 30, 26, generator=g), torch.rand(3, 3, 30, 26, generator=g)
    assert torch.equal(ssim(a, b, target_stats=target_blurs(b)), ssim_reference(a, b))
    assert not torch.equal(ssim(a, b, target_stats=target_blurs(a)), ssim_reference(a, b))  # they are used


def test_ssim_names_images_under_the_window_and_takes_an_empty_batch():
    with pytest.raises(ValueError, match=r"ssim: images are 10x12; at least 11 pixels a side"):
        ssim(torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12))
    with pytest.raises(ValueError, match=r"ssim: pred and target must be \[B, C, H, W\] of one shape"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert ssim(torch.rand(0, 3, 16, 16), torch.rand(0, 3, 16, 16)).shape == (0,)


def test_large_images_error_is_summed_in_slabs_to_the_same_numbers(monkeypatch):
    # images of more than MSE_SLAB values are summed a slab of rows at a time (a 24 Mpixel PSNR took 1.7 s in
    # three image-sized temporaries); the numbers are those of the whole-image formula (float32 inputs, a
    # float64 reference; float64 inputs keep float64's precision)
    import gaussianvision.fit.metrics as m
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 37, 29, generator=g)
    pred = target + 0.2 * torch.randn(2, 3, 37, 29, generator=g)  # leaves [0, 1]: the clamp matters
    want_mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    want_psnr = -10 * torch.log10(((pred.double().clamp(0, 1) - target.double()) ** 2).flatten(1).mean(1))
    monkeypatch.setattr(m, "MSE_SLAB", 100)  # 3 rows of 29 x 3 values a slab
    assert m._slabbed(pred, target)
    assert m.mse(pred, target).dtype == torch.float32 and m.psnr(pred, target).dtype == torch.float32
    assert torch.allclose(m.mse(pred, target).double(), want_mse, rtol=1e-6)
    assert torch.allclose(m.psnr(pred, target).double(), want_psnr, atol=1e-5)
    assert torch.allclose(m.psnr(pred, target, clamp=False).double(), -10 * torch.log10(want_mse), atol=1e-5)
    assert float(m.psnr(target, target)[0]) == m.PSNR_CAP
    exact = m.mse(pred.double(), target.double())
    assert exact.dtype == torch.float64 and torch.allclose(exact, want_mse, rtol=1e-12)
    monkeypatch.setattr(m, "MSE_SLAB", 1 << 22)
    assert not m._slabbed(pred, target)
