"""Error-driven relocation: move the Gaussians that contribute least to where the error is.

A short fit cannot carry a Gaussian far from where the initializer put it, so an object that
drew few Gaussians at the start stays blurred (in the synthetic world's 64-px scenes, a star
lost its points while textured backgrounds kept many Gaussians). Every `relocate_every`
iterations the fitter takes the `relocate_fraction` of each image's Gaussians with the lowest
importance (fit/prune.py's "energy": color times footprint), and restarts them at pixels drawn
with probability proportional to the blurred squared error of the current render, small and
colored with the residual there, so they add what is missing. Their Adam moments restart at 0.
Similar in spirit to the relocation of 3DGS-MCMC (Kheradmand et al., 2024), written for the
accumulated-sum renderer (no opacities: the new Gaussian's color is the residual itself).

Shapes: images / renders [B, 3, H, W]; splats [B, N] with counts (padding is never chosen).
"""
from __future__ import annotations

import torch

from ..splats.types import Splats
from .init import _blur
from .prune import importance

__all__ = ["relocation_plan"]


def _draw_pixels(err: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """[B, k] distinct pixels of each row of err [B, P] (> 0), drawn with probability proportional to it,
    without replacement: the k largest of log(err) + Gumbel noise (the same law as sequential draws).
    One noise field for the batch, the same for every image, so that an image's draws never depend on
    its place in the batch (multinomial drew the rows one after another from one stream). The noise
    comes from where the generator lives: on the GPU with a CUDA generator, else the CPU."""
    where = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(err.shape[1], generator=generator, device=where, dtype=torch.float64).to(err.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return torch.topk(torch.log(err.double()) + gumbel, k, dim=1).indices


@torch.no_grad()
def relocation_plan(splats: Splats, rendered: torch.Tensor, images: torch.Tensor, fraction: float,
                    generator: torch.Generator | None = None, sigma_factor: float = 0.2
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which Gaussians move, and where.

    Returns (index [B, K] int64 of the Gaussians to move, valid [B, K] bool (False where an image
    moves fewer than K), and their new means [B, K, 2], chol [B, K, 3], colors [B, K, 3]) with
    K = floor(fraction * max count). Each image moves floor(fraction * its count) Gaussians.
    sigma_factor: the new Gaussians' standard deviation, times the average spacing sqrt(H W / N).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"relocate_fraction must lie in (0, 1), got {fraction}")
    b, _, h, w = images.shape
    counts = splats.num_gaussians().to(images.device)
    k_img = torch.floor(fraction * counts.float()).long().clamp_max(h * w)  # [B]; distinct pixels
    k = int(k_img.max()) if b else 0
    dev = images.device
    if k == 0:
        z = torch.zeros(b, 0, dtype=torch.long, device=dev)
        return z, z.bool(), images.new_zeros(b, 0, 2), images.new_zeros(b, 0, 3), images.new_zeros(b, 0, 3)
    score = importance(splats, "energy")  # padding: +inf, never among the lowest of a valid count
    index = score.argsort(1)[:, :k]
    valid = torch.arange(k, device=dev)[None, :] < k_img[:, None]
    err = ((rendered - images) ** 2).sum(1, keepdim=True)
    err = _blur(err, 1.0)[:, 0].flatten(1).double() + 1e-12  # [B, H W]
    pix = _draw_pixels(err, k, generator)
    x = (pix % w).to(images.dtype) + 0.5
    y = torch.div(pix, w, rounding_mode="floor").to(images.dtype) + 0.5
    means = torch.stack([x, y], -1)
    spacing = torch.sqrt(h * w / counts.clamp_min(1).to(images.dtype))  # [B]
    sigma = (sigma_factor * spacing)[:, None].expand(b, k)
    chol = torch.stack([sigma, torch.zeros_like(sigma), sigma], -1)
    resid = (images - rendered).flatten(2)  # [B, 3, H W]
    colors = torch.gather(resid, 2, pix[:, None, :].expand(b, 3, k)).transpose(1, 2)
    return index, valid, means, chol, colors
