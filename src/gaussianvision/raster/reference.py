"""The pure-torch reference rasterizer: the specification every fast backend must match.

For each pixel centre p = (j + 0.5, i + 0.5) of an H x W image and each valid Gaussian k:

    d   = p - mu_k
    y1  = d_x / l11                      (L^{-1} d, by forward substitution)
    y2  = (d_y - l21 * y1) / l22
    q   = y1^2 + y2^2                     (= d^T Sigma^{-1} d, Sigma = L L^T)
    w   = exp(-q / 2)  if q <= CUTOFF_Q else 0
    C(p) = sum_k w * c_k                  (accumulated sum: no sorting, no alpha)

CUTOFF_Q = 9 culls each Gaussian outside its 3-sigma ellipse; the cut is part of the
spec so that backends which skip culled pixels match it exactly. The output is not
clamped (fitting needs the gradient); clamp for display.

Memory stays bounded: pixels are processed in chunks so that at most about
`max_pairs` Gaussian-pixel pairs exist at once. Differentiable by autograd.
"""
from __future__ import annotations

import torch

from ..splats.types import Splats

__all__ = ["render_reference", "CUTOFF_Q", "pixel_centers"]

CUTOFF_Q = 9.0


def pixel_centers(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[H*W, 2] (x, y) pixel centres in row-major order."""
    ys = torch.arange(height, device=device, dtype=dtype) + 0.5
    xs = torch.arange(width, device=device, dtype=dtype) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def render_reference(splats: Splats, max_pairs: int = 1 << 24) -> torch.Tensor:
    """[B, 3, H, W] image of `splats` at their own size (splats.height x splats.width)."""
    means, chol, colors = splats.means, splats.chol, splats.colors
    b, n = means.shape[:2]
    h, w = int(splats.height), int(splats.width)
    dtype = torch.promote_types(means.dtype, torch.float32)
    if n == 0:
        # stay attached to the graph so backward() works (and yields zero-size grads)
        anchor = (means.sum() + chol.sum() + colors.sum()).to(dtype) * 0
        return means.new_zeros((b, 3, h, w), dtype=dtype) + anchor
    valid = splats.mask().to(dtype)  # [B, N]
    # padding contributes nothing, and its colors get a zero gradient
    col = colors.to(dtype) * valid[..., None]
    mx, my = means[..., 0, None].to(dtype), means[..., 1, None].to(dtype)  # [B, N, 1]
    # padding may hold anything: give it a harmless unit factor so no NaN can leak out
    safe = torch.where(valid[..., None] > 0, chol.to(dtype), torch.ones_like(chol, dtype=dtype))
    l11, l21, l22 = (safe[..., k, None] for k in range(3))
    pix = pixel_centers(h, w, means.device, dtype)
    out = []
    chunk = max(1, max_pairs // max(1, b * n))
    for start in range(0, h * w, chunk):
        p = pix[start : start + chunk]  # [P, 2]
        dx = p[None, None, :, 0] - mx  # [B, N, P]
        dy = p[None, None, :, 1] - my
        y1 = dx / l11
        y2 = (dy - l21 * y1) / l22
        q = y1 * y1 + y2 * y2
        wgt = torch.where(q <= CUTOFF_Q, torch.exp(-0.5 * q), torch.zeros_like(q))
        out.append(torch.einsum("bnp,bnc->bcp", wgt, col))
    img = torch.cat(out, -1)
    return img.reshape(b, 3, h, w)
