"""Adam over per-image parameter tensors, with state that can be subset and pruned.

torch.optim.Adam keeps one step count per parameter tensor and its state is opaque to
pruning. Fitting a batch needs more: images that stopped early are frozen (no update,
no step count), and pruning removes rows of every parameter AND of its moments together
(as gsplat's strategy ops do). So the state here is plain tensors shaped like the
parameters, [B, N, k], with one step count per image [B].
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["BatchAdam"]


class BatchAdam:
    """Adam for a dict of parameters {name: [B, N, k]} with per-parameter learning rates."""

    def __init__(self, params: dict[str, torch.Tensor], lrs: dict[str, float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, fused: bool = False):
        missing = set(params) - set(lrs)
        if missing:
            raise ValueError(f"BatchAdam: no learning rate for {sorted(missing)}")
        self.params = params
        self.lrs = dict(lrs)
        self.betas = betas
        self.eps = eps
        self.fused = fused  # CPU steps in one numba kernel pass per parameter (fit/_adam_kernels.py)
        self.exp_avg = {k: torch.zeros_like(p) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in params.items()}
        b = next(iter(params.values())).shape[0]
        self.steps = torch.zeros(b, dtype=torch.long, device=next(iter(params.values())).device)
        self.carried = False  # carry() gave it another's moments

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], idx: torch.Tensor | None = None,
             lr_scale: float | torch.Tensor = 1.0, counts: torch.Tensor | None = None,
             bounds: dict[str, tuple] | None = None) -> None:
        """One update of the images `idx` ([A] int64, None = all) from grads {name: [A, N, k]};
        lr_scale a number or one per image [A]. Gradients are cleaned as torch.nan_to_num does, and
        with counts [A] each image's Gaussians from counts[a] on are padding: their gradients are 0.
        bounds {name: (lo, hi)}, each a sequence of k numbers (+-inf: none): the columns of those
        parameters are clamped after the step (projected Adam). With `fused` and CPU tensors each
        parameter's step is one numba pass: the same operations, equal to the torch step's within
        float rounding (tests/test_adam_fused.py)."""
        b1, b2 = self.betas
        full = idx is None
        steps = self.steps if full else self.steps[idx]
        steps = steps + 1
        if full:
            self.steps.copy_(steps)
        else:
            self.steps[idx] = steps
        g0 = next(iter(grads.values()))
        t = steps.to(g0.dtype)
        scale = lr_scale.to(t.dtype) if torch.is_tensor(lr_scale) else torch.full_like(t, lr_scale)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        fused = self.fused and g0.device.type == "cpu"
        arrays = shared = None  # made once for all parameters: the kernel's per-image arrays; the torch step's
        for name, g in grads.items():
            bound = _hashable((bounds or {}).get(name))
            if fused and self._fusable(name, g):
                if arrays is None:  # rows, counts, step factors, bias corrections
                    arrays = (_rows(len(t)) if full else idx.numpy(), (torch.full_like(
                        steps, g0.shape[1]) if counts is None else counts).numpy(), *(x.numpy() for x in (scale, bc1, bc2)))
                self._fused_step(name, g, arrays, _box(bound, g.shape[2], g.dtype))
                continue
            if shared is None:  # per-image factors, padding mask
                valid = None if counts is None else \
                    (torch.arange(g0.shape[1], device=g0.device)[None, :] < counts[:, None])[..., None].to(g0.dtype)
                shared = (scale[:, None, None], bc1[:, None, None], bc2[:, None, None]), valid
            self._torch_step(name, g, idx, *shared, _box_tensors(bound, g.shape[2], g.dtype, g.device))

    def _torch_step(self, name, g, idx, factors, valid, box) -> None:
        """The reference step of one parameter (torch operations, any device)."""
        b1, b2 = self.betas
        full = idx is None
        scale, bc1, bc2 = factors
        g = torch.nan_to_num(g) if valid is None else torch.nan_to_num(g) * valid
        p = self.params[name]
        m = self.exp_avg[name] if full else self.exp_avg[name][idx]
        v = self.exp_avg_sq[name] if full else self.exp_avg_sq[name][idx]
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        upd = (m / bc1) / ((v / bc2).sqrt_().add_(self.eps)) * (self.lrs[name] * scale)
        new = (p if full else p[idx]) - upd
        if box is not None:
            new = torch.maximum(torch.minimum(new, box[1]), box[0])
        if full:
            p.copy_(new)
        else:
            self.exp_avg[name][idx] = m
            self.exp_avg_sq[name][idx] = v
            p[idx] = new

    def _fusable(self, name: str, g: torch.Tensor) -> bool:
        return g.dtype in (torch.float32, torch.float64) and all(
            x.device.type == "cpu" and x.dtype == g.dtype and x.is_contiguous()
            for x in (self.params[name], self.exp_avg[name], self.exp_avg_sq[name], g))

    def _fused_step(self, name, g, per_image, box) -> None:
        """The step of one parameter as one numba kernel pass (fit/_adam_kernels.py); CPU tensors."""
        lo, hi = box if box is not None else _box((), g.shape[2], g.dtype)
        _adam_kernel()(self.params[name].numpy(), g.numpy(), self.exp_avg[name].numpy(),
                       self.exp_avg_sq[name].numpy(), *per_image,
                       *_scalars(self.lrs[name], *self.betas, self.eps, g.dtype), lo, hi)

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
        new = BatchAdam(params, self.lrs, self.betas, self.eps, self.fused)
        new.exp_avg = {k: v.clone() for k, v in self.exp_avg.items()}
        new.exp_avg_sq = {k: v.clone() for k, v in self.exp_avg_sq.items()}
        new.steps = self.steps.clone()
        new.carried = self.carried
        return new



def _hashable(bound) -> tuple | None:
    return bound if bound is None or isinstance(bound, tuple) and all(isinstance(b, tuple) for b in bound) \
        else tuple(tuple(b) for b in bound)


@functools.lru_cache(maxsize=64)
def _rows(b: int) -> np.ndarray:
    """0 .. b - 1 (int64), made once per batch size: the rows of a step on every image (never written; left
    writable: a read-only array is another numba type, one more compile)."""
    return np.arange(b, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _adam_kernel():
    from gaussianvision.raster.cpu_numba import numba_module
    return numba_module("gaussianvision.fit._adam_kernels").adam_update


@functools.lru_cache(maxsize=256)
def _scalars(lr: float, b1: float, b2: float, eps: float, dtype: torch.dtype) -> tuple:
    """adam_update's scalars in the kernel's dtype: lr, b1, 1 - b1, b2, 1 - b2, eps, the largest finite."""
    t = np.float32 if dtype == torch.float32 else np.float64
    return t(lr), t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps), t(np.finfo(t).max)


@functools.lru_cache(maxsize=64)
def _box(bound: tuple | None, k: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo [k], hi [k]) arrays of dtype for a parameter's bounds (lo, hi), each k numbers (+-inf: none);
    None for None; () gives the unbounded box. Read-only: shared by every step."""
    if bound is None:
        return None
    if bound == ():
        bound = ((-math.inf,) * k, (math.inf,) * k)
    t = np.float32 if dtype == torch.float32 else np.float64
    lo, hi = (np.array([float(x) for x in b], t) for b in bound)
    if lo.shape != (k,) or hi.shape != (k,):
        raise ValueError(f"BatchAdam: bounds need {k} numbers per side, got {list(bound)}")
    lo.flags.writeable = hi.flags.writeable = False
    return lo, hi


@functools.lru_cache(maxsize=64)
def _box_tensors(bound: tuple | None, k: int, dtype: torch.dtype, device: torch.device):
    """_box's arrays as tensors on `device`, made once (no copy to a GPU at every step)."""
    box = _box(bound, k, dtype)
    return None if box is None else tuple(torch.tensor(x, device=device) for x in box)
