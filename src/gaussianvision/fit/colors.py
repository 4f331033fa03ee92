"""Least-squares colors: for fixed means and covariances, the best colors solve a linear problem.

Colors enter the render linearly: render(c) = W c, with W[p, i] the weight of Gaussian i at pixel
p (exp(-q/2) inside the 3-sigma cut). The colors that minimize the squared error for the current
geometry solve the normal equations

    (W^T W + lam I) c = W^T y + lam c0

(per image and channel; lam pulls Gaussians that see few pixels towards their current color c0).
W^T W is an N x N Gram of overlapping footprints; it is never formed: conjugate gradients need
only products with W (a render) and W^T (the render's backward with respect to the colors), so
the solve runs on whatever backend renders (numba on CPU, Triton on CUDA, the reference
anywhere), batched over images, at the cost of one forward + backward per CG iteration (the
render of W p and its backward, which gives W^T W p).

    colors = solve_colors(splats, images, iters=8)      # [B, N, 3]; padding rows unchanged

CG starts from c0 and decreases the objective at every iteration, so the result is never worse
(in squared error, before clamping) than the colors it started from.
"""
from __future__ import annotations

import torch

from gaussianvision.raster import colors_adjoint, render
from gaussianvision.splats.types import Splats

__all__ = ["solve_colors", "color_objective", "solve_cost"]


def solve_cost(iters: int) -> float:
    """solve_colors' cost in training iterations (a render and its backward) of the same batch: the
    first residual and each CG iteration take one render and its backward (_normal)."""
    return float(iters + 1) if iters > 0 else 0.0


def _forward(s: Splats, colors: torch.Tensor, backend: str) -> torch.Tensor:
    return render(Splats(s.means, s.chol, colors, s.height, s.width, s.counts), backend=backend)


def _normal(s: Splats, colors: torch.Tensor, upstream, backend: str) -> torch.Tensor:
    """W^T u with u = upstream(W c), c = colors: one render and its backward (raster.colors_adjoint; the
    gradient of <render(c), u> with respect to c is W^T u whatever c is, render being linear in c, so the
    render that gives W c also carries the adjoint: no second render with zero colors)."""
    return colors_adjoint(Splats(s.means, s.chol, colors.detach(), s.height, s.width, s.counts), upstream,
                          backend=backend)


def _residual(images: torch.Tensor):
    """upstream for y - W x: in the render's own memory where it can be (a - b and -b + a round alike)."""
    def residual(wx: torch.Tensor) -> torch.Tensor:
        if wx.dtype == images.dtype and wx.shape == images.shape and wx.device == images.device:
            return wx.neg_().add_(images)
        return images - wx
    return residual


def _ridge(s: Splats, ridge: float) -> torch.Tensor:
    """lam per image [B, 1, 1]: `ridge` times the pixels per Gaussian (about the Gram's diagonal)."""
    n = s.num_gaussians().clamp_min(1).to(s.colors.dtype)
    return (ridge * s.height * s.width / n).view(-1, 1, 1)


def color_objective(s: Splats, images: torch.Tensor, colors: torch.Tensor, c0: torch.Tensor,
                    ridge: float = 1e-3, backend: str = "auto") -> torch.Tensor:
    """[B]: ||W c - y||^2 + lam ||c - c0||^2 (what solve_colors minimizes)."""
    with torch.no_grad():
        err = ((_forward(s, colors, backend) - images) ** 2).flatten(1).sum(1)
        return err + (_ridge(s, ridge)[:, :, 0] * ((colors - c0) ** 2).flatten(1)).sum(1)


@torch.no_grad()
def solve_colors(s: Splats, images: torch.Tensor, iters: int = 8, ridge: float = 1e-3,
                 backend: str = "auto") -> torch.Tensor:
    """Colors [B, N, 3] minimizing color_objective for the geometry of `s`, by `iters` conjugate-
    gradient iterations from s.colors (each image and channel its own system)."""
    c0 = s.colors.detach()
    mask = s.mask().to(c0.dtype)[..., None]  # padding rows take no part
    lam = _ridge(s, ridge)

    def apply(p):  # (W^T W + lam I) p
        return (_normal(s, p, lambda wp: wp, backend) + lam * p) * mask

    x = c0.clone()
    r = _normal(s, x, _residual(images), backend) * mask  # b - A x0 (the ridge term is 0 at c0)
    p = r.clone()
    rs = (r * r).sum(1, keepdim=True)  # [B, 1, 3]
    for _ in range(iters):
        ap = apply(p)
        denom = (p * ap).sum(1, keepdim=True)
        alpha = torch.where(denom > 0, rs / denom.clamp_min(1e-30), torch.zeros_like(rs))
        x += alpha * p
        r -= alpha * ap
        rs_new = (r * r).sum(1, keepdim=True)
        p = r + torch.where(rs > 0, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs)) * p
        rs = rs_new
    return x
