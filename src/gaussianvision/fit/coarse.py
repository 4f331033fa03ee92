"""Coarse to fine: the first part of a fit on the images downsampled, the rest at full size from those splats
scaled up (splats are resolution-free), Adam's moments carried over in full-size units.

    plan = coarse_plan(224, 224, 400, cfg)          # (112, 112, coarse iterations) or None where it does not apply
    f = start_coarse_to_fine(images, 400, cfg)      # the full-size Fitter after the coarse phase, or None

run_fit (fit/run.py) takes this path wherever cfg.coarse_fraction > 0 and coarse_plan allows it.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from gaussianvision.splats.types import Splats
from gaussianvision.fit.config import FitConfig
from gaussianvision.fit.budget import step_from_render
from gaussianvision.fit.fitter import Fitter
from gaussianvision.fit.prepare import check_images, fit_device, torch_serial
from gaussianvision.fit.metrics import SSIM_WINDOW

__all__ = ["coarse_plan", "upscaled_gradients", "start_coarse_to_fine", "first_step_seconds"]

# Under a tight budget the first full-size step is estimated from timed renders (first_step_seconds) where the area
# ratio's estimate leaves room for fewer than FIRST_STEP_CHECK steps.
FIRST_STEP_CHECK = 20


def coarse_plan(height: int, width: int, n_gaussians: int | None, cfg: FitConfig,
                init: str | Splats | None = None) -> tuple[int, int, int] | None:
    """(coarse height, coarse width, coarse iterations) of a coarse-to-fine fit of `height` x `width`
    images, or None where it does not apply: coarse_fraction 0, init given as Splats, coarse images
    under 8 px a side (with ssim_weight, under the SSIM window: the loss takes SSIM of them) or under
    coarse_min_pixels pixels per Gaussian, or no coarse iteration."""
    ch, cw = round(height * cfg.coarse_scale), round(width * cfg.coarse_scale)
    coarse_iters = int(cfg.coarse_fraction * cfg.iters)
    smallest = SSIM_WINDOW if cfg.ssim_weight > 0 else 8
    if (cfg.coarse_fraction <= 0 or isinstance(init, Splats) or min(ch, cw) < smallest or coarse_iters < 1
            or ch * cw < cfg.coarse_min_pixels * int(n_gaussians or 0)):
        return None
    return ch, cw, coarse_iters


def upscaled_gradients(sx: float, sy: float) -> dict[str, torch.Tensor]:
    """How the squared error's gradients change when splats and image are scaled by (sx, sy) (more
    pixels: area = sx sy times the error; parameters in scaled units: each divides by its own scale,
    means (sx, sy), chol (sx, sy, sy) as in Splats.scaled): the factors Adam's moments carry over by."""
    area = sx * sy
    return {"means": torch.tensor([area / sx, area / sy]), "chol": torch.tensor([area / sx, area / sy, area / sy]),
            "colors": torch.tensor([area])}


def start_coarse_to_fine(images, n_gaussians, cfg: FitConfig, init=None, progress: bool = False) -> Fitter | None:
    """Coarse to fine: the first coarse_fraction of the iterations on the images downsampled by
    coarse_scale (area), then a Fitter at full resolution starting from those splats scaled back up,
    its Adam going on from the coarse phase's moments in full-size units (upscaled_gradients), its
    iteration counts, steps_done and seconds including the coarse phase's. With budget_ms the coarse
    phase has coarse_fraction of it. None when the coarse images would be too
    small (under 8 px a side, or under coarse_min_pixels pixels per Gaussian) or init is given as Splats."""
    images = check_images(images)
    with torch_serial(cfg, fit_device(cfg, images)):  # also when called on its own (review finding)
        return _coarse_to_fine(images, n_gaussians, cfg, init, progress)


def _coarse_to_fine(images, n_gaussians, cfg: FitConfig, init, progress: bool) -> Fitter | None:
    h, w = images.shape[-2:]
    plan = coarse_plan(h, w, n_gaussians, cfg, init)
    if plan is None:
        return None
    ch, cw, coarse_iters = plan
    small = torch.nn.functional.interpolate(images.to(fit_device(cfg, images)), size=(ch, cw), mode="area")
    budget = None if cfg.budget_ms is None else cfg.budget_ms * cfg.coarse_fraction
    # with lr_spacing, the coarse phase takes the full-size fit's steps in its own (coarse) pixels: the long moves
    spacing = None if cfg.lr_spacing is None else cfg.lr_spacing * math.sqrt(ch * cw / (h * w))
    c = Fitter(small, n_gaussians, replace(cfg, target_psnr=None, plateau_patience=None, record_at=(), budget_ms=budget,
                                           lr_spacing=spacing, final_colors=0))
    c.evaluated = False  # its splats are scaled up, never evaluated: its budget share keeps no room for that
    c.run(coarse_iters, progress=progress, desc="coarse phase")
    c.stopped = [None] * c.batch_size  # the coarse phase's budget share ends it, not the fit
    s = c.splats().scaled(h, w)
    f = Fitter(images, None, replace(cfg, color_solve=0), init=s)
    f.opt.carry(c.opt, upscaled_gradients(w / cw, h / ch))
    f.iterations += c.iterations
    f.seconds += c.seconds
    f.steps_done = c.steps_done  # record_at counts the whole fit's iterations
    f.step_seconds = first_step_seconds(c, f)  # the budget's estimate until a full-size step is timed
    return f


def first_step_seconds(c: Fitter, f: Fitter) -> float:
    """What the first full-size step of f is expected to take after the coarse phase c (its last step's time
    c.step_seconds, or, where it took none, its estimate from the initial color solve): that step scaled by the area ratio, where a step's cost is its pixels' work (large images).
    Where a tight budget has room for fewer than FIRST_STEP_CHECK such steps left, at most the coarse step
    plus step_from_render of the extra time of a full-size render over a coarse one, both timed here (their
    time counts in f.seconds): a step on a small image is mostly its fixed cost, which the area ratio scaled
    too. Regression: the area's estimate, about 4x a 128 px step of N=200, kept a 40 ms budget from any
    full-size step (and its reserves for the final colors and evaluation, in steps, were 4x too large)."""
    by_area = c.step_seconds * (f.h * f.w) / (c.h * c.w)
    cfg = f.cfg
    left = None if cfg.budget_ms is None else cfg.budget_ms * f.batch_size / 1000 - f.seconds
    # only where it can matter (a budget with room left, a coarse step timed or foreseen) and the step is the render and its
    # backward (not SSIM's passes or a nested fit's prefixes, which the renders would not foresee: review finding)
    if left is None or left <= 0 or by_area <= 0 or left > FIRST_STEP_CHECK * by_area or cfg.ssim_weight > 0 \
            or cfg.prefix_fractions:
        return by_area
    times = [f.timed_render(fitter.splats()) for fitter in (c, f)]
    f.seconds += sum(times)
    return min(by_area, c.step_seconds + step_from_render(max(times[1] - times[0], 0.0)))
