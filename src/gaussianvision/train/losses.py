"""Training losses: stage-1 distillation onto the frozen RGB teacher, stage-2 CLIP loss.

Shapes: embeddings are [B, D]; token embeddings are [B, T, D].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distill_loss", "token_distill_loss", "make_clip_loss", "make_negclip_loss", "DISTILL_KINDS"]

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


def make_negclip_loss(rank: int = 0, world_size: int = 1):
    """CLIP loss with one hard-negative caption per image (NegCLIP, Yuksekgonul et al. 2023).

    loss(img [B, D], txt [B, D], neg [B, D], scale) = mean of
      image -> text: each image against all captions and all negatives of the global batch;
      text -> image: each caption against all images (negatives are never a row here).
    With no negatives' influence (neg far from every image) it is the CLIP loss. Under DDP the
    features are gathered with gradients and each rank takes the rows of its own samples, as
    make_clip_loss does.
    """
    def loss(img: torch.Tensor, txt: torch.Tensor, neg: torch.Tensor, scale) -> torch.Tensor:
        if not (img.shape == txt.shape == neg.shape):
            raise ValueError(f"negclip loss: image {list(img.shape)}, text {list(txt.shape)} and negatives "
                             f"{list(neg.shape)} must have the same shape")
        b = img.shape[0]
        if world_size > 1:
            import torch.distributed.nn as dnn
            all_img, all_txt, all_neg = (torch.cat(dnn.all_gather(t), 0) for t in (img, txt, neg))
        else:
            all_img, all_txt, all_neg = img, txt, neg
        labels = torch.arange(b, device=img.device) + rank * b
        to_text = scale * img @ torch.cat([all_txt, all_neg], 0).T
        to_image = scale * txt @ all_img.T
        return (F.cross_entropy(to_text, labels) + F.cross_entropy(to_image, labels)) / 2
    return loss
