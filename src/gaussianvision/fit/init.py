"""Initializers: where the Gaussians start before fitting.

All take images [B, 3, H, W] in [0, 1] and return Splats [B, N] on the images' device.
  grid     the paper's structured init: means on a near-regular grid, isotropic covariance
           matched to the grid spacing, colors from the blurred image divided by the local
           coverage, so that the very first render already approximates the image
  content  beyond the paper: more Gaussians where the image has detail. Means are drawn with
           probability proportional to a smoothed gradient magnitude (plus a floor so flat
           regions keep some), stratified along a Hilbert curve so they do not clump; each
           Gaussian's size follows the local density; colors as for `grid`
  random   the previous method's baseline: uniform means, random shapes and colors
  learned  `content`, then a small trained network shifts each Gaussian and makes it
           anisotropic from the pixels around it (fit/learned_init.py)
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..splats.types import Splats
from .blur import blur_valid, gaussian_taps

__all__ = ["grid_means", "init_grid", "init_random", "init_content", "INITIALIZERS", "initialize",
           "match_colors", "detail_density", "init_size", "INIT_PIXELS", "hilbert_index", "hilbert_curve"]


def grid_means(n: int, height: int, width: int) -> torch.Tensor:
    """[n, 2] (x, y) means on a near-regular grid covering the image evenly.

    Rows: round(sqrt(n * H / W)); the n points are spread as evenly as possible over the
    rows, each row's points evenly spaced (cell centres)."""
    if n <= 0:
        return torch.zeros(0, 2)
    rows = max(1, min(n, round(math.sqrt(n * height / width))))
    per_row = [n // rows + (1 if r < n % rows else 0) for r in range(rows)]
    pts = []
    for r, k in enumerate(per_row):
        y = (r + 0.5) * height / rows
        xs = (torch.arange(k, dtype=torch.float32) + 0.5) * width / k
        pts.append(torch.stack([xs, torch.full_like(xs, y)], -1))
    return torch.cat(pts, 0)


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma < 0.3:
        return images
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, max(1, min(images.shape[-2:]) - 1))  # replicate padding needs r < size
    g = gaussian_taps(sigma, r, images.device, images.dtype)
    return blur_valid(F.pad(images, (r, r, r, r), mode="replicate"), g)


