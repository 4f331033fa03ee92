"""The trainable half of the GS vision tower (the frozen half is the base ViT's blocks).

Data flow of GSCLIP.encode_image (shapes for ViT-B/16, Q latents):
  splats -> SplatStem [B, N, 768] -> PerceiverResampler [B, Q, 768]
  -> prepend CLS, add positional embedding [B, 1+Q, 768]           (this module: ``embed``)
  -> base ln_pre -> base transformer blocks (FROZEN, shared with the RGB tower)
  -> ln_post, pool (the base's pool type: CLS token or mean) -> @ proj [B, 512]  (``head``)

Positional embedding (config key ``pos_embed``), always a trainable [1+Q, width] parameter:
  copy    Q equals the base's patch count: start from the base's learned embedding (CLS row
          included), so the frozen blocks see the statistics they were trained on
  interp  start from the base's patch embedding resized (bilinear) to an h x w grid with
          h * w = Q (the factorization closest to the base grid's aspect, h <= w on ties:
          98 -> 7 x 14); the CLS row is copied
  random  N(0, width^-1/2), like a fresh OpenCLIP ViT
  auto    copy when Q matches the patch count, otherwise interp (the shipped configs)
The latent queries are learned per slot, so the positions add no expressiveness; they
matter as an initialization that the frozen blocks already understand.
CLS embedding, ln_post and proj start as copies of the base's and are trainable, so stage 1
starts from the RGB tower's head.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from gaussianvision.splats.types import Splats
from .config import ConfigError
from .resampler import PerceiverResampler
from .stem import SplatStem

__all__ = ["GSVisionTower", "grid_for"]


def grid_for(q: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The h x w factorization of q closest in aspect to `grid` (h <= w on ties)."""
    target = math.log(grid[0] / grid[1])
    best = None
    for h in range(1, q + 1):
        if q % h:
            continue
        w = q // h
        key = (round(abs(math.log(h / w) - target), 9), h > w)
        if best is None or key < best[0]:
            best = (key, (h, w))
    return best[1]


def _check_base_visual(visual) -> None:
    from open_clip.transformer import VisionTransformer
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(
            f"base: the GS tower needs an OpenCLIP VisionTransformer image tower, got {type(visual).__name__}"
        )
    if visual.attn_pool is not None:
        raise ConfigError("base: attentional-pooling image towers (CoCa-style) are not supported")
    if visual.pool_type not in ("tok", "avg"):
        raise ConfigError(f"base: pool_type {visual.pool_type!r} gives no single embedding; need 'tok' or 'avg'")
    if visual.proj is None:
        raise ConfigError("base: image tower has no output projection")


class GSVisionTower(nn.Module):
    """Stem, resampler, CLS/positions and output head; built next to a base VisionTransformer."""

    def __init__(self, cfg: dict, base_visual):
        super().__init__()
        _check_base_visual(base_visual)
        width = int(base_visual.class_embedding.shape[0])
        st, rs = cfg["stem"], cfg["resampler"]
        token_dim = st["token_dim"] or width
        if rs["heads"] is not None and rs["kv_dim"] is None and width % rs["heads"]:
            raise ConfigError(f"resampler.heads {rs['heads']} does not divide the width {width} of base "
                              f"{cfg['base']!r}")
        self.width = width
        self.num_latents = int(rs["num_latents"])
        ref = base_visual.class_embedding
        with torch.device(ref.device):  # built where the base lives (meta: shapes only, no init cost)
            self.stem = SplatStem(token_dim, st["pos_bands"], st["shape_bands"], st["hidden"],
                                  st["log_sigma_center"], st["log_sigma_width"])
            self.resampler = PerceiverResampler(width, self.num_latents, rs["layers"], rs["heads"],
                                                rs["mlp_ratio"], token_dim, rs["kv_dim"], rs["cross_layers"])
        self.class_embedding = nn.Parameter(ref.detach().clone())
        self.positional_embedding = nn.Parameter(self._init_pos(cfg["pos_embed"], base_visual))
        self.pos_embed_mode = self._resolved_mode
        self.ln_post = copy.deepcopy(base_visual.ln_post)
        self.proj = nn.Parameter(base_visual.proj.detach().clone())
        self.pool_type = base_visual.pool_type
        self.final_ln_after_pool = bool(base_visual.final_ln_after_pool)
        for p in self.parameters():
            p.requires_grad_(True)

    def _init_pos(self, mode: str, visual) -> torch.Tensor:
        base_pos = visual.positional_embedding.detach()
        gh, gw = visual.grid_size
        q, width = self.num_latents, self.width
        if base_pos.shape[0] != gh * gw + 1:
            mode = "random" if mode == "auto" else mode
        if mode == "auto":
            mode = "copy" if q == gh * gw else "interp"
        self._resolved_mode = mode
        if mode == "copy":
            if q != gh * gw or base_pos.shape[0] != q + 1:
                raise ConfigError(
                    f"pos_embed 'copy' needs num_latents == the base's {gh}x{gw}={gh * gw} patches, got {q}"
                )
            return base_pos.clone()
        if mode == "interp":
            h, w = grid_for(q, (gh, gw))
            grid = base_pos[1:].reshape(1, gh, gw, width).permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            patches = grid.permute(0, 2, 3, 1).reshape(q, width).to(base_pos.dtype)
            return torch.cat([base_pos[:1], patches], 0)
        return torch.randn(q + 1, width, device=base_pos.device, dtype=base_pos.dtype) * width ** -0.5

    def embed(self, splats: Splats) -> torch.Tensor:
        """splats -> [B, 1 + Q, width]: CLS + resampled tokens, positions added."""
        tokens, mask = self.stem(splats)
        lat = self.resampler(tokens, mask)
        cls = self.class_embedding.to(lat.dtype).view(1, 1, -1).expand(lat.shape[0], -1, -1)
        return torch.cat([cls, lat], 1) + self.positional_embedding.to(lat.dtype)

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone output [B, 1 + Q, width] -> (embedding [B, D], tokens [B, Q, width])."""
        x = x.to(self.proj.dtype)  # the base may run its blocks in another dtype (open_clip "bf16")
        if self.final_ln_after_pool:
            pooled, tokens = self._pool(x)
            pooled = self.ln_post(pooled)
        else:
            x = self.ln_post(x)
            pooled, tokens = self._pool(x)
        return pooled @ self.proj.to(pooled.dtype), tokens

    def _pool(self, x):
        if self.pool_type == "avg":
            return x[:, 1:].mean(1), x[:, 1:]
        return x[:, 0], x[:, 1:]
