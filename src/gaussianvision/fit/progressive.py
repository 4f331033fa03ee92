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

Reordering a finished fit cannot make short prefixes good: a plain fit at N spends every
Gaussian on detail at N's scale. A nested ("matryoshka") fit makes the fit itself progressive:

    fit_images(images, 400, prefix_fractions=(0.125, 0.25, 0.5, 1.0))   # FitConfig option

The loss is sum_j w_j MSE(render(first k_j Gaussians), image), k_j = round(f_j N) (prefix_loss:
each prefix rendered by the same renderer, weights normalized to sum 1); the start is nested
(nested_init): the first k_1 Gaussians are the initializer's at k_1 (colors solved, so the
first prefix starts as a coarse image), each further block k_{j-1}..k_j the initializer's at
its own size with zero colors (it starts as nothing and learns the residual). The fit's own
order is then the progressive order (method "fit"; method "nested" also sorts inside each block
by importance, for prefixes that end between the k_j).
"""
from __future__ import annotations

import math

import torch

from gaussianvision.fit.prune import importance
from gaussianvision.raster import render
from gaussianvision.splats.types import Splats

__all__ = ["ENCODING_ORDERS", "METHODS", "PREFIX_FRACTIONS", "nested_init", "prefix_loss", "prefix_renders", "prefix_sizes", "prefix_splats",
           "progressive", "progressive_order", "reorder"]

METHODS = ("eliminate", "greedy", "fit", "nested")
ENCODING_ORDERS = ("nested", "eliminate", "greedy")  # what a progressive encoding may ask (fit/stream.py)  # fit: the fit's own order; nested: see progressive_order
PREFIX_FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def prefix_sizes(n: int, fractions) -> list[int]:
    """The prefix lengths k_j = round(f_j n) (at least 1), increasing, duplicates dropped."""
    return sorted({max(1, min(n, round(f * n))) for f in fractions})


def prefix_renders(n: int, fractions) -> list[int]:
    """The prefix lengths prefix_loss renders, one render each, in its order: round(f n) (at least 1, at most n)
    for every fraction given, repeats kept, and n once more where no fraction reaches it (its full MSE)."""
    ks = [max(1, min(n, round(f * n))) for f in fractions]
    return ks if n in ks else ks + [n]


def prefix_splats(s: Splats, k: int) -> Splats:
    """Each image's first k Gaussians (counts min(count, k))."""
    return Splats(s.means[:, :k], s.chol[:, :k], s.colors[:, :k], s.height, s.width, s.num_gaussians().clamp(max=k))


def prefix_loss(s: Splats, target: torch.Tensor, fractions, weights=None,
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [B], full MSE [B]): loss = sum_j w_j MSE(render(first k_j Gaussians), target), the
    weights (default equal) normalized to sum 1; differentiable through the renderer."""
    n = s.means.shape[1]
    ks = prefix_renders(n, fractions)[:len(fractions)]  # the weighted ones (then the full MSE's, where none is n)
    w = torch.tensor([1.0] * len(ks) if weights is None else [float(x) for x in weights], dtype=torch.float64)
    if len(w) != len(ks) or not bool((w >= 0).all()) or not float(w.sum()) > 0:
        raise ValueError(f"prefix weights {weights}: one non-negative weight per prefix fraction, not all zero")
    w = (w / w.sum()).tolist()
    loss, full = 0.0, None
    for k, wk in zip(ks, w):
        mse = (render(prefix_splats(s, k), backend=backend) - target).square().flatten(1).mean(1)
        loss = loss + wk * mse
        if k == n:
            full = mse
    if full is None:
        full = (render(s, backend=backend) - target).square().flatten(1).mean(1)
    return loss, full


def nested_init(init: str, images: torch.Tensor, n: int, fractions, generator=None, color_solve: int = 0,
                backend: str = "auto") -> Splats:
    """Splats [B, n] whose first k_1 rows are `init` at k_1 (colors solved with color_solve CG
    steps) and each further block k_{j-1}..k_j `init` at the block's size with zero colors."""
    from gaussianvision.fit.colors import solve_colors
    from gaussianvision.fit.init import initialize
    ks = prefix_sizes(n, tuple(fractions) + (1.0,))
    blocks, prev = [], 0
    for k in ks:
        b = initialize(init, images, k - prev, generator=generator, backend=backend)
        if prev == 0 and color_solve:
            b = Splats(b.means, b.chol, solve_colors(b, images, color_solve, backend=backend), b.height, b.width)
        colors = b.colors if prev == 0 else torch.zeros_like(b.colors)
        blocks.append((b.means, b.chol, colors))
        prev = k
    means, chol, colors = (torch.cat(t, 1) for t in zip(*blocks))
    return Splats(means, chol, colors, images.shape[-2], images.shape[-1])


def progressive_order(splats: Splats, method: str = "eliminate", fraction: float = 0.25,
                      measure: str = "energy", backend: str = "auto", fractions=PREFIX_FRACTIONS) -> torch.Tensor:
    """[B, N] long: per image, the indices of its Gaussians, most important first (padding last).
    fit: the fit's own order; nested: a nested fit's blocks (prefix_sizes of `fractions`, the
    fit's prefix_fractions) in order, inside each block by `measure` importance (a prefix that
    ends inside a block keeps that block's most important Gaussians)."""
    if method not in METHODS:
        raise ValueError(f"unknown progressive order {method!r}; choose one of {list(METHODS)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"progressive order: fraction must lie in (0, 1), got {fraction}")
    if method in ("fit", "nested"):  # a nested fit: its blocks in order, inside each (nested) most important first
        n = splats.means.shape[1]
        priority = -torch.arange(n, device=splats.means.device, dtype=torch.float64).expand(splats.batch_size, -1)
        if method == "nested":
            block = torch.bucketize(torch.arange(n), torch.tensor(prefix_sizes(n, fractions)), right=True)
            e = importance(splats, measure).double()
            priority = -block.to(e.device).double() * (1.0 + e.max()) + e
    elif method == "greedy":
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