def _sample(images: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [B, N, C] of images [B, C, H, W] at pixel positions means [B, N, 2]."""
    h, w = images.shape[-2:]
    g = torch.stack([means[..., 0] / w * 2 - 1, means[..., 1] / h * 2 - 1], -1)[:, :, None]
    return F.grid_sample(images, g, mode="bilinear", padding_mode="border", align_corners=False)[..., 0].transpose(1, 2)


def match_colors(splats: Splats, images: torch.Tensor, blur_sigma: float, backend: str = "auto") -> Splats:
    """Set colors to blurred image values divided by each Gaussian's coverage.

    The coverage at a Gaussian's mean is the sum of all unit-color Gaussians there; dividing
    by it makes overlapping Gaussians share the color instead of adding up to too much."""
    from ..raster import render
    ones = Splats(splats.means, splats.chol, torch.ones_like(splats.colors), splats.height, splats.width,
                  splats.counts)
    with torch.no_grad():
        cover = render(ones, backend=backend)[:, :1]  # [B, 1, H, W]
        cov_at = _sample(cover, splats.means)[..., :1].clamp_min(0.2)
        target = _sample(_blur(images, blur_sigma), splats.means)
    splats.colors = (target / cov_at).to(splats.colors.dtype)
    return splats


def _iso_chol(sigma: torch.Tensor) -> torch.Tensor:
    """[..., 3] Cholesky factors of isotropic Gaussians with standard deviation sigma [...]."""
    return torch.stack([sigma, torch.zeros_like(sigma), sigma], -1)


def init_grid(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
              backend: str = "auto", width_factor: float = 0.6, blur_factor: float = 0.3) -> Splats:
    """Grid means; sigma = width_factor x spacing; colors blurred at blur_factor x spacing."""
    b, _, h, w = images.shape
    means = grid_means(n, h, w).to(images.device, images.dtype)[None].repeat(b, 1, 1)
    spacing = math.sqrt(h * w / max(n, 1))
    chol = _iso_chol(means.new_full((b, n), width_factor * spacing))
    s = Splats(means, chol, means.new_zeros(b, n, 3), h, w)
    return match_colors(s, images, blur_sigma=blur_factor * spacing, backend=backend)


def hilbert_index(x: torch.Tensor, y: torch.Tensor, order: int, wide: bool = False) -> torch.Tensor:
    """Position along the Hilbert curve of a 2^order x 2^order grid for integer x, y (int64). Computed in int32
    where the positions fit (order <= 15: every size load_image makes), 2.5-3.5x faster than in int64 on
    large images (a 2000 x 3000 photo: 3.1 -> 0.9 s); `wide` computes in int64, the reference."""
    dtype = torch.int64 if wide or order > 15 else torch.int32
    n = 1 << order
    x, y = x.to(dtype), y.to(dtype)
    d = torch.zeros_like(x)
    s = n >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.to(dtype)) ^ ry.to(dtype))
        flip = ~ry & rx
        x = torch.where(flip, n - 1 - x, x)
        y = torch.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = torch.where(swap, y, x), torch.where(swap, x, y)
        s >>= 1
    return d.long()


CURVE_CACHE_PIXELS = 1 << 22  # curves of sizes up to this many pixels are kept (8 bytes a pixel: 32 MiB at most)


def hilbert_curve(height: int, width: int) -> torch.Tensor:
    """The pixel ids (row-major, int64, on the CPU) of a height x width image in Hilbert-curve order; the same
    for every image of a size, so kept for the last four sizes up to CURVE_CACHE_PIXELS (do not modify it). A
    lone 224 px photo's fit spent 9 ms making it, a 2000 x 3000 photo's 3.4 s (now 1.0 s, in int32)."""
    if height * width <= CURVE_CACHE_PIXELS:
        return _kept_curve(height, width)
    return _curve(height, width)


@functools.lru_cache(maxsize=4)
def _kept_curve(height: int, width: int) -> torch.Tensor:
    return _curve(height, width)


def _curve(height: int, width: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    order = max(1, math.ceil(math.log2(max(height, width))))
    return torch.argsort(hilbert_index(xs.reshape(-1), ys.reshape(-1), order))


def detail_density(images: torch.Tensor, n: int, floor: float = 0.5, gamma: float = 0.7) -> torch.Tensor:
    """[B, H, W] sampling density (each image sums to 1): smoothed gradient magnitude.

    `floor` (relative to the mean) keeps flat regions covered; gamma < 1 tempers edges so
    they do not take every Gaussian."""
    b, _, h, w = images.shape
    spacing = math.sqrt(h * w / max(n, 1))
    img = _blur(images, 0.5)
    gx = F.pad(img[..., :, 2:] - img[..., :, :-2], (1, 1, 0, 0), mode="replicate") * 0.5
    gy = F.pad(img[..., 2:, :] - img[..., :-2, :], (0, 0, 1, 1), mode="replicate") * 0.5
    # the color gradient's norm over R, G, B (/ sqrt 3: a gray edge scores as its luminance step),
    # not the luminance gradient: an object can have the luminance of its background
    mag = (torch.sqrt((gx * gx + gy * gy).sum(1, keepdim=True) / 3.0) ** gamma)
    mag = _blur(mag, 0.5 * spacing)[:, 0]
    mean = mag.flatten(1).mean(1).clamp_min(1e-8)[:, None, None]
    dens = mag / mean + floor
    return dens / dens.flatten(1).sum(1)[:, None, None]


def init_content(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
                 backend: str = "auto", width_factor: float = 0.6, blur_factor: float = 0.3,
                 floor: float = 0.5, gamma: float = 0.7) -> Splats:
    """Detail-weighted means (stratified along a Hilbert curve), sizes from the local density."""
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    # in float64 where the images are: on a GPU the [B, H*W] sampling never leaves it (a batch of 4096
    # at 224 px copied to the host and scanned there cost 0.33 ms per image); the draws come from
    # `generator` (on the CPU) whatever the device, so CPU and GPU fits sample the same positions
    dens = detail_density(images, n, floor=floor, gamma=gamma).double()  # [B, H, W]
    curve = hilbert_curve(h, w).to(dev)  # pixel ids along the curve
    # one draw for the batch, the same for every image: an image's start never depends on its place in the batch
    u = torch.rand(1, n, 3, generator=generator, dtype=torch.float64).to(dev).expand(b, n, 3)
    d = dens.reshape(b, -1)[:, curve]  # [B, HW] along the curve
    cdf = torch.cumsum(d, 1)
    cdf = cdf / cdf[:, -1:]
    strata = (torch.arange(n, dtype=torch.float64, device=dev) + u[..., 0]) / n  # one draw per 1/n of the mass
    k = torch.searchsorted(cdf, strata.contiguous()).clamp_max(h * w - 1)  # [B, n]
    pix = curve[k]
    means = torch.stack([(pix % w).double() + u[..., 1],
                         torch.div(pix, w, rounding_mode="floor").double() + u[..., 2]], -1)
    area = 1.0 / (n * torch.gather(d, 1, k))  # pixels per Gaussian around each one
    sigma = width_factor * torch.sqrt(area).clamp(0.5, 0.5 * max(h, w))
    means = means.to(dev, dt)
    s = Splats(means, _iso_chol(sigma.to(dev, dt)), means.new_zeros(b, n, 3), h, w)
    spacing = math.sqrt(h * w / max(n, 1))
    return match_colors(s, images, blur_sigma=blur_factor * spacing * 0.5, backend=backend)


def init_random(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
                backend: str = "auto") -> Splats:
    """Uniform means, random anisotropic shapes around the average spacing, random colors."""
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    u = torch.rand(1, n, 5, generator=generator).to(dev, dt).expand(b, n, 5)  # the same draws for every image
    means = u[..., :2] * torch.tensor([w, h], device=dev, dtype=dt)
    spacing = math.sqrt(h * w / max(n, 1))
    chol = torch.stack([spacing * (0.3 + 0.7 * u[..., 2]), spacing * (u[..., 3] - 0.5) * 0.5,
                        spacing * (0.3 + 0.7 * u[..., 4])], -1)
    colors = torch.rand(1, n, 3, generator=generator).to(dev, dt).expand(b, n, 3) * 0.5
    return Splats(means, chol, colors, h, w)


def _learned(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
             backend: str = "auto") -> Splats:
    """`content`, then each Gaussian shifted and shaped by a small trained network (fit/learned_init.py)."""
    from .learned_init import init_learned  # imports this module: loaded on first use
    return init_learned(images, n, generator=generator, backend=backend)


INITIALIZERS = {"grid": init_grid, "content": init_content, "random": init_random, "learned": _learned}


# A large image is initialized on a copy reduced (area) to INIT_PIXELS, or to INIT_PIXELS_PER_GAUSSIAN times
# n where that is more, and the splats are scaled back up (Splats.scaled): the initializers' work (density,
# Hilbert curve, blurs, coverage render) grows with the pixels, and a 24 Mpixel photo's `content` init took
# 14.1 s before its first iteration, 0.7 s reduced. Every image up to 1448 x 1448 is initialized at its own size.
INIT_PIXELS = 1 << 21
INIT_PIXELS_PER_GAUSSIAN = 64


def init_size(height: int, width: int, n: int) -> tuple[int, int] | None:
    """(height, width) of the reduced copy a height x width image is initialized on for n Gaussians, or None
    where it is initialized at its own size (up to max(INIT_PIXELS, INIT_PIXELS_PER_GAUSSIAN * n) pixels)."""
    most = max(INIT_PIXELS, INIT_PIXELS_PER_GAUSSIAN * n)
    if height * width <= most:
        return None
    f = math.sqrt(height * width / most)
    return max(1, round(height / f)), max(1, round(width / f))


def initialize(name: str, images: torch.Tensor, n: int, generator=None, backend: str = "auto") -> Splats:
    """Splats [B, n] for images [B, 3, H, W] by the initializer called `name`; a large image through a
    reduced copy (init_size; not for `random`, which reads no pixel)."""
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; choose one of {sorted(INITIALIZERS)}")
    h, w = images.shape[-2:]
    size = None if name == "random" else init_size(h, w, n)
    if size is None:
        return INITIALIZERS[name](images, n, generator=generator, backend=backend)
    small = F.interpolate(images, size=size, mode="area")
    return INITIALIZERS[name](small, n, generator=generator, backend=backend).scaled(h, w)
