import math

import pytest
import torch

from conftest import random_splats
from gaussianvision.raster import CUTOFF_Q, render, render_reference
from gaussianvision.splats import Splats


def one(mx, my, l11, l21, l22, color=(1.0, 0.5, 0.25), h=21, w=21, dtype=torch.float64):
    t = lambda v: torch.tensor(v, dtype=dtype)
    return Splats(t([[[mx, my]]]), t([[[l11, l21, l22]]]), t([[color]]), h, w)


def test_single_gaussian_peak_and_falloff():
    s = one(10.5, 10.5, 2.0, 0.0, 2.0)
    img = render_reference(s)
    assert img.shape == (1, 3, 21, 21)
    assert img[0, :, 10, 10].tolist() == pytest.approx([1.0, 0.5, 0.25])  # centre pixel = peak
    # one pixel right: d = (1, 0), q = 1/4 -> exp(-1/8)
    assert float(img[0, 0, 10, 11]) == pytest.approx(math.exp(-0.125))
    # anisotropic, sheared: check against the closed form at an off-axis pixel
    s = one(10.5, 10.5, 3.0, 1.0, 1.5)
    img = render_reference(s)
    d = torch.tensor([2.0, -1.0], dtype=torch.float64)  # pixel (row 9, col 12)
    L = torch.tensor([[3.0, 0.0], [1.0, 1.5]], dtype=torch.float64)
    q = d @ torch.linalg.inv(L @ L.T) @ d
    assert float(img[0, 0, 9, 12]) == pytest.approx(math.exp(-0.5 * float(q)))


def test_three_sigma_cutoff():
    s = one(0.5, 0.5, 1.0, 0.0, 1.0, h=1, w=8)
    row = render_reference(s)[0, 0, 0]
    # d = 0, 1, 2, 3 px are inside (q <= 9), d = 4 is culled
    assert row[:4].tolist() == pytest.approx([math.exp(-0.5 * k * k) for k in range(4)])
    assert row[4:].abs().max() == 0.0
    assert CUTOFF_Q == 9.0


def test_empty_is_black_and_padding_ignored():
    s = Splats(torch.zeros(2, 0, 2), torch.zeros(2, 0, 3), torch.zeros(2, 0, 3), 5, 7)
    assert torch.equal(render_reference(s), torch.zeros(2, 3, 5, 7))
    s = random_splats(2, 4, 9, 9)
    padded = Splats(s.means.clone(), s.chol.clone(), s.colors.clone(), 9, 9, torch.tensor([2, 4]))
    padded.chol[0, 2:] = 0.0  # garbage in padding must not leak (no NaN)
    padded.means[0, 2:] = float("nan")
    ref = render_reference(Splats(s.means[:1, :2], s.chol[:1, :2], s.colors[:1, :2], 9, 9))
    out = render_reference(padded)
    assert torch.allclose(out[0], ref[0]) and torch.isfinite(out).all()


def test_translation_equivariance():
    s = random_splats(1, 6, 24, 24, seed=4)
    a = render_reference(s)
    s2 = Splats(s.means + torch.tensor([3.0, 2.0]), s.chol, s.colors, 24, 24)
    b = render_reference(s2)
    assert torch.allclose(b[..., 2:, 3:], a[..., :-2, :-3], atol=1e-5)


def test_gaussian_outside_image():
    far = one(-50.0, -50.0, 2.0, 0.0, 2.0)
    assert render_reference(far).abs().max() == 0.0
    near = one(-1.0, 5.0, 2.0, 0.0, 2.0)  # centre off-image, footprint reaches in
    img = render_reference(near)
    assert img[0, 0, 5, 0] > 0.5 and img[0, 0, 5, 6] == 0.0


def test_chunking_does_not_change_result_and_is_differentiable():
    s = random_splats(1, 3, 7, 9, seed=2, dtype=torch.float64)
    a = render_reference(s)
    b = render_reference(s, max_pairs=50)
    assert torch.allclose(a, b)
    for t in (s.means, s.chol, s.colors):
        t.requires_grad_(True)
    torch.autograd.gradcheck(lambda m, c, k: render_reference(Splats(m, c, k, 7, 9), max_pairs=40),
                             (s.means, s.chol, s.colors), eps=1e-6, atol=1e-5)


def test_render_entry_point_scales():
    s = one(4.0, 4.0, 1.0, 0.0, 1.0, h=8, w=8, dtype=torch.float32)
    big = render(s, 16, 16, backend="reference")
    assert big.shape == (1, 3, 16, 16)
    assert float(big[0, 0, 8, 8]) == pytest.approx(math.exp(-0.5 * (0.5 ** 2 * 2) / 4), rel=1e-5)
    with pytest.raises(ValueError, match="unknown render backend"):
        render(s, backend="nope")
