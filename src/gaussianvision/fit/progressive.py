"""Progressive order: each image's Gaussians sorted so that every prefix is a coarser image.

    ordered = progressive(splats)            # the same Gaussians, most important first
    encode(ordered, progressive=True)        # the .gsv header records it (splats/format.py)
    decode(data, max_gaussians=k)            # any prefix: each image's first k Gaussians

Two orders, both on fit/prune.py's importance (no second measure):
  greedy     one score per Gaussian, measured once in the whole set (any MEASURES), highest
             first. Cheap; blind to neighbours: many small overlapping Gaussians that each add
             little on their own go late together and leave holes in short prefixes.
  eliminate  (default) backward elimination against the full image F: in rounds, the cheapest
             `fraction` of the remaining set S goes last. Removing g from S adds
             ||c_g w_g||^2 + 2 c_g . <F - R_S, w_g> of squared error, where the first term is
             the "energy" importance squared (3 pi a E^2, a = H W / N) and the second, the
             neighbours' part, is -2 c_g . dL/dc_g of L = 0.5 ||R_S - F||^2: one render and
             its backward per round (about log(N) / -log(1 - fraction) rounds).
Padding rows stay behind each image's valid ones; counts are unchanged.
"""
from __future__ import annotations

import math

import torch

from gaussianvision.fit.prune import importance
from gaussianvision.raster import render
from gaussianvision.splats.types import Splats

__all__ = ["METHODS", "progressive", "progressive_order", "reorder"]

METHODS = ("eliminate", "greedy")


def progressive_order(splats: Splats, method: str = "eliminate", fraction: float = 0.25,
                      measure: str = "energy", backend: str = "auto") -> torch.Tensor:
    """[B, N] long: per image, the indices of its Gaussians, most important first (padding last)."""
    if method not in METHODS:
        raise ValueError(f"unknown progressive order {method!r}; choose one of {list(METHODS)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"progressive order: fraction must lie in (0, 1), got {fraction}")
    if method == "greedy":
        priority = importance(splats, measure).double()
    else:
        priority = _eliminate(splats.detach(), fraction, backend)
    priority = torch.where(splats.mask(), priority, torch.full_like(priority, -math.inf))
    return torch.argsort(priority, dim=1, descending=True, stable=True)


def _eliminate(s: Splats, fraction: float, backend: str) -> torch.Tensor:
    """[B, N] float64 priority (higher = kept longer) from rounds of backward elimination."""
    e = importance(s, "energy").double()
    area = (s.height * s.width) / s.num_gaussians().clamp_min(1).double().to(e.device)
    own = 3.0 * math.pi * area[:, None] * e.square()  # ||c w||^2 of each Gaussian alone
    target = render(s, backend=backend).detach()
    alive = s.mask()
    priority = torch.zeros_like(e)
    step = 0
    while True:
        n_alive = alive.sum(1)
        n_drop = torch.where(n_alive > 1, (n_alive.double() * fraction).floor().long().clamp_min(1), 0)
        cost = torch.where(alive, own - 2.0 * _interaction(s, alive, target, backend), math.inf)
        rank = torch.argsort(torch.argsort(cost, dim=1, stable=True), dim=1)  # 0 = cheapest to remove
        if int(n_drop.max()) == 0:
            last = n_alive.clamp_min(1)[:, None].double()
            return torch.where(alive, step + 1.0 + rank / last, priority)
        drop = alive & (rank < n_drop[:, None])
        priority = torch.where(drop, step + rank / n_drop.clamp_min(1)[:, None].double(), priority)
        alive = alive & ~drop
        step += 1


def _interaction(s: Splats, alive: torch.Tensor, target: torch.Tensor, backend: str) -> torch.Tensor:
    """[B, N] c_g . dL/dc_g of L = 0.5 ||render(alive Gaussians) - target||^2."""
    with torch.enable_grad():
        colors = (s.colors * alive[..., None]).requires_grad_(True)
        cur = Splats(s.means, s.chol, colors, s.height, s.width, s.counts)
        loss = 0.5 * (render(cur, backend=backend) - target).square().sum()
        (grad,) = torch.autograd.grad(loss, colors)
    return (s.colors * grad).sum(-1).double()


def reorder(splats: Splats, order: torch.Tensor) -> Splats:
    """The splats with each image's Gaussians gathered in `order` [B, N] (counts unchanged)."""
    def take(t):
        return torch.gather(t, 1, order[..., None].expand(-1, -1, t.shape[-1]))
    return Splats(take(splats.means), take(splats.chol), take(splats.colors), splats.height, splats.width,
                  splats.counts)


def progressive(splats: Splats, **kw) -> Splats:
    """The same Gaussians in progressive order (progressive_order's options)."""
    return reorder(splats, progressive_order(splats, **kw).to(splats.means.device))
