import math

import pytest
import torch

from gaussianvision.fit.init import grid_means, hilbert_index, init_content, init_grid, init_random, initialize
from gaussianvision.fit.metrics import psnr
from gaussianvision.raster import render


@pytest.fixture(scope="module")
def photo():
    from gaussianvision.data.photos import bundled_photos
    (_, img), = bundled_photos(32, names=("astronaut",))
    return img[None]


def test_grid_means_square_is_a_regular_lattice():
    m = grid_means(64, 32, 32)
    xs, ys = m[:, 0].unique(), m[:, 1].unique()
    assert len(xs) == 8 and len(ys) == 8
    assert torch.allclose(xs, (torch.arange(8) + 0.5) * 4) and torch.allclose(ys, (torch.arange(8) + 0.5) * 4)


@pytest.mark.parametrize("n,h,w", [(37, 20, 30), (400, 224, 224), (100, 16, 64)])
def test_grid_means_cover_the_image_evenly(n, h, w):
    m = grid_means(n, h, w)
    assert m.shape == (n, 2)
    assert (m[:, 0] > 0).all() and (m[:, 0] < w).all() and (m[:, 1] > 0).all() and (m[:, 1] < h).all()
    assert len({tuple(p) for p in m.tolist()}) == n
    # nearest-neighbour distances are all close to the average spacing: no clumps, no holes
    d = torch.cdist(m, m) + torch.eye(n) * 1e9
    nn = d.min(1).values
    spacing = math.sqrt(h * w / n)
    assert nn.min() > 0.5 * spacing and nn.max() < 1.6 * spacing
    # each quadrant holds about a quarter
    q = ((m[:, 0] < w / 2).long() * 2 + (m[:, 1] < h / 2).long()).bincount(minlength=4)
    assert (q - n / 4).abs().max() <= 0.15 * n + 2


def test_hilbert_index_is_a_path_of_neighbours():
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    d = hilbert_index(xs.reshape(-1), ys.reshape(-1), 3)
    assert sorted(d.tolist()) == list(range(64))
    order = torch.argsort(d)
    pts = torch.stack([xs.reshape(-1)[order], ys.reshape(-1)[order]], -1)
    steps = (pts[1:] - pts[:-1]).abs().sum(-1)
    assert (steps == 1).all()


def test_hilbert_index_in_int32_matches_the_int64_reference_and_the_curve_is_kept_per_size():
    """The int32 computation (every size load_image makes) against the int64 reference, on a 5000 x 3 grid
    of random points up to order 13 (8192 px); the curve of a size is made once and shared."""
    from gaussianvision.fit.init import hilbert_curve
    g = torch.Generator().manual_seed(0)
    for order in (1, 5, 13):
        x, y = (torch.randint(0, 1 << order, (5000,), generator=g) for _ in range(2))
        assert torch.equal(hilbert_index(x, y, order), hilbert_index(x, y, order, wide=True))
    ys, xs = torch.meshgrid(torch.arange(20), torch.arange(28), indexing="ij")
    want = torch.argsort(hilbert_index(xs.reshape(-1), ys.reshape(-1), 5, wide=True))
    assert torch.equal(hilbert_curve(20, 28), want) and hilbert_curve(20, 28) is hilbert_curve(20, 28)


@pytest.mark.parametrize("name", ["grid", "content"])
def test_first_render_approximates_the_image(photo, name):
    s = initialize(name, photo, 64, generator=torch.Generator().manual_seed(0), backend="reference")
    s.validate()
    p0 = float(psnr(render(s, backend="reference"), photo)[0])
    # the best constant image (the mean color) reaches about 11 dB on this photo
    p_const = float(psnr(photo.mean((2, 3), keepdim=True).expand_as(photo), photo)[0])
    assert p0 > 13.0 and p0 > p_const + 2.0


def test_random_init_is_the_weak_baseline(photo):
    g = lambda: torch.Generator().manual_seed(1)
    r1, r2 = init_random(photo, 64, generator=g()), init_random(photo, 64, generator=g())
    assert torch.equal(r1.means, r2.means)
    assert (r1.means >= 0).all() and (r1.means[..., 0] <= 32).all()
    pr = float(psnr(render(r1, backend="reference"), photo)[0])
    pg = float(psnr(render(init_grid(photo, 64, backend="reference"), backend="reference"), photo)[0])
    assert pg > pr + 5


