"""A fit's budget (FitConfig.budget_ms): its clock and what it foresees. `BudgetClock` is the part of the Fitter
(fit/fitter.py) that keeps the batch's wall time within budget_ms per image: the clock (waiting for a GPU only where
a budget is timed), the stop once the next step and the reserves would pass the budget, and the reserves
themselves: the final colors' solve (CG_STEPS of a step per CG iteration), the evaluation (EVAL_RENDER_STEPS of a
step and SSIM's measured time) and a first step foreseen from a timed render (STEP_PER_RENDER renders).

The Fitter's state it reads and writes: cfg, device, images, h, w, params, batch_size, splats(), seconds,
step_seconds, cg_seconds, evaluated, active, all_active, stopped, _ssim_seconds, _target_stats and _polishes().
Tests drive it on a cost clock (tests/test_fit_presets.py) by patching this module's `time` and `render`.
"""
from __future__ import annotations

import time

import torch

from gaussianvision.raster import render
from gaussianvision.raster.cpu_threads import threads_for
from gaussianvision.splats.types import Splats
from gaussianvision.fit.colors import solve_cost
from gaussianvision.fit.metrics import fast_ssim_applies, ssim, target_blurs
from gaussianvision.fit.progressive import prefix_renders

__all__ = ["BudgetClock", "CG_STEPS", "EVAL_RENDER_STEPS", "STEP_PER_RENDER", "SSIM_TIMED_SIDE", "step_from_render"]

# A budget's reserves for the fit's last work, in units of its last step (whose time is measured). On numba the
# step is the fused loss without autograd (raster.squared_error_grads), while the final colors' conjugate-gradient
# iterations still take a render and its backward through autograd with two passes over the images, and the
# evaluation a render and PSNR's passes. Measured on the 2-core machine (224 px N=400 B=1 and 8, 128 px N=50 B=4,
# 96 px N=20): a CG iteration 0.83-1.16 steps, the evaluation 0.42-0.76; with 1 and 0.5, as before the fused
# step, `fast` under --budget-ms 40 at 128 px ended 41-42 ms per image (new-user trial: up to 45).
CG_STEPS = 1.2
EVAL_RENDER_STEPS = 0.8
# A step foreseen from a timed render (step_from_render: Fitter._foresee_step, coarse to fine's first full-size step)
# is at most STEP_PER_RENDER times the render (the render and a backward of at most twice its cost).
STEP_PER_RENDER = 3.0
SSIM_TIMED_SIDE = 1024  # _time_ssim times the final SSIM on at most this corner of an image, scaled by its pixels


def step_from_render(seconds: float) -> float:
    """The most a fit's step (its render and the backward) takes where one render of it took `seconds`."""
    return STEP_PER_RENDER * seconds


