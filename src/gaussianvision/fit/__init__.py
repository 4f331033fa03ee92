"""Fitting images with 2D Gaussians: initializers, the batched optimizer loop, metrics."""
from .fitter import FitConfig, FitResult, fit_images
from .metrics import psnr, ssim

__all__ = ["FitConfig", "FitResult", "fit_images", "psnr", "ssim"]
