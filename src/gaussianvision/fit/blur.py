"""Separable blurs of image batches (the one owner: SSIM's window, the initializers' and the
relocation's Gaussian blurs).

    blur_valid(images, g)       # [B, C, H, W] -> [B, C, H - 2r, W - 2r]: g (2r + 1 taps) along both axes

The fast path multiplies by band matrices (one [W, W - 2r] and one [H - 2r, H], the kernel on
their diagonals): two BLAS matmuls instead of two depthwise convolutions, which PyTorch's CPU
kernels run several times slower (11 taps on [40, 3, 224, 224]: 22 ms against 165 ms on 2 cores,
fit_ttq: the final SSIM of a batch was about 10% of a `fast` fit's time). A matmul costs W
multiply-adds per output instead of 2r + 1, so sides above BAND_MAX take FFTs instead (a
convolution along each axis by products of real FFTs, zero-padded so nothing wraps): their cost
does not grow with the taps, where the depthwise convolution's does (2048 x 1536 px, 3 channels,
2 cores: 11 taps 1.05 s -> 0.43 s, 241 taps 3.4 s -> 0.39 s; a fit of a large photo with few
Gaussians blurs with sigma = half the Gaussian spacing, hundreds of taps, and spent most of its
time there). `blur_valid_reference`, the two convolutions, is the twin both paths are tested
against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_taps", "blur_valid", "blur_valid_reference", "BAND_MAX"]

BAND_MAX = 512  # sides up to this use band matrices, larger ones FFTs


def gaussian_taps(sigma: float, radius: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[2 radius + 1] normalized Gaussian taps of sigma (pixels)."""
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def blur_valid_reference(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The separable blur as two depthwise convolutions (valid region only)."""
    c = images.shape[1]
    g = g.to(images.dtype)
    out = F.conv2d(images, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _band(n: int, g: torch.Tensor) -> torch.Tensor:
    """[n, n - k + 1]: column j holds g at rows j .. j + k - 1 (x @ band blurs x's last axis)."""
    k = g.numel()
    m = n - k + 1
    band = torch.zeros(n, m, device=g.device, dtype=g.dtype)
    cols = torch.arange(m, device=g.device)
    for i in range(k):
        band[cols + i, cols] = g[i]
    return band


def _fft_valid_last(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """x's last axis correlated with taps g (as conv2d does), valid part: [..., n - k + 1]. The
    full convolution with g reversed, by real FFTs of length n + k - 1 (no wrap-around), read from
    k - 1 on."""
    n, k = x.shape[-1], g.numel()
    size = n + k - 1
    full = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(g.flip(0), size), size)
    return full[..., k - 1:n]


def blur_valid(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] blurred by taps g along W and H, valid region [B, C, H - k + 1, W - k + 1]."""
    h, w = images.shape[-2:]
    if min(h, w) < g.numel():
        return blur_valid_reference(images, g)
    g = g.to(device=images.device, dtype=images.dtype)
    if max(h, w) > BAND_MAX:
        return _fft_valid_last(_fft_valid_last(images, g).transpose(-1, -2), g).transpose(-1, -2)
    return _band(h, g).T @ (images @ _band(w, g))
