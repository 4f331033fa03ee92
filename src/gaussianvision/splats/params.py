"""Conversions between the parameterizations of a 2D covariance.

All functions act on the last dimension and broadcast over leading ones.
  * chol:       (l11, l21, l22) of L with Sigma = L L^T, l11 > 0, l22 > 0
  * cov:        (s_xx, s_xy, s_yy), the upper triangle of Sigma
  * scale_rot:  (sigma_1, sigma_2, theta): Sigma = R(theta) diag(s1^2, s2^2) R(theta)^T,
                sigma_1 >= sigma_2 > 0, theta in (-pi/2, pi/2]
  * conic:      (a, b, c), the upper triangle of Sigma^{-1}; the Mahalanobis form is
                q(d) = a dx^2 + 2 b dx dy + c dy^2
Each pair has a tested inverse (up to the uniqueness of the target form).
"""
from __future__ import annotations

import torch

__all__ = [
    "chol_to_cov", "cov_to_chol", "cov_to_scale_rot", "scale_rot_to_cov",
    "cov_to_conic", "conic_to_cov", "chol_to_conic", "chol_to_scale_rot", "scale_rot_to_chol",
    "luminance", "sigma_cutoff_radius",
]


def chol_to_cov(chol: torch.Tensor) -> torch.Tensor:
    l11, l21, l22 = chol.unbind(-1)
    return torch.stack([l11 * l11, l11 * l21, l21 * l21 + l22 * l22], -1)


def cov_to_chol(cov: torch.Tensor) -> torch.Tensor:
    sxx, sxy, syy = cov.unbind(-1)
    l11 = torch.sqrt(sxx)
    l21 = sxy / l11
    l22 = torch.sqrt(torch.clamp(syy - l21 * l21, min=0.0))
    return torch.stack([l11, l21, l22], -1)


def cov_to_scale_rot(cov: torch.Tensor) -> torch.Tensor:
    sxx, sxy, syy = cov.unbind(-1)
    mid = 0.5 * (sxx + syy)
    rad = torch.sqrt(torch.clamp(0.25 * (sxx - syy) ** 2 + sxy * sxy, min=0.0))
    lam1 = mid + rad
    lam2 = torch.clamp(mid - rad, min=0.0)
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    # atan2 returns (-pi, pi]; halving gives (-pi/2, pi/2]
    return torch.stack([torch.sqrt(lam1), torch.sqrt(lam2), theta], -1)


def scale_rot_to_cov(sr: torch.Tensor) -> torch.Tensor:
    s1, s2, th = sr.unbind(-1)
    c, s = torch.cos(th), torch.sin(th)
    v1, v2 = s1 * s1, s2 * s2
    return torch.stack([c * c * v1 + s * s * v2, c * s * (v1 - v2), s * s * v1 + c * c * v2], -1)


def cov_to_conic(cov: torch.Tensor) -> torch.Tensor:
    sxx, sxy, syy = cov.unbind(-1)
    det = sxx * syy - sxy * sxy
    return torch.stack([syy / det, -sxy / det, sxx / det], -1)


def conic_to_cov(conic: torch.Tensor) -> torch.Tensor:
    # the inverse of a symmetric 2x2 matrix has the same closed form
    return cov_to_conic(conic)


def chol_to_conic(chol: torch.Tensor) -> torch.Tensor:
    return cov_to_conic(chol_to_cov(chol))


def chol_to_scale_rot(chol: torch.Tensor) -> torch.Tensor:
    return cov_to_scale_rot(chol_to_cov(chol))


def scale_rot_to_chol(sr: torch.Tensor) -> torch.Tensor:
    return cov_to_chol(scale_rot_to_cov(sr))


# ITU-R BT.601 luma weights, the usual choice for "luminance" of an RGB color.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(colors: torch.Tensor) -> torch.Tensor:
    w = colors.new_tensor(LUMA_WEIGHTS)
    return (colors * w).sum(-1)


def sigma_cutoff_radius(chol: torch.Tensor, n_sigma: float = 3.0) -> torch.Tensor:
    """Half extents (rx, ry) of the n-sigma ellipse's bounding box, [..., 2]."""
    cov = chol_to_cov(chol)
    return n_sigma * torch.sqrt(torch.stack([cov[..., 0], cov[..., 2]], -1))

