"""Initializers: where the Gaussians start before fitting.

All return Splats of shape [B, N] for images [B, 3, H, W] in [0, 1].
  grid    the paper's structured init: means on a regular grid, isotropic covariance
          matched to the grid spacing, colors from the blurred image divided by the
          coverage so that the very first render already approximates the image
  random  the previous method's baseline: uniform means, small random shapes and colors
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..splats.types import Splats

__all__ = ["grid_means", "init_grid", "init_random", "INITIALIZERS", "initialize", "match_colors"]


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
    x = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    c = images.shape[1]
    pad = F.pad(images, (r, r, r, r), mode="replicate")
    out = F.conv2d(pad, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _sample(images: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [B, N, 3] of images [B, 3, H, W] at pixel positions means [B, N, 2]."""
    h, w = images.shape[-2:]
    g = torch.stack([means[..., 0] / w * 2 - 1, means[..., 1] / h * 2 - 1], -1)[:, :, None]
    return F.grid_sample(images, g, mode="bilinear", padding_mode="border", align_corners=False)[..., 0].transpose(1, 2)


def match_colors(splats: Splats, images: torch.Tensor, blur_sigma: float, backend: str = "auto") -> Splats:
    """Set colors to blurred image values divided by each Gaussian's coverage (sum of unit weights)."""
    from ..raster import render
    ones = Splats(splats.means, splats.chol, torch.ones_like(splats.colors), splats.height, splats.width,
                  splats.counts)
    with torch.no_grad():
        cover = render(ones, backend=backend)[:, :1]  # [B, 1, H, W]
        cov_at = _sample(cover, splats.means)[..., :1].clamp_min(1e-3)
        target = _sample(_blur(images, blur_sigma), splats.means)
    splats.colors = (target / cov_at).to(splats.colors.dtype)
    return splats


def init_grid(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
              backend: str = "auto", width_factor: float = 0.7) -> Splats:
    b, _, h, w = images.shape
    means = grid_means(n, h, w).to(images.device, images.dtype)[None].repeat(b, 1, 1)
    spacing = math.sqrt(h * w / max(n, 1))
    sig = width_factor * spacing
    chol = means.new_zeros(b, n, 3)
    chol[..., 0] = sig
    chol[..., 2] = sig
    s = Splats(means, chol, means.new_zeros(b, n, 3), h, w)
    return match_colors(s, images, blur_sigma=0.5 * spacing, backend=backend)


def init_random(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
                backend: str = "auto") -> Splats:
    b, _, h, w = images.shape
    dev, dt = images.device, images.dtype
    u = torch.rand(b, n, 5, generator=generator).to(dev, dt)
    means = u[..., :2] * means_scale(h, w, dev, dt)
    spacing = math.sqrt(h * w / max(n, 1))
    chol = torch.stack([spacing * (0.3 + 0.7 * u[..., 2]), spacing * (u[..., 3] - 0.5) * 0.5,
                        spacing * (0.3 + 0.7 * u[..., 4])], -1)
    colors = torch.rand(b, n, 3, generator=generator).to(dev, dt) * 0.5
    return Splats(means, chol, colors, h, w)


def means_scale(h: int, w: int, device, dtype) -> torch.Tensor:
    return torch.tensor([w, h], device=device, dtype=dtype)


INITIALIZERS = {"grid": init_grid, "random": init_random}


def initialize(name: str, images: torch.Tensor, n: int, generator=None, backend: str = "auto") -> Splats:
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; choose one of {sorted(INITIALIZERS)}")
    return INITIALIZERS[name](images, n, generator=generator, backend=backend)
