"""A learned initializer: a small network shapes and nudges the `content` init's Gaussians.

`init_content` places N isotropic Gaussians where the image has detail. `init_learned` starts from
exactly those Gaussians and lets a small convolutional network (12,085 parameters, weights in
`weights/learned_init.npz`, trained by `python -m gaussianvision.apps.initnet`) predict, for each
Gaussian, a shift of its mean and an anisotropic covariance from the pixels around it:

    features = CNN(image resized so that the mean spacing sqrt(H W / N) is SPACING_PX pixels)
    f_i      = [features sampled at mean_i, log(sigma_i / spacing)]
    (dx, dy, a, b, c) = MLP(f_i)
    mean_i  += 0.5 tanh(dx, dy) sigma_i
    Sigma_i  = sigma_i^2 expm([[a, b], [b, c]])           (a, b, c bounded by tanh)

Everything is in units of the spacing, so one network serves any N and any image size. The last
layer starts at zero, where the output is the `content` init itself; training (end to end through
the renderer, on the loss after the least-squares colors, fit/colors.py) only moves it from there.
Colors are then set as for `content` (match_colors); the fitter's `color_solve` refines them.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..splats.params import cov_to_chol
from ..splats.types import Splats
from .init import init_content, match_colors

__all__ = ["InitNet", "init_learned", "load_init_net", "save_init_net", "shape_gaussians",
           "WEIGHTS_PATH", "SPACING_PX"]

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "learned_init.npz"
SPACING_PX = 4.0  # the network sees the image at 4 pixels per mean spacing


class InitNet(nn.Module):
    """CNN features at the spacing's scale + a per-Gaussian MLP -> (dx, dy, a, b, c)."""

    def __init__(self, width: int = 24, hidden: int = 32):
        super().__init__()
        self.width, self.hidden = width, hidden
        self.convs = nn.ModuleList([nn.Conv2d(3, width, 3, padding=1),
                                    nn.Conv2d(width, width, 3, padding=2, dilation=2),
                                    nn.Conv2d(width, width, 3, padding=4, dilation=4)])
        self.fc1 = nn.Linear(width + 1, hidden)
        self.fc2 = nn.Linear(hidden, 5)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def features(self, images: torch.Tensor, n: int) -> torch.Tensor:
        """[B, width, h, w] features of images resized to SPACING_PX pixels per mean spacing."""
        h, w = images.shape[-2:]
        f = min(4.0, max(0.1, SPACING_PX / math.sqrt(h * w / max(n, 1))))
        size = (max(4, round(h * f)), max(4, round(w * f)))
        x = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=f < 1) - 0.5
        for conv in self.convs:
            x = F.gelu(conv(x))
        return x

    def forward(self, images: torch.Tensor, means: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """[B, N, 5] raw outputs for Gaussians at means [B, N, 2] (pixels) of size sigma [B, N]."""
        h, w = images.shape[-2:]
        feats = self.features(images, means.shape[1])
        g = torch.stack([means[..., 0] / w * 2 - 1, means[..., 1] / h * 2 - 1], -1)[:, :, None]
        at = F.grid_sample(feats, g, mode="bilinear", padding_mode="border", align_corners=False)
        at = at[..., 0].transpose(1, 2)  # [B, N, width]
        spacing = math.sqrt(h * w / max(means.shape[1], 1))
        rel = torch.log(sigma / spacing).unsqueeze(-1)
        return self.fc2(F.gelu(self.fc1(torch.cat([at, rel], -1))))


def shape_gaussians(raw: torch.Tensor, means: torch.Tensor, sigma: torch.Tensor,
                    height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means [B, N, 2] and chol [B, N, 3] from the network's raw outputs (zero raw: unchanged)."""
    shift = 0.5 * torch.tanh(raw[..., :2]) * sigma.unsqueeze(-1)
    lim = torch.tensor([width, height], dtype=means.dtype, device=means.device)
    new_means = torch.minimum(torch.clamp(means + shift, min=0.0), lim)
    a, b, c = (1.5 * torch.tanh(raw[..., k]) for k in (2, 3, 4))
    m, d = 0.5 * (a + c), 0.5 * (a - c)
    r = torch.sqrt(d * d + b * b + 1e-12)
    ch, sh_r = torch.cosh(r), torch.sinh(r) / r  # expm of the traceless part: cosh(r) I + sinh(r)/r N
    var = (sigma * sigma) * torch.exp(m)
    cov = torch.stack([var * (ch + sh_r * d), var * sh_r * b, var * (ch - sh_r * d)], -1)
    return new_means, cov_to_chol(cov)


def save_init_net(net: InitNet, path: str | Path) -> None:
    """Weights as a plain .npz (no pickle): one float32 array per parameter, plus the widths."""
    arrays = {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}
    arrays["__widths__"] = np.array([net.width, net.hidden], dtype=np.int64)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@lru_cache(maxsize=4)
def _load(path: str) -> InitNet:
    with np.load(path, allow_pickle=False) as z:
        width, hidden = (int(v) for v in z["__widths__"])
        net = InitNet(width, hidden)
        net.load_state_dict({k: torch.from_numpy(z[k]) for k in net.state_dict()})
    return net.eval().requires_grad_(False)


def load_init_net(path: str | Path | None = None) -> InitNet:
    """The shipped network (or the one at path); a clear error when the file is missing."""
    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise FileNotFoundError(f"learned initializer: no weights at {p}; train them with "
                                f"`python -m gaussianvision.apps.initnet --out {p}`")
    return _load(str(p.resolve()))


def init_learned(images: torch.Tensor, n: int, generator: torch.Generator | None = None,
                 backend: str = "auto", net: InitNet | None = None) -> Splats:
    """The `content` init, each Gaussian then shifted and shaped by the learned network."""
    s = init_content(images, n, generator=generator, backend=backend)
    net = net if net is not None else load_init_net()
    net = net.to(images.device)
    sigma = s.chol[..., 0]  # content's Gaussians are isotropic: chol = (sigma, 0, sigma)
    with torch.no_grad():
        raw = net(images.float(), s.means.float(), sigma.float()).to(images.dtype)
    s.means, s.chol = shape_gaussians(raw, s.means, sigma, s.height, s.width)
    spacing = math.sqrt(s.height * s.width / max(n, 1))
    return match_colors(s, images, blur_sigma=0.15 * spacing, backend=backend)
