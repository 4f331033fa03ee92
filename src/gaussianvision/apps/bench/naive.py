"""The naive baseline fitter: pure torch, dense, one image at a time, random init.

This is how 2D Gaussian fitting looks without a kernel: every pixel against every Gaussian,
the quadratic form as one batched product, autograd for the backward, torch.optim.Adam,
one image per launch. It exists only to be timed against `fit_images` at equal N.
"""
from __future__ import annotations

import time

import torch

from gaussianvision.fit.init import init_random

__all__ = ["render_dense", "time_naive"]


def render_dense(means: torch.Tensor, chol: torch.Tensor, colors: torch.Tensor, h: int, w: int,
                 max_pairs: int = 1 << 26) -> torch.Tensor:
    """[3, H, W] from one image's means [N, 2], chol [N, 3], colors [N, 3]; no culling.

    Pixels are taken in chunks only to bound memory (about max_pairs pairs at once); every
    pixel still meets every Gaussian."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=means.dtype) + 0.5, torch.arange(w, dtype=means.dtype) + 0.5,
                            indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [P, 2]
    l11, l21, l22 = chol.unbind(-1)
    # Sigma^{-1} = L^{-T} L^{-1}; rows of L^{-1}: (1/l11, 0), (-l21/(l11 l22), 1/l22)
    zero = torch.zeros_like(l11)
    linv = torch.stack([torch.stack([1 / l11, zero], -1),
                        torch.stack([-l21 / (l11 * l22), 1 / l22], -1)], -2)  # [N, 2, 2]
    chunk = max(1, max_pairs // max(1, means.shape[0]))
    out = []
    for s in range(0, pix.shape[0], chunk):
        d = pix[None, s:s + chunk] - means[:, None]  # [N, P, 2]
        y = torch.matmul(d, linv.transpose(1, 2))  # [N, P, 2]
        wgt = torch.exp(-0.5 * (y * y).sum(-1))  # [N, P]
        out.append(colors.t() @ wgt)  # [3, P]
    return torch.cat(out, 1).reshape(3, h, w)


def time_naive(image: torch.Tensor, n: int, iters: int = 3, lr: tuple[float, float, float] = (0.8, 0.4, 0.02),
               seed: int = 0) -> dict:
    """Fit one image [3, H, W] naively for `iters` iterations; seconds per image-iteration."""
    h, w = image.shape[-2:]
    s = init_random(image[None], n, generator=torch.Generator().manual_seed(seed))
    params = [s.means[0].clone().requires_grad_(), s.chol[0].clone().requires_grad_(),
              s.colors[0].clone().requires_grad_()]
    opt = torch.optim.Adam([{"params": [p], "lr": r} for p, r in zip(params, lr)])

    def one():
        pred = render_dense(*params, h, w)
        loss = ((pred - image) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    one()  # warm-up (allocator, threads)
    t0 = time.perf_counter()
    for _ in range(iters):
        loss = one()
    secs = (time.perf_counter() - t0) / iters
    return {"n_gaussians": n, "iters_timed": iters, "seconds_per_image_iter": secs, "last_mse": loss,
            "pairs_per_image_iter": n * h * w}
