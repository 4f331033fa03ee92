"""The separable blur's band-matrix path (fit/blur.py) against its convolution twin: values and
gradients, every size rule, and SSIM through it against scikit-image."""
import numpy as np
import pytest
import torch

import gaussianvision.fit.blur as blur
from gaussianvision.fit.blur import blur_valid, blur_valid_reference, gaussian_taps


@pytest.mark.parametrize("shape,sigma,radius", [((2, 3, 37, 41), 1.5, 5), ((1, 1, 64, 20), 4.0, 9),
                                                ((3, 2, 12, 12), 0.8, 1)])
def test_band_path_equals_the_convolution_in_values_and_gradients(shape, sigma, radius):
    _same_as_the_convolution(shape, sigma, radius)


def _same_as_the_convolution(shape, sigma, radius):
    g = gaussian_taps(sigma, radius, dtype=torch.float64)
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    fast, ref = blur_valid(x, g), blur_valid_reference(x, g)
    assert fast.shape == ref.shape == (*shape[:2], shape[2] - 2 * radius, shape[3] - 2 * radius)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    w = torch.rand_like(ref)
    (gf,), (gr,) = torch.autograd.grad((fast * w).sum(), x), torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(gf, gr, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape,sigma,radius", [((2, 3, 37, 41), 1.5, 5), ((1, 1, 64, 20), 4.0, 9),
                                                ((1, 2, 30, 90), 12.0, 14)])
def test_fft_path_of_large_sides_equals_the_convolution_in_values_and_gradients(monkeypatch, shape, sigma, radius):
    """Sides above BAND_MAX (lowered here) take FFTs: the convolution's values and gradients."""
    monkeypatch.setattr(blur, "BAND_MAX", 16)
    monkeypatch.setattr(blur, "_band", lambda *a: pytest.fail("the band path at a side above BAND_MAX"))
    _same_as_the_convolution(shape, sigma, radius)
    x32 = torch.rand(1, 3, 600, 520, generator=torch.Generator().manual_seed(3))  # float32, above the real BAND_MAX
    monkeypatch.undo()
    g32 = gaussian_taps(40.0, 120)
    torch.testing.assert_close(blur_valid(x32, g32), blur_valid_reference(x32, g32), rtol=0, atol=2e-6)


def test_sides_smaller_than_the_taps_take_the_convolution(monkeypatch):
    calls = []
    real = blur.blur_valid_reference
    monkeypatch.setattr(blur, "blur_valid_reference", lambda x, g: calls.append(x.shape) or real(x, g))
    g = gaussian_taps(1.0, 3)
    blur_valid(torch.rand(1, 1, 30, 30), g)
    assert calls == []
    with pytest.raises(RuntimeError):  # 5 < 7 taps: the convolution's own error
        blur_valid(torch.rand(1, 1, 30, 5), g)
    assert len(calls) == 1


def test_taps_are_a_normalized_gaussian():
    g = gaussian_taps(1.5, 5, dtype=torch.float64)
    assert g.numel() == 11 and abs(float(g.sum()) - 1) < 1e-12 and torch.equal(g, g.flip(0))
    assert float(g[5] / g[6]) == pytest.approx(np.exp(1 / (2 * 1.5 ** 2)))


def test_ssim_through_the_band_path_matches_scikit_image():
    from skimage.metrics import structural_similarity
    from gaussianvision.fit.metrics import ssim
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 40, 48, generator=gen)
    b = (a + 0.1 * torch.randn(1, 3, 40, 48, generator=gen)).clamp(0, 1)
    want = structural_similarity(a[0].numpy(), b[0].numpy(), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0, channel_axis=0)
    assert float(ssim(b, a)[0]) == pytest.approx(want, abs=1e-4)
