"""The demo teacher's caption-word head: caption words as an auxiliary target for the RGB
teacher's image embedding (stage rgb, apps.demo.teacher.TeacherStage, --word-loss).

A linear head reads the image embedding (before normalization) and predicts the caption's bag of
words: softmax cross-entropy against the caption's word set, each word weighted by its inverse
document frequency over the captions seen so far (times an optional per-word boost), normalized
to sum to one. Token ids are hashed into `buckets` classes, so no vocabulary is needed up front.

Why: in contrastive training a relation word ("left of" vs "right of") separates a caption from
the others in a batch only when the batch holds the same objects in another relation, so its
gradient starts near zero on both towers; predicting the words gives the image tower a direct
signal (benchmarks/results/demo_teacher_trials.md, section 5). The head is not part of the
exported OpenCLIP checkpoint.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["CaptionWords", "WORD_HEAD"]

WORD_HEAD = "word_head"  # the head's name on the model (dropped at export)


class CaptionWords(nn.Module):
    def __init__(self, dim: int, ignore_ids=(0,), boost: dict[int, float] | None = None, buckets: int = 1024):
        super().__init__()
        if buckets < 2:
            raise ValueError(f"caption words: buckets must be >= 2, got {buckets}")
        self.buckets = int(buckets)
        self.head = nn.Linear(dim, self.buckets)
        self.ignore = sorted({int(i) for i in ignore_ids})
        w = torch.ones(self.buckets)
        for token, factor in (boost or {}).items():
            if not (factor > 0 and math.isfinite(factor)):
                raise ValueError(f"caption words: the boost of token {token} must be a positive number, got {factor}")
            w[int(token) % self.buckets] = float(factor)
        self.register_buffer("boost", w, persistent=False)
        self.register_buffer("doc_freq", torch.zeros(self.buckets, dtype=torch.float64), persistent=False)
        self.register_buffer("docs", torch.zeros((), dtype=torch.float64), persistent=False)

    def targets(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, buckets] multi-hot of the caption's words (special ids left out)."""
        keep = torch.ones_like(tokens, dtype=torch.bool)
        for i in self.ignore:
            keep &= tokens != i
        hot = torch.zeros(tokens.shape[0], self.buckets, device=tokens.device)
        # add, not write: an ignored id that shares a bucket with a word must not erase it
        hot.scatter_add_(1, tokens % self.buckets, keep.float())
        return (hot > 0).float()

    def forward(self, embedding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, D] image embeddings, [B, L] their captions' tokens -> scalar loss. Counts the
        captions' words into the document frequencies first (training and evaluation alike)."""
        hot = self.targets(tokens)
        with torch.no_grad():
            self.doc_freq += hot.sum(0).double()
            self.docs += hot.shape[0]
            idf = torch.log(self.docs / (1.0 + self.doc_freq)).clamp(min=0.05).float() * self.boost
        weight = hot * idf
        weight = weight / weight.sum(1, keepdim=True).clamp(min=1e-12)
        logp = self.head(embedding.float()).log_softmax(-1)
        return -(weight * logp).sum(1).mean()
