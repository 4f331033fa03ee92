"""Fitting images with 2D Gaussians: initializers, the batched optimizer loop, pruning, metrics, and
the batched fit-and-encode stream (FitStream) that the applications run images through."""
from .fitter import FitConfig, FitResult, Fitter
from .run import fit_images
from .init import INITIALIZERS, initialize
from .metrics import psnr, ssim
from .prune import MEASURES, importance, prune_splats
from .stream import Encoding, FitItem, FitStream

__all__ = ["FitConfig", "FitResult", "Fitter", "fit_images", "INITIALIZERS", "initialize", "MEASURES",
           "importance", "prune_splats", "psnr", "ssim", "Encoding", "FitItem", "FitStream"]
