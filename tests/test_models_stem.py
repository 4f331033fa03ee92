"""SplatStem features (known answers, invariances) and the Perceiver resampler's set semantics."""
import math

import pytest
import torch

from conftest import random_splats
from gaussianvision.models import PerceiverResampler, SplatStem, splat_features
from gaussianvision.models.stem import RAW_FEATURES
from gaussianvision.splats import Splats


def one(means, chol, colors, h, w):
    t = lambda v: torch.tensor([[v]], dtype=torch.float32)  # noqa: E731
    return Splats(t(means), t(chol), t(colors), h, w)


def test_features_known_answer_isotropic_centre():
    s = one([112.0, 112.0], [3.0, 0.0, 3.0], [1.0, 0.0, 0.5], 224, 224)
    f, m = splat_features(s, log_sigma_center=-3.5, log_sigma_width=1.5)
    ls = (math.log(3.0 * 2 / 224) + 3.5) / 1.5
    expect = torch.tensor([0.0, 0.0, ls, ls, 0.0, 0.0, 1.0, -1.0, 0.0])
    assert m.tolist() == [[True]] and list(f.shape) == [1, 1, len(RAW_FEATURES)]
    torch.testing.assert_close(f[0, 0], expect, atol=1e-6, rtol=1e-6)


def test_features_corners_orientation_and_non_square_image():
    # W = 200, H = 100: x = 200 is u = +1, y = 0 is v = -1; L = diag(4, 2) px, axis-aligned
    s = one([200.0, 0.0], [4.0, 0.0, 2.0], [0.5, 0.5, 0.5], 100, 200)
    f, _ = splat_features(s, 0.0, 1.0)
    su, sv = 4.0 * 2 / 200, 2.0 * 2 / 100  # sigmas in normalized units: 0.04, 0.04
    assert f[0, 0, 0].item() == pytest.approx(1.0) and f[0, 0, 1].item() == pytest.approx(-1.0)
    assert f[0, 0, 2].item() == pytest.approx(math.log(su), abs=1e-5)
    assert f[0, 0, 3].item() == pytest.approx(math.log(sv), abs=1e-5)
    assert f[0, 0, 4:6].abs().max().item() < 1e-6  # round in normalized units: no orientation
    # 45 degrees: Sigma = R diag(9, 1) R^T = [[5, 4], [4, 5]] -> o = (0, 8/10) on a square image
    l11 = math.sqrt(5.0)
    l21 = 4.0 / l11
    l22 = math.sqrt(5.0 - l21 * l21)
    f, _ = splat_features(one([10.0, 10.0], [l11, l21, l22], [0, 0, 0], 64, 64), 0.0, 1.0)
    assert f[0, 0, 4].item() == pytest.approx(0.0, abs=1e-6)
    assert f[0, 0, 5].item() == pytest.approx(0.8, abs=1e-6)
    assert f[0, 0, 2].item() == pytest.approx(math.log(3 * 2 / 64), abs=1e-5)
    assert f[0, 0, 3].item() == pytest.approx(math.log(1 * 2 / 64), abs=1e-5)


def test_thin_gaussian_small_sigma_is_accurate():
    # mid - rad would cancel catastrophically in float32; det / lam1 does not
    s = one([5.0, 5.0], [50.0, 0.0, 0.01], [0, 0, 0], 100, 100)
    f, _ = splat_features(s, 0.0, 1.0)
    assert f[0, 0, 3].item() == pytest.approx(math.log(0.01 * 2 / 100), abs=1e-4)


def test_features_invariant_to_resolution():
    s = random_splats(2, 30, 40, 60)
    f1, _ = splat_features(s)
    f2, _ = splat_features(s.scaled(120, 90))
    torch.testing.assert_close(f1, f2, atol=2e-5, rtol=1e-5)


def test_fourier_layout_and_values():
    stem = SplatStem(16, pos_bands=3, shape_bands=2, hidden=0)
    assert stem.in_features == 9 + 4 * 3 + 8 * 2
    s = random_splats(1, 4, 32, 32)
    f, _ = splat_features(s, stem.log_sigma_center, stem.log_sigma_width)
    x = stem.encode_features(f)
    u = f[..., 0]
    # layout: raw (9) | pos: sin(u b0..b2), sin(v ..), cos(u ..), cos(v ..) | shape: same for 4 values
    torch.testing.assert_close(x[..., 9 + 2], torch.sin(4 * math.pi * u))
    torch.testing.assert_close(x[..., 9 + 6 + 1], torch.cos(2 * math.pi * u))
    ls1 = f[..., 2]
    torch.testing.assert_close(x[..., 9 + 12 + 1], torch.sin(2 * math.pi * ls1))


def test_padding_garbage_gives_zero_finite_tokens():
    s = random_splats(2, 6, 32, 32)
    s.chol[1, 3:] = torch.tensor([-1.0, float("nan"), 0.0])
    s.means[1, 3:] = float("inf")
    s.counts = torch.tensor([6, 3])
    stem = SplatStem(8, hidden=12)
    tok, mask = stem(s)
    assert torch.isfinite(tok).all()
    assert (tok[1, 3:] == 0).all() and mask[1].tolist() == [True] * 3 + [False] * 3


# ------------------------------------------------------------------ resampler
@pytest.fixture
def resampler():
    torch.manual_seed(1)
    return PerceiverResampler(32, num_latents=5, layers=2, heads=4, mlp_ratio=2.0).eval()


def test_resampler_order_free(resampler):
    x = torch.randn(2, 50, 32)
    perm = torch.randperm(50)
    torch.testing.assert_close(resampler(x), resampler(x[:, perm]), atol=1e-5, rtol=1e-5)


def test_resampler_padding_and_mixed_n(resampler):
    a, b = torch.randn(1, 7, 32), torch.randn(1, 3, 32)
    batch = torch.full((2, 9, 32), 1e4)  # huge garbage behind the mask
    batch[0, :7], batch[1, :3] = a[0], b[0]
    mask = torch.arange(9)[None] < torch.tensor([[7], [3]])
    out = resampler(batch, mask)
    torch.testing.assert_close(out[0:1], resampler(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:2], resampler(b), atol=1e-5, rtol=1e-5)
    # a set with no valid element is still defined (latents attend to themselves)
    empty = resampler(batch, torch.zeros(2, 9, dtype=torch.bool))
    assert torch.isfinite(empty).all()
    torch.testing.assert_close(empty[0], empty[1])


def test_resampler_shapes_and_errors(resampler):
    assert resampler(torch.randn(3, 11, 32)).shape == (3, 5, 32)
    with pytest.raises(ValueError, match=r"tokens must be \[B, N, 32\]"):
        resampler(torch.randn(3, 11, 16))
    with pytest.raises(ValueError, match="mask must be"):
        resampler(torch.randn(3, 11, 32), torch.ones(3, 10, dtype=torch.bool))


def test_resampler_narrow_tokens_and_gradients():
    r = PerceiverResampler(32, num_latents=4, layers=1, heads=2, token_dim=8)
    x = torch.randn(2, 10, 8, requires_grad=True)
    r(x).square().sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in r.parameters())
