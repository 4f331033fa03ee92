"""Luminance-aware pruning: importance scores, the selection rule, and compaction.

Scores [B, N] (higher = more important), all in color units so one threshold tau reads the
same way for each:
  luma       |luma(c)| (BT.601): the paper's rule. Destructive: a color of zero luminance
             can still carry strong chroma (e.g. (+0.3, -0.2, 0)), so it is not "unimportant"
  max_color  max_k |c_k|: never mistakes chroma for nothing
  energy     rms(c) * sqrt(l11 l22 / a), a = H W / N the average area per Gaussian (default).
             Its square is proportional to the error a Gaussian's removal adds on its own
             near an optimum: ||c||^2 * integral(w^2) = ||c||^2 * pi * l11 * l22, because the
             cross term with the residual vanishes where the color gradient is zero. A
             Gaussian of typical size scores its rms color; tiny or faint ones score low.

Selection: prune = valid & (score < tau, if tau is given) & (among the lowest `fraction` of
the image's Gaussians, if fraction is given); both given means "under tau, at most that
fraction". Each image keeps at least its most important Gaussian (a splat of none is no
image, and nothing could fit it again). Compaction moves each image's kept Gaussians to the front (order preserved),
trims to the largest count, and returns per-image counts; the same gather is applied to
the optimizer's moments so parameters and Adam state stay aligned.
"""
from __future__ import annotations

import math

import torch

from gaussianvision.splats.params import luminance
from gaussianvision.splats.types import Splats

__all__ = ["MEASURES", "importance", "select_prune", "compact", "prune_splats", "PAD_FILL"]

MEASURES = ("energy", "max_color", "luma")
# padding rows: a harmless unit Cholesky factor, zero mean and color
PAD_FILL = {"means": (0.0, 0.0), "chol": (1.0, 0.0, 1.0), "colors": (0.0, 0.0, 0.0)}


def importance(splats: Splats, measure: str = "energy") -> torch.Tensor:
    """[B, N] importance of each Gaussian (padding gets +inf so it is never selected)."""
    c = splats.colors.detach()
    if measure == "luma":
        s = luminance(c).abs()
    elif measure == "max_color":
        s = c.abs().amax(-1)
    elif measure == "energy":
        n = splats.num_gaussians().to(c.device).clamp_min(1).to(c.dtype)
        avg_area = (splats.height * splats.width) / n  # [B]
        foot = (splats.chol.detach()[..., 0] * splats.chol.detach()[..., 2]).abs()
        s = torch.sqrt((c * c).mean(-1) * foot / avg_area[:, None])
    else:
        raise ValueError(f"unknown importance measure {measure!r}; choose one of {list(MEASURES)}")
    return torch.where(splats.mask(), s, torch.full_like(s, math.inf))


def select_prune(scores: torch.Tensor, valid: torch.Tensor, tau: float | None = None,
                 fraction: float | None = None) -> torch.Tensor:
    """[B, N] bool: the Gaussians to remove (see the module docstring for the rule)."""
    prune = valid.clone()
    if tau is None and fraction is None:
        return torch.zeros_like(valid)
    if tau is not None:
        prune &= scores < tau
    if fraction is not None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"prune fraction must lie in [0, 1], got {fraction}")
        counts = valid.sum(1)
        k = torch.floor(counts.to(torch.float64) * fraction).to(torch.long)  # [B]
        rank = torch.argsort(torch.argsort(scores, dim=1, stable=True), dim=1)  # 0 = least important
        prune &= rank < k[:, None]
    return _keep_the_best_one(prune, scores, valid)


def _keep_the_best_one(prune: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """prune, less each image's most important Gaussian where it would remove all of them."""
    emptied = (prune == valid).all(1) & valid.any(1)  # [B]
    if not bool(emptied.any()):
        return prune
    best = torch.where(valid, scores, torch.full_like(scores, -math.inf)).argmax(1)  # [B]
    spare = torch.zeros_like(prune).scatter_(1, best[:, None], True) & emptied[:, None]
    return prune & ~spare


def compact(tensors: dict[str, torch.Tensor], keep: torch.Tensor,
            fill: dict[str, tuple[float, ...]] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Move kept rows of every [B, N, k] tensor to the front and trim to the largest count.

    keep: [B, N] bool. fill: per name, the value of padding rows (default zeros).
    Returns ({name: [B, N', k]}, counts [B])."""
    counts = keep.sum(1)
    n_new = int(counts.max()) if keep.numel() else 0
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n_new]  # kept first
    pad = torch.arange(n_new, device=keep.device)[None, :] >= counts[:, None]
    out = {}
    for name, t in tensors.items():
        g = torch.gather(t, 1, order[..., None].expand(-1, -1, t.shape[-1]))
        val = (fill or {}).get(name)
        fill_t = g.new_tensor(val) if val is not None else g.new_zeros(t.shape[-1])
        out[name] = torch.where(pad[..., None], fill_t, g)
    return out, counts


def prune_splats(splats: Splats, measure: str = "energy", tau: float | None = None,
                 fraction: float | None = None) -> tuple[Splats, torch.Tensor]:
    """Prune without an optimizer: (pruned Splats with counts, [B] number removed)."""
    valid = splats.mask()
    drop = select_prune(importance(splats, measure), valid, tau, fraction)
    t, counts = compact({"means": splats.means, "chol": splats.chol, "colors": splats.colors},
                        valid & ~drop, PAD_FILL)
    return Splats(t["means"], t["chol"], t["colors"], splats.height, splats.width, counts), drop.sum(1)
