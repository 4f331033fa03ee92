"""The learned initializer (fit/learned_init.py): its geometry against a reference, its weights'
round trip, that an untrained network is exactly the content init, and that the shipped network
starts better than the content init on photos it was not shown at this size."""
import math

import numpy as np
import pytest
import torch

from gaussianvision.fit.colors import solve_colors
from gaussianvision.fit.init import init_content, initialize
from gaussianvision.fit.learned_init import (WEIGHTS_PATH, InitNet, init_learned, load_init_net, save_init_net,
                                             shape_gaussians)
from gaussianvision.fit.metrics import psnr
from gaussianvision.raster import render
from gaussianvision.splats.params import chol_to_cov
from gaussianvision.splats.types import Splats


@pytest.fixture(scope="module")
def photos():
    from gaussianvision.data.photos import bundled_photos
    return torch.stack([t for _, t in bundled_photos(96)])


def _images(b=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([x, y, (x * y)], 0)[None].repeat(b, 1, 1, 1)
    edge = ((x - 0.5) * 3 + (y - 0.4) > 0).float()[None, None]
    return (0.6 * base + 0.3 * edge + 0.1 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1)


def test_shape_gaussians_matches_the_matrix_exponential():
    torch.manual_seed(0)
    raw = torch.randn(2, 7, 5) * 2
    means = torch.rand(2, 7, 2) * 30 + 1
    sigma = torch.rand(2, 7) * 3 + 0.5
    new_means, chol = shape_gaussians(raw, means, sigma, 32, 40)
    t = 1.5 * torch.tanh(raw[..., 2:])
    m = torch.stack([torch.stack([t[..., 0], t[..., 1]], -1), torch.stack([t[..., 1], t[..., 2]], -1)], -2)
    ref = (sigma ** 2)[..., None, None] * torch.linalg.matrix_exp(m)
    cov = chol_to_cov(chol)
    torch.testing.assert_close(cov, torch.stack([ref[..., 0, 0], ref[..., 0, 1], ref[..., 1, 1]], -1),
                               rtol=1e-4, atol=1e-5)
    shift = 0.5 * torch.tanh(raw[..., :2]) * sigma[..., None]
    expect = torch.minimum((means + shift).clamp_min(0), torch.tensor([40.0, 32.0]))
    torch.testing.assert_close(new_means, expect)


def test_zero_output_is_the_content_init_exactly():
    imgs = _images()
    net = InitNet()  # last layer starts at zero
    a = init_learned(imgs, 40, generator=torch.Generator().manual_seed(3), net=net, backend="reference")
    b = init_content(imgs, 40, generator=torch.Generator().manual_seed(3), backend="reference")
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.chol, b.chol)
    torch.testing.assert_close(a.colors, b.colors)


def test_weights_round_trip_exactly_without_pickle(tmp_path):
    torch.manual_seed(1)
    net = InitNet()
    for p in net.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "w.npz"
    save_init_net(net, path)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert set(z.files) == set(net.state_dict()) | {"__widths__"}
    back = load_init_net(path)
    for k, v in net.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m gaussianvision.apps.initnet"):
        load_init_net(tmp_path / "none.npz")


def test_the_shipped_network_starts_better_than_content(photos):
    """On the bundled photos at 96 px (trained on 112 px crops of larger versions), with the
    least-squares colors of each geometry, the learned init's squared error is lower."""
    assert WEIGHTS_PATH.is_file(), "the shipped weights are part of the package"
    imgs = photos
    for n in (100, 300):
        scores = []
        for init in ("content", "learned"):
            s = initialize(init, imgs, n, generator=torch.Generator().manual_seed(0))
            s = Splats(s.means, s.chol, solve_colors(s, imgs, 8), s.height, s.width)
            scores.append(psnr(render(s), imgs).mean().item())
        assert scores[1] > scores[0] + 0.1, (n, scores)


def test_learned_init_is_an_option_of_the_fitter_on_every_backend(photos):
    """gsv fit --init learned: the numba fit follows the reference renderer's fit."""
    from gaussianvision.fit import FitConfig, fit_images
    imgs = photos[:2, :, :40, :40].contiguous()
    runs = [fit_images(imgs, 30, config=FitConfig(iters=3, init="learned", backend=be, color_solve=2))
            for be in ("reference", "numba")]
    torch.testing.assert_close(runs[0].splats.means, runs[1].splats.means, rtol=1e-3, atol=1e-3)
    assert all(math.isfinite(m["psnr"]) for m in runs[1].metrics)
