"""The splat-aware stem: one token per Gaussian.

Features of Gaussian i (all computed in float32, in the image's NORMALIZED coordinates
u = 2x/W - 1, v = 2y/H - 1, so the image spans [-1, 1]^2 whatever its pixel size and the
features of ``splats.scaled(h, w)`` equal those of ``splats``):

  raw (9 numbers):
    u, v                    normalized position of the mean
    ls1, ls2                (log sigma_k - center) / width, sigma_1 >= sigma_2 the standard
                            deviations along the principal axes of the normalized covariance
                            (log scaling; center/width are fixed config constants, default
                            -3.5 / 1.5, i.e. sigma of 1.3 px maps to about -1 and 20 px to
                            about +1 on a 224 x 224 image)
    o1, o2                  ((s_uu - s_vv), 2 s_uv) / (s_uu + s_vv) = a (cos 2 theta, sin 2 theta)
                            with anisotropy a = (s1^2 - s2^2) / (s1^2 + s2^2): the orientation,
                            continuous everywhere (theta is undefined for round Gaussians,
                            where the vector is 0) and insensitive to theta ~ theta + pi
    r, g, b                 2 c - 1 (colors are centred, not squashed: fits may leave [0, 1])
  Fourier (2 * 2 * pos_bands + 2 * 4 * shape_bands numbers):
    sin(2^k pi p), cos(2^k pi p) for k < pos_bands and p in (u, v), and for k < shape_bands
    and p in (ls1, ls2, o1, o2).

[raw, Fourier] -> Linear -> (GELU -> Linear, when hidden > 0) -> token of width token_dim.
Padding Gaussians (outside ``splats.mask()``) get all-zero tokens (never NaN), and the
resampler masks them out anyway.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gaussianvision.splats.types import Splats

__all__ = ["SplatStem", "splat_features", "RAW_FEATURES"]

RAW_FEATURES = ("u", "v", "ls1", "ls2", "o1", "o2", "r", "g", "b")
_GEOMETRY_EPS = 1e-12  # variance floor (normalized units^2): a 1e-6-wide Gaussian, far below a pixel


def splat_features(splats: Splats, log_sigma_center: float = -3.5, log_sigma_width: float = 1.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 9 raw features of every Gaussian and the validity mask.

    Returns (features [B, N, 9] float32 in RAW_FEATURES order, mask [B, N] bool).
    Padding entries are 0.
    """
    mask = splats.mask()
    means = splats.means.float()
    chol = splats.chol.float()
    colors = splats.colors.float()
    # padding may hold anything (zeros, garbage): give it a harmless unit Gaussian before logs
    unit = chol.new_tensor([1.0, 0.0, 1.0])
    chol = torch.where(mask[..., None], chol, unit)
    h, w = float(splats.height), float(splats.width)
    u = means[..., 0] * (2.0 / w) - 1.0
    v = means[..., 1] * (2.0 / h) - 1.0
    # L -> D L with D = diag(2/W, 2/H) expresses the covariance in normalized coordinates
    l11 = chol[..., 0] * (2.0 / w)
    l21 = chol[..., 1] * (2.0 / h)
    l22 = chol[..., 2] * (2.0 / h)
    suu = l11 * l11
    suv = l11 * l21
    svv = l21 * l21 + l22 * l22
    tr = suu + svv
    mid = 0.5 * tr
    rad = torch.sqrt(0.25 * (suu - svv) ** 2 + suv * suv)
    lam1 = mid + rad
    # det / lam1 is the small eigenvalue without the cancellation of mid - rad
    lam2 = (suu * svv - suv * suv).clamp_min(0.0) / lam1.clamp_min(_GEOMETRY_EPS)
    ls1 = (0.5 * torch.log(lam1.clamp_min(_GEOMETRY_EPS)) - log_sigma_center) / log_sigma_width
    ls2 = (0.5 * torch.log(lam2.clamp_min(_GEOMETRY_EPS)) - log_sigma_center) / log_sigma_width
    trc = tr.clamp_min(_GEOMETRY_EPS)
    o1 = (suu - svv) / trc
    o2 = 2.0 * suv / trc
    rgb = colors * 2.0 - 1.0
    feats = torch.cat([torch.stack([u, v, ls1, ls2, o1, o2], -1), rgb], -1)
    feats = torch.where(mask[..., None], feats, torch.zeros_like(feats))
    return feats, mask


def _fourier(x: torch.Tensor, bands: int) -> torch.Tensor:
    """[..., D] -> [..., 2 * D * bands]: sin and cos of 2^k pi x."""
    if bands == 0:
        return x.new_zeros(*x.shape[:-1], 0)
    freqs = math.pi * (2.0 ** torch.arange(bands, device=x.device, dtype=x.dtype))
    arg = (x[..., :, None] * freqs).flatten(-2)
    return torch.cat([torch.sin(arg), torch.cos(arg)], -1)


class SplatStem(nn.Module):
    """Splats -> Gaussian tokens [B, N, token_dim] (+ mask [B, N]); see the module docstring."""

    def __init__(self, token_dim: int, pos_bands: int = 8, shape_bands: int = 4, hidden: int = 0,
                 log_sigma_center: float = -3.5, log_sigma_width: float = 1.5):
        super().__init__()
        self.pos_bands = int(pos_bands)
        self.shape_bands = int(shape_bands)
        self.log_sigma_center = float(log_sigma_center)
        self.log_sigma_width = float(log_sigma_width)
        self.in_features = len(RAW_FEATURES) + 4 * self.pos_bands + 8 * self.shape_bands
        self.token_dim = int(token_dim)
        if hidden:
            self.proj = nn.Sequential(nn.Linear(self.in_features, hidden), nn.GELU(),
                                      nn.Linear(hidden, self.token_dim))
        else:
            self.proj = nn.Linear(self.in_features, self.token_dim)

    def encode_features(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, N, 9] raw features -> [B, N, in_features] (raw + Fourier), float32."""
        return torch.cat([feats, _fourier(feats[..., 0:2], self.pos_bands),
                          _fourier(feats[..., 2:6], self.shape_bands)], -1)

    def forward(self, splats: Splats) -> tuple[torch.Tensor, torch.Tensor]:
        feats, mask = splat_features(splats, self.log_sigma_center, self.log_sigma_width)
        x = self.encode_features(feats)
        weight_dtype = next(self.proj.parameters()).dtype
        tokens = self.proj(x.to(weight_dtype))
        tokens = torch.where(mask[..., None], tokens, torch.zeros_like(tokens))
        return tokens, mask
