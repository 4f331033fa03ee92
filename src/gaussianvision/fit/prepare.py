"""What a fit needs before its first step: the images checked, its device, torch kept to one thread where the
numba kernels render (torch_serial), and the kernels compiled or loaded once per process (compile_kernels), so
no budget pays for a one-time cost."""
from __future__ import annotations

import contextlib
import math

import torch

from gaussianvision.raster import render, resolve_backend
from gaussianvision.raster.cpu_threads import serial_torch
from gaussianvision.splats.types import Splats
from gaussianvision.fit.adam import BatchAdam
from gaussianvision.fit.config import FitConfig
from gaussianvision.fit.metrics import SSIM_WINDOW, fast_ssim_applies, ssim

__all__ = ["check_images", "fit_device", "torch_serial", "compile_kernels", "RANGE_SLACK"]


RANGE_SLACK = 1e-3  # how far outside [0, 1] an image may stray (rounding, a resize's overshoot clamped by the caller)


def check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"fit_images: images must be a tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"fit_images: images must be [B, 3, H, W], got {list(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"fit_images: empty image batch {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"fit_images: images are {str(images.dtype).replace('torch.', '')}; give floats in [0, 1] "
                         "(e.g. images / 255)")
    lo, hi = torch.stack(torch.aminmax(images)).tolist()  # one wait on a GPU; NaN and Inf show in them
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("fit_images: images contain NaN or Inf")
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(f"fit_images: images must lie in [0, 1] (PSNR's peak is 1), got values from {lo:.3g} to {hi:.3g}")
    return images.float()


def fit_device(cfg: FitConfig, images: torch.Tensor) -> torch.device:
    try:
        dev = torch.device(cfg.device) if cfg.device else images.device
    except (RuntimeError, TypeError) as e:  # regression (new-user trial): torch's own error, raw
        raise ValueError(f"fit_images: device {cfg.device!r} is not a device torch knows ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("fit_images: device 'cuda' was requested but CUDA is not available here")
    return dev


def torch_serial(cfg: FitConfig, device: torch.device):
    """serial_torch() where the fit renders with the numba kernels, else no change: torch's own operations on one
    thread, the kernels on all, over the whole fit (initialization, steps, final colors, metrics). Regression:
    the initialization ran outside it, torch's small operations on 2 OpenMP threads, which on a machine with
    other work wait for each other: a lone 128 px photo's blurs and pads took 150-200 ms instead of about 5,
    so a 40 ms budget was spent 5x over before the first iteration."""
    return serial_torch() if resolve_backend(cfg.backend, device) == "numba" else contextlib.nullcontext()


_COMPILED: set = set()


def compile_kernels(device: torch.device, height: int, width: int, backend: str = "auto") -> None:
    """Render one Gaussian, forward and backward, once per process (and on a GPU, per image size), and
    on CPU take one fused Adam step: the Triton backend compiles its kernels on first use (seconds),
    and numba's load from their cache at the first call (0.3-0.5 s on CPU; the Adam step's 7 ms more);
    a one-time cost of the process, not of the fit. Without it a budget was spent before the first
    iteration: gsv fit's first batch got 0 iterations under a 250 ms budget while the others got 150."""
    cuda = device.type == "cuda"
    key = (str(device), backend) + ((int(height), int(width)) if cuda else ())
    if key in _COMPILED:
        return
    if not cuda:
        height, width = 16, 16  # numba's kernels are the same at every size
    with torch.enable_grad():  # also under a caller's no_grad
        colors = torch.zeros(1, 1, 3, device=device, requires_grad=True)
        one = Splats(torch.tensor([[[width / 2, height / 2]]], device=device),
                     torch.tensor([[[1.0, 0.0, 1.0]]], device=device), colors, int(height), int(width))
        render(one, backend=backend).sum().backward()
    if not cuda and resolve_backend(backend, device) == "numba":  # the fused Adam step's kernel too (7 ms)
        BatchAdam({"x": torch.zeros(1, 1, 3)}, {"x": 0.1}, fused=True).step({"x": torch.ones(1, 1, 3)})
    tiny = torch.zeros(1, 3, SSIM_WINDOW, SSIM_WINDOW)
    if not cuda and fast_ssim_applies(tiny, tiny):  # SSIM's kernel, whatever renders (a budget times it: _time_ssim)
        ssim(tiny, tiny)
    if cuda:
        torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)  # cuBLAS's start-up (the init's blur)
        torch.cuda.synchronize(device)
    _COMPILED.add(key)
