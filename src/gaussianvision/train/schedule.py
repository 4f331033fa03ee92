"""Learning-rate schedule: linear warmup then cosine decay to `min_lr`."""
from __future__ import annotations

import math

__all__ = ["cosine_lr", "set_lr"]


def cosine_lr(step: int, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """LR for optimizer step `step` (0-based): warmup steps rise linearly to base_lr (step 0 uses
    base_lr / warmup, never 0), then a half cosine reaches min_lr at step `total`."""
    if total <= 0:
        raise ValueError(f"cosine_lr: total steps must be positive, got {total}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
