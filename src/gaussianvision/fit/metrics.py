"""Image quality metrics: PSNR and SSIM, batched (SSIM: a fused numba kernel on CPU where no gradient
is wanted, ssim_fast; else torch, differentiable, on any device, ssim_reference).

SSIM follows Wang et al. 2004 with the usual constants: an 11x11 Gaussian window of
sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, computed per channel on the valid
region (no padding) and averaged; this matches scikit-image's
structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1, channel_axis=0) to about 1e-4 (tested).
"""
from __future__ import annotations

import numpy as np
import torch

from gaussianvision.fit.blur import blur_valid, gaussian_taps

__all__ = ["psnr", "ssim", "ssim_fast", "ssim_reference", "fast_ssim_applies", "target_blurs", "mse", "MSE_SLAB", "SSIM_WINDOW", "PSNR_CAP"]

PSNR_CAP = 120.0  # dB: what an exact reconstruction reports (mean squared error floored at 1e-12)
SSIM_WINDOW = 11  # pixels a side of the SSIM window: the smallest image a fit can report on


MSE_SLAB = 1 << 22  # values: an image holding more has its squared error summed a slab of rows at a time


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] mean squared error of [B, C, H, W] images (of more than MSE_SLAB values each: _slab_mse)."""
    if _slabbed(pred, target):
        dtype = torch.result_type(pred, target)
        return _slab_mse(pred, target, False, torch.promote_types(dtype, torch.float32)).to(dtype)
    return ((pred - target) ** 2).flatten(1).mean(1)


def _slabbed(pred: torch.Tensor, target: torch.Tensor) -> bool:
    return pred.dim() == 4 and pred.shape == target.shape and pred.shape[0] > 0 and pred[0].numel() > MSE_SLAB


def _slab_mse(pred: torch.Tensor, target: torch.Tensor, clamp: bool, dtype: torch.dtype) -> torch.Tensor:
    """[B] float64 mean squared error (pred clamped to [0, 1] with clamp), summed in `dtype` over slabs of
    rows of about MSE_SLAB values and in float64 across them: no temporary the size of the images (a
    24 Mpixel image's PSNR took 1.7 s, mostly the page faults of three 288 MB temporaries; now 0.1-0.3 s)."""
    b, c, h, w = pred.shape
    rows = max(1, MSE_SLAB // (c * w))
    total = torch.zeros(b, dtype=torch.float64, device=pred.device)
    for y in range(0, h, rows):
        p = pred[..., y:y + rows, :].to(dtype)
        if clamp:
            p = p.clamp(0.0, 1.0)
        total += ((p - target[..., y:y + rows, :].to(dtype)) ** 2).sum((1, 2, 3)).double()
    return total / (c * h * w)


def psnr(pred: torch.Tensor, target: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """[B] PSNR in dB for images in [0, 1]; pred is clamped to [0, 1] first by default. An exact
    reconstruction reports PSNR_CAP (120 dB: the squared error is floored at 1e-12), a finite number
    for JSON; averages over images that include exact ones (flat test images) count it as such."""
    if _slabbed(pred, target):
        m = _slab_mse(pred, target, clamp, torch.float32).float()  # in float32, as below
    else:
        if clamp:
            pred = pred.clamp(0.0, 1.0)
        m = mse(pred.float(), target.float())
    return -10.0 * torch.log10(m.clamp_min(10.0 ** (-PSNR_CAP / 10.0)))


def target_blurs(target: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = 1.5,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The two of SSIM's five blurs that depend on the target alone (its local mean and mean square):
    computed once, ssim(..., target_stats=) reuses them in ssim_reference (where the fused kernel does
    not apply, a fit's budget times them to foresee its final SSIM: Fitter._time_ssim)."""
    y = target.to(torch.promote_types(dtype, torch.float32))
    g = gaussian_taps(sigma, (window - 1) // 2, y.device, y.dtype)
    return blur_valid(y, g), blur_valid(y * y, g)


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = 1.5,
         clamp: bool = True, target_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """[B] mean SSIM of [B, C, H, W] images in [0, 1]; target_stats: target_blurs(target) (the same
    window, sigma and dtype), when already computed: ssim_reference reuses them. Without them, on CPU
    without gradients where numba loads, one fused kernel pass per plane (ssim_fast); else ssim_reference."""
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"ssim: pred and target must be [B, C, H, W] of one shape, got {list(pred.shape)} and "
                         f"{list(target.shape)}")
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"ssim: images are {pred.shape[-2]}x{pred.shape[-1]}; at least {window} pixels a side "
                         "(the SSIM window)")
    if pred.shape[0] == 0 or pred.shape[1] == 0:
        return pred.new_zeros(pred.shape[0], dtype=torch.promote_types(pred.dtype, torch.float32))
    if target_stats is None and fast_ssim_applies(pred, target, window):
        return ssim_fast(pred, target, window, sigma, clamp)
    return ssim_reference(pred, target, window, sigma, clamp, target_stats)


def fast_ssim_applies(pred: torch.Tensor, target: torch.Tensor, window: int = SSIM_WINDOW) -> bool:
    """Whether ssim() takes the fused numba kernel: CPU tensors of the same shape, no gradient wanted,
    sides of at least `window`, numba usable."""
    if pred.device.type != "cpu" or target.device.type != "cpu" or pred.shape != target.shape or pred.dim() != 4:
        return False
    if torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad):
        return False
    if min(pred.shape[-2:]) < window or pred.numel() == 0:
        return False
    from gaussianvision.raster import probe_backend
    return probe_backend("numba")[0]


def ssim_fast(pred: torch.Tensor, target: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = 1.5,
              clamp: bool = True) -> torch.Tensor:
    """ssim_reference's numbers from fit/_ssim_kernels.py (CPU, no gradient): each plane's five blurs
    along its rows, then down its columns a row at a time into SSIM, in the planes' dtype (float32 or
    float64, as ssim_reference promotes), planes spread over the render's threads. [B] float of that dtype."""
    from gaussianvision.raster.cpu_numba import numba_module
    from gaussianvision.raster.cpu_threads import run_items
    kern = numba_module("gaussianvision.fit._ssim_kernels")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    b, c, h, w = pred.shape
    x = pred.detach().to(dtype).reshape(b * c, h, w).contiguous().numpy()
    y = target.detach().to(dtype).reshape(b * c, h, w).contiguous().numpy()
    g = gaussian_taps(sigma, (window - 1) // 2, dtype=dtype).numpy()
    out = np.empty(b * c, np.float64)
    wo = w - g.shape[0] + 1
    run_items(kern.ssim_planes, b * c,
              lambda i0, i1: (x, y, g, clamp, i0, i1, out, np.empty((5, g.shape[0], wo), x.dtype),
                             np.empty((5, wo), x.dtype)),
              b * h * w)
    return torch.from_numpy(out).view(b, c).mean(1).to(dtype)


def ssim_reference(pred: torch.Tensor, target: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = 1.5,
                   clamp: bool = True, target_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """SSIM in torch (differentiable, any device): the blurs by blur_valid, then the formula elementwise."""
    if clamp:
        pred = pred.clamp(0.0, 1.0)
    dtype = torch.promote_types(pred.dtype, torch.float32)
    x, y = pred.to(dtype), target.to(dtype)
    g = gaussian_taps(sigma, (window - 1) // 2, x.device, dtype)

    def blur(t):
        return blur_valid(t, g)

    mu_y, blur_yy = (t.to(dtype) for t in (target_stats or target_blurs(y, window, sigma, dtype)))
    mu_x = blur(x)
    sxx = blur(x * x) - mu_x * mu_x
    syy = blur_yy - mu_y * mu_y
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)
