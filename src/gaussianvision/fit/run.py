"""The whole fit of a batch of images: `fit_images` (the library's one call) and `run_fit` (the same, returning
the finished Fitter): coarse to fine where the config asks for it (fit/coarse.py), the iterations, the prune and
its fine-tune, the final colors. Fitter (fit/fitter.py) holds the optimization itself.
"""
from __future__ import annotations

import numbers
from dataclasses import replace

import torch

from gaussianvision.splats.types import Splats
from gaussianvision.fit.coarse import start_coarse_to_fine
from gaussianvision.fit.config import FitConfig, too_many_gaussians
from gaussianvision.fit.fitter import FitResult, Fitter
from gaussianvision.fit.prepare import check_images, fit_device, torch_serial
from gaussianvision.fit.metrics import SSIM_WINDOW

__all__ = ["fit_images", "run_fit"]


def fit_images(images: torch.Tensor, n_gaussians: int | None, iters: int | None = None,
               init: str | Splats | None = None, config: FitConfig | None = None, progress: bool = False,
               **overrides) -> FitResult:
    """Fit `n_gaussians` Gaussians to each of the B images [B, 3, H, W] in [0, 1].

    init: an initializer name (grid | content | random) or Splats [B, N] to continue from.
    overrides: any FitConfig field (e.g. lr_means=0.5, target_psnr=30, device="cuda"), or preset="fast"
    (fit/presets.py: its settings, the other overrides over them).
    Metrics per image: psnr, ssim, n_gaussians, iterations, seconds (the image's share: the
    batch's wall time divided by B), batch_seconds (the whole batch's wall time), pruned, stopped."""
    if "preset" in overrides:  # a preset's settings under the other options, as FitConfig.from_options gives them
        if config is not None:
            raise TypeError("fit_images: give preset= or config=, not both (FitConfig.from_options({'preset': ...}) "
                            "makes a config of a preset)")
        config = FitConfig.from_options({"preset": overrides.pop("preset")})
    cfg = replace(config) if config is not None else FitConfig()
    for k, v in dict(overrides, **({"iters": iters} if iters is not None else {})).items():
        if k not in FitConfig.__dataclass_fields__:
            raise TypeError(f"fit_images: unknown option {k!r}")
        setattr(cfg, k, v)
    if isinstance(init, str):
        cfg.init = init
    return run_fit(images, n_gaussians, cfg, init, progress).result()


def run_fit(images: torch.Tensor, n_gaussians: int | None, cfg: FitConfig, init: str | Splats | None = None,
            progress: bool = False) -> Fitter:
    """fit_images' whole fit, on the Fitter it returns (finished): coarse to fine where cfg asks for it and
    coarse_plan allows it, the iterations, the prune and its fine-tune, the final colors. For callers
    that want more than the result, e.g. the PSNR history at cfg.record_at (whole-fit iterations)."""
    h, w = check_images(images).shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"fit_images: images are {h}x{w}; at least {SSIM_WINDOW} pixels a side (the SSIM window "
                         "each fit reports with)")
    if isinstance(n_gaussians, numbers.Integral) and not isinstance(n_gaussians, bool) and \
            (reason := too_many_gaussians(n_gaussians, h, w, f"{n_gaussians} Gaussians", "image's")):
        raise ValueError(f"fit_images: {reason}")
    with torch_serial(cfg, fit_device(cfg, images)):
        return _run_fit(images, n_gaussians, cfg, init, progress)


def _run_fit(images, n_gaussians, cfg: FitConfig, init, progress: bool) -> Fitter:
    main = cfg
    if cfg.budget_ms is not None and cfg.prunes and cfg.finetune_iters and cfg.iters:  # the fine-tune's share of the budget
        main = replace(cfg, budget_ms=cfg.budget_ms * cfg.iters / (cfg.iters + cfg.finetune_iters))
    f = start_coarse_to_fine(images, n_gaussians, main, init, progress) if cfg.coarse_fraction > 0 else None
    f = f or Fitter(images, n_gaussians, main, init=init)
    f.run(cfg.iters - int(f.iterations.max()), progress=progress)
    if main is not cfg:  # the main phase spent its share; the fine-tune has the rest
        f.cfg = replace(f.cfg, budget_ms=cfg.budget_ms)
        f.stopped = [None if why == "budget" else why for why in f.stopped]
    if cfg.prunes:
        f.prune(cfg.prune_measure, cfg.prune_tau, cfg.prune_fraction)
        if cfg.finetune_iters:
            f.run(cfg.finetune_iters, progress=progress, desc="fine-tune after pruning", relocate=False)
    return f.finish()
