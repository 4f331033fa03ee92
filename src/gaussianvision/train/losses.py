"""Training losses: stage-1 distillation onto the frozen RGB teacher, stage-2 CLIP loss.

Shapes: embeddings are [B, D]; token embeddings are [B, T, D].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distill_loss", "token_distill_loss", "make_clip_loss", "DISTILL_KINDS"]

DISTILL_KINDS = ("cosine", "mse")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Distance between L2-normalized student and teacher embeddings [B, D] -> scalar.

    cosine: mean(1 - cos); mse: mean squared distance of the unit vectors summed over D
    (= 2 - 2 cos, so both have the same minimiser, different curvature).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"distill_loss: student {list(student.shape)} and teacher {list(teacher.shape)} differ")
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float().detach(), dim=-1)
    if kind == "cosine":
        return (1.0 - (s * t).sum(-1)).mean()
    if kind == "mse":
        return ((s - t) ** 2).sum(-1).mean()
    raise ValueError(f"distill_loss: kind must be one of {DISTILL_KINDS}, got {kind!r}")


def token_distill_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Token-level distillation [B, T, D] vs [B, T, D]: `distill_loss` over all tokens."""
    if student_tokens.shape != teacher_tokens.shape:
        raise ValueError(
            f"token_distill_loss: student tokens {list(student_tokens.shape)} and teacher tokens "
            f"{list(teacher_tokens.shape)} differ (token counts must match for token-level loss)")
    d = student_tokens.shape[-1]
    return distill_loss(student_tokens.reshape(-1, d), teacher_tokens.reshape(-1, d), kind)


def make_clip_loss(rank: int = 0, world_size: int = 1):
    """open_clip's ClipLoss set up as open_clip's trainer does under DDP: each rank computes the
    loss of its own rows against all gathered features, gathered with gradients."""
    from open_clip.loss import ClipLoss
    return ClipLoss(local_loss=world_size > 1, gather_with_grad=world_size > 1, cache_labels=True,
                    rank=rank, world_size=world_size)
