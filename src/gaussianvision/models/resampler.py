"""Perceiver resampler: a fixed number of learned latent queries read a variable-size set.

Each layer (pre-norm, as in Flamingo's resampler):
    kv      = [LN_x(tokens); LN_q(latents)]         keys/values: the set AND the latents
    latents = latents + Attn(LN_q(latents), kv)     padding keys masked out
    latents = latents + FFN(LN_f(latents))          GELU, hidden = mlp_ratio * dim
and a final LayerNorm.  Letting the latents attend to themselves too means an image with
zero valid Gaussians is still well defined (no all-masked softmax row).  Attention over a
set is order-free, so the output does not depend on the order of the Gaussians, and masked
keys get exactly zero weight, so padding does not change it either.

Shared narrow keys/values (``kv_dim`` set; the default None is the design above, unchanged):
    kv_set  = Linear_kv(LN_x(tokens))                 ONCE, width 2 * kv_dim, for all layers
    per layer: q = to_q(LN_q(latents)), kv = [kv_set; to_kv_lat(LN_q(latents))], all kv_dim
               wide; Attn's output is projected back to the latent width
Only the first ``cross_layers`` layers (default: all) read the set; the rest attend to the
latents alone.  FLOPs per Gaussian (Q latents): layers x (4 token_dim dim + 4 Q dim) before,
4 token_dim kv_dim + cross_layers x 4 Q kv_dim with shared keys/values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PerceiverResampler"]


def _split(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = t.shape
    return t.reshape(b, n, heads, d // heads).transpose(1, 2)


class _CrossAttention(nn.Module):
    def __init__(self, dim: int, token_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"resampler: width {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(token_dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(token_dim, 2 * dim)
        # Flamingo shares one key/value projection between the set and the latents; a
        # separate one is needed only when the Gaussian tokens are narrower than the latents
        self.to_kv_latents = nn.Linear(dim, 2 * dim) if token_dim != dim else None
        self.out = nn.Linear(dim, dim)

    def forward(self, latents: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, q_len, dim = latents.shape
        lq = self.norm_q(latents)
        q = self.to_q(lq)
        kv_lat = (self.to_kv if self.to_kv_latents is None else self.to_kv_latents)(lq)
        kv = torch.cat([self.to_kv(self.norm_x(x)), kv_lat], 1)
        k, v = kv.chunk(2, -1)
        hd = dim // self.heads

        def split(t):
            return t.reshape(b, t.shape[1], self.heads, hd).transpose(1, 2)

        # keep: [B, 1, 1, N + Q] True = attend
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=keep)
        return self.out(o.transpose(1, 2).reshape(b, q_len, dim))


class _NarrowAttention(nn.Module):
    """Latents attend, at width kv_dim, to [precomputed set keys/values; their own]."""

    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        if kv_dim % heads:
            raise ValueError(f"resampler: kv_dim {kv_dim} is not divisible by heads={heads}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, kv_dim, bias=False)
        self.to_kv_latents = nn.Linear(dim, 2 * kv_dim)
        self.out = nn.Linear(kv_dim, dim)

    def forward(self, latents: torch.Tensor, kv_set: torch.Tensor | None,
                keep: torch.Tensor | None) -> torch.Tensor:
        b, q_len, _ = latents.shape
        lq = self.norm_q(latents)
        kv = self.to_kv_latents(lq)
        if kv_set is not None:  # keys/values [set | latents], each half [k | v]
            kv = torch.cat([kv_set, kv], 1)
        k, v = kv.chunk(2, -1)
        q = self.to_q(lq)
        o = F.scaled_dot_product_attention(_split(q, self.heads), _split(k, self.heads),
                                           _split(v, self.heads), attn_mask=keep)
        return self.out(o.transpose(1, 2).reshape(b, q_len, -1))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class PerceiverResampler(nn.Module):
    """tokens [B, N, token_dim] + mask [B, N] (True = valid) -> latents [B, num_latents, dim]."""

    def __init__(self, dim: int, num_latents: int = 196, layers: int = 4, heads: int | None = None,
                 mlp_ratio: float = 2.0, token_dim: int | None = None, kv_dim: int | None = None,
                 cross_layers: int | None = None):
        super().__init__()
        token_dim = token_dim or dim
        self.dim, self.num_latents, self.token_dim = dim, num_latents, token_dim
        self.kv_dim = kv_dim
        self.cross_layers = layers if cross_layers is None else min(int(cross_layers), layers)
        if kv_dim is None and self.cross_layers != layers:
            raise ValueError("resampler: cross_layers needs kv_dim (shared keys/values)")
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        hidden = max(1, int(round(mlp_ratio * dim)))
        if kv_dim is None:  # the original design (module order kept: same init under a seed)
            heads = heads or max(1, dim // 64)
            self.attn = nn.ModuleList(_CrossAttention(dim, token_dim, heads) for _ in range(layers))
        else:
            heads = heads or max(1, kv_dim // 64)
            self.norm_x = nn.LayerNorm(token_dim)
            self.to_kv = nn.Linear(token_dim, 2 * kv_dim)
            self.attn = nn.ModuleList(_NarrowAttention(dim, kv_dim, heads) for _ in range(layers))
        self.ff = nn.ModuleList(_FeedForward(dim, hidden) for _ in range(layers))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.token_dim:
            raise ValueError(f"resampler: tokens must be [B, N, {self.token_dim}], got {list(tokens.shape)}")
        b, n, _ = tokens.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
        if mask.shape != (b, n):
            raise ValueError(f"resampler: mask must be [{b}, {n}], got {list(mask.shape)}")
        keep = torch.cat([mask.to(torch.bool),
                          torch.ones(b, self.num_latents, dtype=torch.bool, device=mask.device)], 1)
        keep = keep[:, None, None, :]
        lat = self.latents.to(tokens.dtype).unsqueeze(0).expand(b, -1, -1)
        if self.kv_dim is not None:
            return self._forward_shared(lat, tokens, keep)
        for attn, ff in zip(self.attn, self.ff):
            lat = lat + attn(lat, tokens, keep)
            lat = lat + ff(lat)
        return self.norm_out(lat)

    def _forward_shared(self, lat: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        kv_set = self.to_kv(self.norm_x(tokens))  # once, shared by the layers that read the set
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
            reads_set = i < self.cross_layers
            lat = lat + attn(lat, kv_set if reads_set else None, keep if reads_set else None)
            lat = lat + ff(lat)
        return self.norm_out(lat)
