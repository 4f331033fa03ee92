"""Adam over per-image parameter tensors, with state that can be subset and pruned.

torch.optim.Adam keeps one step count per parameter tensor and its state is opaque to
pruning. Fitting a batch needs more: images that stopped early are frozen (no update,
no step count), and pruning removes rows of every parameter AND of its moments together
(as gsplat's strategy ops do). So the state here is plain tensors shaped like the
parameters, [B, N, k], with one step count per image [B].
"""
from __future__ import annotations

import torch

__all__ = ["BatchAdam"]


class BatchAdam:
    """Adam for a dict of parameters {name: [B, N, k]} with per-parameter learning rates."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: dict[str, float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        missing = set(params) - set(lrs)
        if missing:
            raise ValueError(f"BatchAdam: no learning rate for {sorted(missing)}")
        self.params = params
        self.lrs = dict(lrs)
        self.betas = betas
        self.eps = eps
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        b = next(iter(params.values())).shape[0]
        self.steps = torch.zeros(b, dtype=torch.long, device=next(iter(params.values())).device)
        self.carried = False  # carry() gave it another's moments

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], idx: torch.Tensor | None = None,
             lr_scale: float | torch.Tensor = 1.0) -> None:
        """One update of the images `idx` ([A] int64, None = all) from grads {name: [A, N, k]};
        lr_scale a number or one per image [A]."""
        b1, b2 = self.betas
        full = idx is None
        steps = self.steps if full else self.steps[idx]
        steps = steps + 1
        if full:
            self.steps.copy_(steps)
        else:
            self.steps[idx] = steps
        t = steps.to(next(iter(grads.values())).dtype)[:, None, None]
        if torch.is_tensor(lr_scale):
            lr_scale = lr_scale.to(t.dtype)[:, None, None]
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        for name, g in grads.items():
            p = self.params[name]
            m = self.exp_avg[name] if full else self.exp_avg[name][idx]
            v = self.exp_avg_sq[name] if full else self.exp_avg_sq[name][idx]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            upd = (m / bc1) / ((v / bc2).sqrt_().add_(self.eps)) * (self.lrs[name] * lr_scale)
            if full:
                p.sub_(upd)
            else:
                self.exp_avg[name][idx] = m
                self.exp_avg_sq[name][idx] = v
                p[idx] = p[idx] - upd

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def replace(self, params: dict[str, torch.Tensor], exp_avg: dict[str, torch.Tensor],
                exp_avg_sq: dict[str, torch.Tensor]) -> None:
        """Swap in edited parameters and moments (e.g. after pruning); shapes must agree."""
        for k, p in params.items():
            if exp_avg[k].shape != p.shape or exp_avg_sq[k].shape != p.shape:
                raise ValueError(f"BatchAdam.replace: state of {k!r} does not match its parameter "
                                 f"{list(p.shape)}")
        self.params = params
        self.exp_avg = exp_avg
        self.exp_avg_sq = exp_avg_sq

    @torch.no_grad()
    def carry(self, other: "BatchAdam", factors: dict[str, torch.Tensor]) -> None:
        """Go on from `other`'s moments and step counts, for parameters whose gradients are
        factors[name] (broadcast over the last axis) times other's: exp_avg x f, exp_avg_sq x f^2, so
        the next step's m / sqrt(v) is the one `other` would take (e.g. coarse to fine, where the
        splats are scaled up). Without it the first step of a fresh Adam moves every parameter by its
        full rate (bias-corrected m / sqrt(v) = sign(g)), which at the coarse-to-fine switch cost 6-9 dB."""
        for k, p in self.params.items():
            f = factors[k].to(p)
            if other.exp_avg[k].shape != p.shape:
                raise ValueError(f"BatchAdam.carry: state of {k!r} is {list(other.exp_avg[k].shape)}, "
                                 f"the parameter {list(p.shape)}")
            self.exp_avg[k] = other.exp_avg[k] * f
            self.exp_avg_sq[k] = other.exp_avg_sq[k] * (f * f)
        self.steps = other.steps.clone()
        self.carried = True

    def clone(self, params: dict[str, torch.Tensor]) -> "BatchAdam":
        new = BatchAdam(params, self.lrs, self.betas, self.eps)
        new.exp_avg = {k: v.clone() for k, v in self.exp_avg.items()}
        new.exp_avg_sq = {k: v.clone() for k, v in self.exp_avg_sq.items()}
        new.steps = self.steps.clone()
        new.carried = self.carried
        return new