class BudgetClock:
    """The budget's part of a Fitter (a base class of it; see the module's docstring for the state it shares)."""

    def _clock(self, always: bool = False) -> float:
        """time.perf_counter() once the GPU has done the work queued so far (CUDA runs asynchronously),
        always or where a budget is timed; on CPU, or on a GPU fit without budget_ms, the plain clock."""
        if self.device.type == "cuda" and (always or self.cfg.budget_ms is not None):
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _foresee_from_solve(self, solved: float) -> None:
        """From the initial color solve's wall seconds over the whole batch: one of its CG iterations (cg_seconds)
        and, until a step is timed, a step foreseen from it (step_seconds). The final colors' CG iterations cost
        at least cg_seconds each (_polish_seconds): a pass is CG_STEPS steps where measured at 224 px, but at
        24 Mpixel, before raster.colors_adjoint, one cost 2-3 steps and `balanced` under 8000 ms ended 7% over."""
        self.cg_seconds = solved / solve_cost(self.cfg.color_solve)
        self.step_seconds = self.cg_seconds / CG_STEPS

    def _within_budget_share(self, share: float, running: float) -> bool:
        """Whether the batch has spent at most `share` of its budget (`seconds` plus the `running` seconds not
        yet added); True without a budget. Relocation keeps to the first relocate_until of the budget as of
        the iterations: with iterations raised past what the budget allows, it went on to the end, each
        relocation restarting the step decay's stall count (near-flat images lost 0.2-0.4 dB to plain Adam)."""
        return self.cfg.budget_ms is None or (self.seconds + running) * 1000 <= share * self.cfg.budget_ms * self.batch_size

    def _over_budget(self, running: float, ahead: float = 0.0) -> bool:
        """True (and every active image stopped, reason "budget") once the batch's wall time,
        `seconds` plus the `running` seconds not yet added, plus `ahead` (what the next iteration
        is expected to take, the last one's time, and the final colors' share) would pass
        cfg.budget_ms per image: the budget is a ceiling, not a point to overshoot by one iteration."""
        if self.cfg.budget_ms is None or (self.seconds + running + ahead) * 1000 <= self.cfg.budget_ms * self.batch_size:
            return False
        for i in self.active.nonzero()[:, 0].tolist():
            self.stopped[i] = "budget"
        self.active[:] = False
        self.all_active = False
        return True

    def _foresee_step(self) -> float:
        """What the first step will take where nothing timed foresees it (splats given to go on from, a
        nested fit, no initial color solve): one render of the batch, timed (its time counts in `seconds`),
        times STEP_PER_RENDER, times the renders of a step (a nested fit's prefixes), plus SSIM's measured
        share where the loss has it. Regression: the first step was taken as free, so a fit going on from
        given splats under a budget shorter than a step took one anyway (and kept no room for its reserves)."""
        spent = self.timed_render()
        self.seconds += spent
        n = self.params["means"].shape[1]
        # a nested fit's prefixes, each at its share of the Gaussians (a render's work is its Gaussian-pixel pairs)
        renders = sum(k / n for k in prefix_renders(n, self.cfg.prefix_fractions)) if self.cfg.prefix_fractions else 1.0
        extra = 0.0
        if self.cfg.ssim_weight > 0:  # also where no evaluation follows (a coarse phase): timed here if not yet
            self._time_ssim(force=True)
            extra = self._ssim_seconds
        return step_from_render(renders * spent + extra)

    def timed_render(self, splats: Splats | None = None) -> float:
        """Wall seconds of one render (no gradient) of `splats` (default: the fit's own), the device waited for."""
        t0 = self._clock(True)
        with torch.no_grad():
            render(self.splats() if splats is None else splats, backend=self.cfg.backend)
        return self._clock(True) - t0

    def _polish_seconds(self) -> float:
        """What finish()'s polish is expected to take: solve_cost iterations of the whole batch, each
        CG_STEPS of the fit's steps, or what one of the initial solve's took where that was more (cg_seconds)."""
        if not self._polishes():
            return 0.0
        return solve_cost(self.cfg.final_colors) * max(CG_STEPS * self.step_seconds, self.cg_seconds)

    def _eval_seconds(self) -> float:
        """What result()'s evaluation is expected to take, so that a budget keeps room for it:
        EVAL_RENDER_STEPS of the fit's steps for its render and PSNR, and SSIM's measured share (_time_ssim). Regression: on a CPU SSIM
        cost 4-8 iterations (before its fused kernel), and budgeted fits of large images ended up to
        30% over their budget."""
        if self.cfg.budget_ms is None or not self.evaluated:
            return 0.0
        self._time_ssim()
        return EVAL_RENDER_STEPS * self.step_seconds + self._ssim_seconds

    def _time_ssim(self, force: bool = False) -> None:
        """With a budget (and result() to come, or force: a step whose loss has SSIM foreseen), what result()'s SSIM will take (_ssim_seconds), measured
        once; the measurement's time counts in `seconds`, as the final SSIM's would. Where ssim() takes
        the fused kernel (metrics.fast_ssim_applies): one image's SSIM timed (on at most a SSIM_TIMED_SIDE
        corner, scaled by the pixels), times the batch over the
        threads the batch's SSIM will use. Else SSIM's two blurs of the targets, which result()'s SSIM then reuses
        (so the measurement costs nothing), twice over for the rest (three more blurs, the arithmetic)."""
        if self.cfg.budget_ms is None or not (self.evaluated or force) or self._ssim_seconds is not None:
            return
        fused = fast_ssim_applies(self.images, self.images)
        t0 = self._clock(True)
        if fused:
            # a large image's SSIM is timed on a corner of SSIM_TIMED_SIDE a side and scaled by its pixels
            # (the fused pass costs the same per pixel; a 24 Mpixel photo's timing took 0.56 s itself)
            crop = self.images[:1, :, :SSIM_TIMED_SIDE, :SSIM_TIMED_SIDE]
            ssim(crop, crop)
            spent = self._clock(True) - t0
            pixels = self.h * self.w  # the batch's planes spread over the threads one image's did not use
            per_image = spent * pixels / (crop.shape[-2] * crop.shape[-1])
            self._ssim_seconds = per_image * self.batch_size * threads_for(pixels) / threads_for(self.batch_size * pixels)
        else:
            self._target_stats = target_blurs(self.images)
            spent = self._clock(True) - t0
            self._ssim_seconds = 2.0 * spent
        self.seconds += spent
