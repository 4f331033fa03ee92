"""Batched fitting: many images at once, one optimizer over the whole batch.

    result = fit_images(images, n_gaussians=400, iters=500, init="grid")
    result.splats        # Splats [B, N] (with counts after pruning)
    result.metrics       # list of per-image dicts: psnr, ssim, n_gaussians, iterations, seconds

Parameters are optimized directly (means in pixels, Cholesky entries, colors) with Adam
and per-parameter learning rates; after each step the Cholesky diagonal is projected
back to >= `min_scale` pixels so the factor stays valid.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..raster import render
from ..splats.types import Splats
from .init import initialize
from .metrics import psnr, ssim

__all__ = ["FitConfig", "FitResult", "fit_images"]


@dataclass
class FitConfig:
    iters: int = 500
    init: str = "grid"
    lr_means: float = 0.5
    lr_chol: float = 0.25
    lr_colors: float = 0.02
    min_scale: float = 0.3
    backend: str = "auto"
    seed: int = 0


@dataclass
class FitResult:
    splats: Splats
    metrics: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"fit_images: images must be a tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"fit_images: images must be [B, 3, H, W], got {list(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("fit_images: images contain NaN or Inf")
    return images.float()


def fit_images(images: torch.Tensor, n_gaussians: int, iters: int | None = None, init: str | None = None,
               config: FitConfig | None = None, progress: bool = False, **overrides) -> FitResult:
    """Fit `n_gaussians` Gaussians to each of the B images [B, 3, H, W] in [0, 1]."""
    cfg = config or FitConfig()
    for k, v in dict(overrides, **({"iters": iters} if iters is not None else {}),
                     **({"init": init} if init is not None else {})).items():
        if not hasattr(cfg, k):
            raise TypeError(f"fit_images: unknown option {k!r}")
        setattr(cfg, k, v)
    if n_gaussians < 1:
        raise ValueError(f"fit_images: n_gaussians must be >= 1, got {n_gaussians}")
    images = _check_images(images)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    s = initialize(cfg.init, images, n_gaussians, generator=gen, backend=cfg.backend)
    params = {k: getattr(s, k).detach().clone().requires_grad_(True) for k in ("means", "chol", "colors")}
    opt = torch.optim.Adam([
        {"params": [params["means"]], "lr": cfg.lr_means},
        {"params": [params["chol"]], "lr": cfg.lr_chol},
        {"params": [params["colors"]], "lr": cfg.lr_colors},
    ])
    h, w = images.shape[-2:]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.iters, desc=f"fit B={images.shape[0]} N={n_gaussians}", unit="it")
    for it in range(cfg.iters):
        cur = Splats(params["means"], params["chol"], params["colors"], h, w, s.counts)
        pred = render(cur, backend=cfg.backend)
        loss = ((pred - images) ** 2).mean() * images.shape[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["chol"][..., 0].clamp_(min=cfg.min_scale)
            params["chol"][..., 2].clamp_(min=cfg.min_scale)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    final = Splats(params["means"].detach(), params["chol"].detach(), params["colors"].detach(), h, w, s.counts)
    with torch.no_grad():
        pred = render(final, backend=cfg.backend)
        p, q = psnr(pred, images), ssim(pred, images)
    secs = (time.perf_counter() - t0) / images.shape[0]
    counts = final.num_gaussians()
    metrics = [
        {"psnr": float(p[b]), "ssim": float(q[b]), "n_gaussians": int(counts[b]), "iterations": cfg.iters,
         "seconds": secs}
        for b in range(images.shape[0])
    ]
    return FitResult(final, metrics)