def test_content_init_puts_more_gaussians_on_detail():
    h = w = 48
    img = torch.full((1, 3, h, w), 0.5)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w // 2), indexing="ij")
    img[0, :, :, w // 2:] = ((xx // 2 + yy // 2) % 2).float()  # fine checkerboard on the right
    s = init_content(img, 100, generator=torch.Generator().manual_seed(0), backend="reference")
    right = s.means[0, :, 0] >= w / 2
    assert int(right.sum()) > 70
    assert (s.means[..., 0] >= 0).all() and (s.means[..., 0] <= w).all()
    # Gaussians on the detail are smaller than those on the flat half
    assert s.chol[0, right, 0].mean() < s.chol[0, ~right, 0].mean()


def test_content_init_sees_edges_of_equal_luminance():
    """A red square on a gray of the same luminance (0.299 R + 0.587 G + 0.114 B) is detail too:
    the density follows the color gradient, not the luminance gradient."""
    h = w = 48
    red = torch.tensor([0.8, 0.4, 0.3])
    gray = float((red * torch.tensor([0.299, 0.587, 0.114])).sum())
    img = torch.full((1, 3, h, w), gray)
    img[0, :, 16:32, 16:32] = red[:, None, None]
    s = init_content(img, 100, generator=torch.Generator().manual_seed(0), backend="reference")
    near = ((s.means[0] - 24).abs() <= 12).all(-1)  # the square and a 4-px band around its edge
    assert int(near.sum()) > 2 * 100 * (24 * 24) / (h * w)  # over twice the area's share


def test_content_init_batched_sampling_equals_the_per_image_loop():
    """The batched inverse-CDF draw gives exactly what drawing image by image gives."""
    import math
    from gaussianvision.fit.init import detail_density
    g = torch.Generator().manual_seed(3)
    img = torch.rand(3, 3, 20, 28, generator=g)
    n = 37
    s = init_content(img, n, generator=torch.Generator().manual_seed(1), backend="reference")
    dens = detail_density(img, n, floor=0.5, gamma=0.7).double()
    ys, xs = torch.meshgrid(torch.arange(20), torch.arange(28), indexing="ij")
    curve = torch.argsort(hilbert_index(xs.reshape(-1), ys.reshape(-1), math.ceil(math.log2(28))))
    u = torch.rand(1, n, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).expand(3, n, 3)
    for i in range(3):  # the same draws for every image
        d = dens[i].reshape(-1)[curve]
        cdf = torch.cumsum(d, 0) / d.sum()
        k = torch.searchsorted(cdf, (torch.arange(n, dtype=torch.float64) + u[i, :, 0]) / n).clamp_max(20 * 28 - 1)
        x = (curve[k] % 28).double() + u[i, :, 1]
        y = (curve[k] // 28).double() + u[i, :, 2]
        assert torch.equal(s.means[i], torch.stack([x, y], -1).float())
        sigma = 0.6 * torch.sqrt(1.0 / (n * d[k])).clamp(0.5, 14)
        assert torch.allclose(s.chol[i, :, 0], sigma.float())


def test_init_size_reduces_only_large_images():
    from gaussianvision.fit.init import init_size
    assert init_size(224, 224, 400) is None and init_size(768, 512, 9000) is None
    assert init_size(1448, 1448, 400) is None  # 2,096,704 pixels: just under INIT_PIXELS (2^21)
    assert init_size(4000, 6000, 9000) == (1182, 1774)  # 24 Mpixel -> about 2^21, the aspect kept
    assert init_size(4000, 6000, 1_000_000) is None  # 64 pixels per Gaussian would need more than it has
    assert init_size(4000, 6000, 100_000) == (2066, 3098)  # 6.4 Mpixel: 64 per Gaussian


@pytest.mark.parametrize("name", ["content", "grid", "random", "learned"])
def test_large_images_are_initialized_on_a_reduced_copy(name, monkeypatch):
    # a 24 Mpixel photo's content init took 14 s (density, Hilbert curve, blurs at full size); now the
    # initializers work on a copy of at most INIT_PIXELS (here lowered to 64 x 96) and the splats are scaled up
    import gaussianvision.fit.init as init_mod
    from gaussianvision.data.photos import bundled_photos
    (_, img), = bundled_photos(192, names=("coffee",))
    img = img[None, :, :128, :]  # 128 x 192
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    whole = initialize(name, img, 150, generator=gen())
    assert torch.equal(whole.means, init_mod.INITIALIZERS[name](img, 150, generator=gen()).means)  # under the limit
    monkeypatch.setattr(init_mod, "INIT_PIXELS", 64 * 96)
    monkeypatch.setattr(init_mod, "INIT_PIXELS_PER_GAUSSIAN", 1)
    reduced = initialize(name, img, 150, generator=gen())
    assert (reduced.height, reduced.width, reduced.max_gaussians) == (128, 192, 150)
    m = reduced.means[0]
    assert (m[:, 0] >= 0).all() and (m[:, 0] <= 192).all() and (m[:, 1] >= 0).all() and (m[:, 1] <= 128).all()
    if name == "random":  # reads no pixel: never reduced
        assert torch.equal(reduced.means, whole.means)
        return
    assert not (torch.equal(reduced.means, whole.means) and torch.equal(reduced.colors, whole.colors))
    # as good a start as the whole image's, within 1 dB
    assert float(psnr(render(reduced), img)) > float(psnr(render(whole), img)) - 1.0
