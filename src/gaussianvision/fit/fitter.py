"""Batched fitting: many images at once, one optimizer over the whole batch.

    result = fit_images(images, n_gaussians=400, iters=500, init="content")
    result.splats        # Splats [B, N] with per-image counts
    result.metrics       # per-image dicts: psnr, ssim, n_gaussians, iterations, seconds
                         # (batch_seconds / B), batch_seconds, ...
    result.history       # [{"iteration": k, "psnr": [B]}] at config.record_at (whole-fit iterations;
                         # a coarse-to-fine fit records in its full-size phase only)

Parameters are optimized directly (means in pixels, Cholesky entries in pixels, colors)
with a per-image Adam (fit/adam.py): Adam makes the step size about the learning rate, so
the rates are "useful steps": ~0.8 px for means, ~0.4 for Cholesky entries, ~0.02 for
colors. After each step the Cholesky diagonal is kept >= `min_scale` px and the means
inside the image, so every iterate is a valid Splats.

Loss per image: MSE (optionally mixed with 1 - SSIM) plus the luminance L1 penalty
prune_lambda * mean_i |luma(c_i)|. The mean over the image's Gaussians (not the sum)
scales the penalty with N, so one lambda means the same pressure at any N; the paper's
lambda_reg on the sum corresponds to prune_lambda / N.

Early stop is per image: an image that reaches `target_psnr`, or has not improved by
`plateau_delta` dB for `plateau_patience` iterations, is frozen (no render, no update)
and its iteration count is recorded. `budget_ms` stops the whole batch once its wall time
reaches that many milliseconds per image (initialization included; metrics' "stopped" says
"budget"); it covers the whole fit, pruning's fine-tune and result()'s metrics included (room is
kept for those). Presets (fit/presets.py)
set several options at once. Pruning (fit/prune.py) happens after the main
iterations, edits parameters and Adam moments together, then `finetune_iters` more
iterations repair the damage. With `relocate_every` > 0 the least important Gaussians are moved
to where the error is largest during the first `relocate_until` of the iterations (and of the budget)
(fit/relocate.py).

fit_images and run_fit (fit/run.py) run the whole fit; coarse to fine is fit/coarse.py; the budget's clock and
reserves are fit/budget.py (BudgetClock, a base of Fitter); what a fit needs before its first step is fit/prepare.py.
For finer control (the pruning sweep of the benchmark) use `Fitter` directly:
run(iters), prune(...), clone(), evaluate(), finish() (the final colors, where configured), result().
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field

import torch

from gaussianvision.raster import render, resolve_backend, squared_error_grads
from gaussianvision.splats.params import luminance
from gaussianvision.splats.types import Splats
from gaussianvision.fit.adam import BatchAdam
from gaussianvision.fit.budget import BudgetClock
from gaussianvision.fit.colors import solve_colors
from gaussianvision.fit.config import SCHEDULES, FitConfig
from gaussianvision.fit.init import initialize
from gaussianvision.fit.prepare import check_images, compile_kernels, fit_device, torch_serial
from gaussianvision.fit.metrics import psnr, ssim
from gaussianvision.fit.progressive import nested_init, prefix_loss
from gaussianvision.fit.prune import PAD_FILL, compact, importance, select_prune
from gaussianvision.fit.relocate import relocation_plan

__all__ = ["FitConfig", "FitResult", "Fitter", "SCHEDULES"]

_NAMES = ("means", "chol", "colors")


@dataclass
class FitResult:
    splats: Splats
    metrics: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)


WARM_START = 10  # iterations over which the rates ramp up in a fit that goes on from given splats


def _lr_scale(schedule: str, t: int, total: int, final: float) -> float:
    if schedule == "constant" or total <= 1:
        return 1.0
    x = t / (total - 1)
    if schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * x))
    return final ** x  # exp


class Fitter(BudgetClock):
    """The state of a batched fit: parameters, Adam moments, per-image progress."""

    def __init__(self, images: torch.Tensor, n_gaussians: int | None, config: FitConfig | None = None,
                 init: str | Splats | None = None):
        self.cfg = (config or FitConfig()).check()
        images = check_images(images)
        self.device = fit_device(self.cfg, images)
        with torch_serial(self.cfg, self.device):
            self._start(images, n_gaussians, init)

    def _start(self, images: torch.Tensor, n_gaussians: int | None, init: str | Splats | None) -> None:
        compile_kernels(self.device, images.shape[-2], images.shape[-1], self.cfg.backend)
        t0 = time.perf_counter()
        self.images = images.detach().to(self.device)  # targets, never differentiated (a caller's may require grad)
        b, _, self.h, self.w = self.images.shape
        init = self.cfg.init if init is None else init
        solved = None  # the initial color solve's seconds, where one ran
        if isinstance(init, Splats):
            s = init.to(self.device)
            if (s.height, s.width, s.batch_size) != (self.h, self.w, b):
                raise ValueError(f"fit_images: init splats are {s.batch_size} x {s.height}x{s.width}, "
                                 f"images are {b} x {self.h}x{self.w}")
            s.validate("init splats")
        else:
            if isinstance(n_gaussians, bool) or not isinstance(n_gaussians, numbers.Integral) or n_gaussians < 1:
                raise ValueError(f"fit_images: n_gaussians must be a whole number >= 1, got {n_gaussians!r}")
            gen = torch.Generator().manual_seed(self.cfg.seed)
            if self.cfg.prefix_fractions:  # a nested fit starts nested (fit/progressive.py)
                s = nested_init(init, self.images, int(n_gaussians), self.cfg.prefix_fractions, gen,
                                self.cfg.color_solve, self.cfg.backend)
            else:
                s = initialize(init, self.images, int(n_gaussians), generator=gen, backend=self.cfg.backend)
            if self.cfg.color_solve and not self.cfg.prefix_fractions:  # the best colors for the initial geometry (never worse than the init's)
                solve_t0 = self._clock()
                s = Splats(s.means, s.chol, solve_colors(s, self.images, self.cfg.color_solve, backend=self.cfg.backend),
                           s.height, s.width, s.counts)
                solved = self._clock() - solve_t0
        self.params = {k: getattr(s, k).detach().float().clone().contiguous() for k in _NAMES}
        self.counts = s.num_gaussians().to(self.device).clone()
        numba = self.device.type == "cpu" and resolve_backend(self.cfg.backend, self.device) == "numba"
        self.opt = BatchAdam(self.params, self.rates(), betas=(self.cfg.beta1, self.cfg.beta2), fused=numba)
        self.active = torch.ones(b, dtype=torch.bool, device=self.device)
        self.all_active = True  # no image stopped yet: active_count() needs no GPU read
        self.iterations = torch.zeros(b, dtype=torch.long, device=self.device)
        self.stopped = [None] * b  # why each image stopped early: "target" | "plateau"
        self.pruned = torch.zeros(b, dtype=torch.long, device=self.device)
        self._reset_progress()
        self.history: list[dict] = []
        self._generator: torch.Generator | None = None  # relocation's draws (seeded on first use)
        self.steps_done = 0
        # splats given to go on from: a fresh Adam's first step moves every parameter by its full rate
        # (bias-corrected m / sqrt(v) = sign(g)), which undid a fitted state (24.3 -> 17.9 dB after one
        # iteration); the rates ramp up over the first WARM_START iterations instead
        self.warm_start = WARM_START if isinstance(init, Splats) else 0
        self.step_seconds = 0.0  # the last iteration's wall time over the whole batch (its step only; for budgets)
        self.cg_seconds = 0.0  # one CG iteration of the initial color solve over the whole batch, where one ran
        if solved is not None:
            self._foresee_from_solve(solved)
        self.finished = False  # finish() has run
        self.evaluated = True  # result() will be called: a budget keeps room for its evaluation
        self._target_stats, self._ssim_seconds = None, None  # SSIM's blurs of the targets, its time (_time_ssim)
        self.seconds = self._clock(True) - t0

    # ------------------------------------------------------------------ state
    def rates(self) -> dict[str, float]:
        """Adam's step sizes {means, chol, colors}: cfg's lr_*, or with cfg.lr_spacing set, those times
        this fit's Gaussian spacing sqrt(H W / N) over lr_spacing, within [1/4, 4] (finer splats take
        finer steps; measured from 0.36 to 2, beyond 4 untried). N is the batch's (padded) Gaussian
        count; the rates are set when the Fitter is made (a prune keeps them)."""
        cfg = self.cfg
        f = 1.0
        if cfg.lr_spacing is not None:
            f = math.sqrt(self.h * self.w / max(1, self.params["means"].shape[1])) / cfg.lr_spacing
            f = min(max(f, 0.25), 4.0)
        return {"means": cfg.lr_means * f, "chol": cfg.lr_chol * f, "colors": cfg.lr_colors * f}

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def splats(self) -> Splats:
        """The current Splats [B, N] (detached, counts set)."""
        return Splats(*(self.params[k].detach() for k in _NAMES), self.h, self.w, self.counts.clone())

    def clone(self) -> "Fitter":
        new = object.__new__(Fitter)
        new.__dict__.update(self.__dict__)
        new.params = {k: v.clone() for k, v in self.params.items()}
        new.opt = self.opt.clone(new.params)
        for k in ("counts", "active", "iterations", "pruned", "best", "best_it", "lr_image", "decay_best", "decay_it"):
            setattr(new, k, getattr(self, k).clone())
        new.stopped = list(self.stopped)
        if self._generator is not None:
            new._generator = torch.Generator(self._generator.device).set_state(self._generator.get_state())
        new.history = list(self.history)
        return new

    def _reset_progress(self) -> None:
        """Forget each image's progress record: the plateau stop's best PSNR and the step decay's (rates
        back to full); after a prune, which changes what the images can reach."""
        self.best = torch.full((self.batch_size,), -math.inf, device=self.device)
        self.best_it = self.iterations.clone()
        self.lr_image = torch.ones(self.batch_size, device=self.device)  # decay_patience's per-image factor
        self.decay_best = self.best.clone()
        self.decay_it = self.iterations.clone()

    def _decay(self, idx: torch.Tensor, p: torch.Tensor, full: bool = False) -> torch.Tensor | float:
        """The step-size factor [A] of images idx: cfg.decay_factor more each time an image's PSNR p
        has not gained cfg.decay_delta for cfg.decay_patience updates (1.0 without decay_patience).
        full (idx is every image): views instead of gathers and scatters."""
        cfg = self.cfg
        if cfg.decay_patience is None:
            return 1.0
        sel = slice(None) if full else idx
        best, it, lr = self.decay_best[sel], self.iterations[sel], self.lr_image[sel]
        better = p > best + cfg.decay_delta
        since = torch.where(better, it, self.decay_it[sel])
        stall = it - since >= cfg.decay_patience
        self.decay_best[sel] = torch.where(better, p, best)
        self.decay_it[sel] = torch.where(stall, it, since)
        self.lr_image[sel] = torch.where(stall, lr * cfg.decay_factor, lr)
        return self.lr_image[sel]

    # ------------------------------------------------------------------- loop
    def active_count(self) -> int:
        """How many images are still fitting. While none has stopped, the batch size, without reading `active`:
        on a GPU that read waited for the device once per iteration."""
        return self.batch_size if self.all_active else int(self.active.sum())

    def _mask(self, counts: torch.Tensor, n: int) -> torch.Tensor:
        return torch.arange(n, device=self.device)[None, :] < counts[:, None]

    def step(self, lr_scale: float = 1.0, n_active: int | None = None) -> torch.Tensor:
        """One Adam step on the active images (n_active: their number, when the caller knows it).
        Returns their training PSNR [A] (before the step)."""
        cfg = self.cfg
        full = (self.active_count() if n_active is None else n_active) == self.batch_size
        # all active (the usual case): no nonzero(), which waits for the GPU
        idx = torch.arange(self.batch_size, device=self.device) if full else self.active.nonzero()[:, 0]
        leaves = {k: (p.detach() if full else p[idx]).requires_grad_(True) for k, p in self.params.items()}
        counts = self.counts if full else self.counts[idx]
        target = self.images if full else self.images[idx]
        s = Splats(leaves["means"], leaves["chol"], leaves["colors"], self.h, self.w, counts)
        valid = self._mask(counts, leaves["colors"].shape[1]) if cfg.prune_lambda > 0 else None  # the L1's
        if cfg.prefix_fractions:
            err = self._prefix_backward(s, target, leaves, counts, valid)
        else:
            err = self._backward(s, target, leaves, counts, valid)
        grads = {k: leaves[k].grad for k in _NAMES}  # cleaned by the step (NaN, padding)
        p = -10.0 * torch.log10(err.detach().clamp_min(1e-12))
        decay = self._decay(idx, p, full)
        stop = self._update_stops(idx, p)  # images that stop keep the parameters p was measured on
        if stop is not None:
            keep = ~stop
            idx, full = idx[keep], False
            grads = {k: g[keep] for k, g in grads.items()}
            counts = counts[keep]
            decay = decay[keep] if torch.is_tensor(decay) else decay
        if self.warm_start and not self.opt.carried:  # moments carried over (coarse to fine): not a cold start
            steps = self.opt.steps if full else self.opt.steps[idx]
            decay = decay * ((steps + 1).clamp(max=self.warm_start).to(p.dtype) / self.warm_start)
        self.opt.step(grads, None if full else idx, lr_scale * decay, counts, self._bounds())
        if full:
            self.iterations += 1
        else:
            self.iterations[idx] += 1
        return p

    def _bounds(self) -> dict[str, tuple]:
        """The box the steps keep to (BatchAdam's bounds): scales at least min_scale, means inside the
        image. Only the images stepped are held to it: a stopped image keeps the parameters its PSNR was
        measured on, even where they lie outside (caller's init splats; regression: the clamps moved
        them after a target stop)."""
        lo, inf = self.cfg.min_scale, math.inf
        return {"chol": ((lo, -inf, lo), (inf, inf, inf)), "means": ((0.0, 0.0), (float(self.w), float(self.h)))}

    def _backward(self, s, target, leaves, counts, valid) -> torch.Tensor:
        """Gradients of the loss summed over images (each image's gradient independent of B) times
        the pixel count (which keeps gradients well above Adam's eps near convergence) into the
        leaves; returns each image's MSE [A]. The MSE (the default loss) is raster.squared_error, on
        numba one fused pass that leaves the residual as the render's gradient (no passes over the
        image of its own for the subtraction, the squares and 2 (pred - target)), its gradients taken
        by squared_error_grads (on numba without autograd's engine: a 112 px step on one image spent
        as long in the engine as in the backward kernel): the same numbers as autograd through the
        loss (tests/test_fit.py, tests/test_raster_numba.py)."""
        cfg = self.cfg
        scale = float(self.h * self.w)
        loss = None
        if cfg.ssim_weight > 0:
            pred = render(s, backend=cfg.backend)
            err = ((pred - target) ** 2).flatten(1).mean(1)
            loss = (1 - cfg.ssim_weight) * err + cfg.ssim_weight * (1 - ssim(pred, target, clamp=False))
            loss = loss.sum() * scale
        else:  # MSE: the gradients without autograd's engine where the backend can
            third = torch.full((target.shape[0],), 1.0, dtype=target.dtype, device=target.device) / 3.0
            sse, grads = squared_error_grads(s, target, third, backend=cfg.backend)  # the mean over 3 H W, times H W
            for k, g in zip(_NAMES, grads):
                leaves[k].grad = g
            err = sse / (3.0 * scale)
        if cfg.prune_lambda > 0:  # the L1 penalty's gradient through autograd, added to the leaves' .grad
            l1 = (luminance(leaves["colors"]).abs() * valid).sum(1) / counts.clamp_min(1)
            penalty = (cfg.prune_lambda * l1).sum() * scale
            loss = penalty if loss is None else loss + penalty
        if loss is not None:
            loss.backward()
        return err.detach()

    def _prefix_backward(self, s, target, leaves, counts, valid) -> torch.Tensor:
        """A nested fit's gradients (fit/progressive.py's prefix_loss, the L1 penalty as in
        _backward) times the pixel count into the leaves; returns each image's full MSE [A]."""
        cfg = self.cfg
        loss, err = prefix_loss(s, target, cfg.prefix_fractions, cfg.prefix_weights, cfg.backend)
        if cfg.prune_lambda > 0:
            loss = loss + cfg.prune_lambda * (luminance(leaves["colors"]).abs() * valid).sum(1) / counts.clamp_min(1)
        (loss.sum() * float(self.h * self.w)).backward()
        return err.detach()

    def _update_stops(self, idx: torch.Tensor, p: torch.Tensor) -> torch.Tensor | None:
        """Stop the images idx whose PSNR p (of their parameters before this step, after `iterations`
        updates) reached cfg.target_psnr or has not improved for cfg.plateau_patience updates. Returns
        the [A] mask of those stopping (the caller leaves their parameters as measured: an image stopped
        at the target ends at or above it), None if none."""
        cfg = self.cfg
        if cfg.target_psnr is None and cfg.plateau_patience is None:
            return None  # nothing stops an image here (stop.any() below would wait for the GPU every step)
        stop = torch.zeros_like(p, dtype=torch.bool)
        if cfg.target_psnr is not None:
            hit = p >= cfg.target_psnr
            for i in idx[hit].tolist():
                self.stopped[i] = "target"
            stop |= hit
        if cfg.plateau_patience is not None:
            better = p > self.best[idx] + cfg.plateau_delta
            self.best[idx] = torch.where(better, p, self.best[idx])
            self.best_it[idx] = torch.where(better, self.iterations[idx], self.best_it[idx])
            stall = (self.iterations[idx] - self.best_it[idx] >= cfg.plateau_patience) & ~stop
            for i in idx[stall].tolist():
                self.stopped[i] = "plateau"
            stop |= stall
        if not stop.any():
            return None
        self.active[idx[stop]] = False
        self.all_active = False
        return stop

    @torch.no_grad()
    def evaluate(self, with_ssim: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(PSNR [B], SSIM [B] or None) of the current splats, prediction clamped to [0, 1]."""
        pred = render(self.splats(), backend=self.cfg.backend)
        return psnr(pred, self.images), (ssim(pred, self.images, target_stats=self._target_stats) if with_ssim else None)

    def _record(self) -> None:
        p, _ = self.evaluate(with_ssim=False)
        self.history.append({"iteration": self.steps_done, "psnr": p.cpu().tolist(),
                             "seconds": self.seconds})

    def run(self, iters: int, progress: bool = False, desc: str | None = None, relocate: bool = True) -> "Fitter":
        """`iters` more iterations (fewer for images that stop early). With relocate (and
        cfg.relocate_every > 0), Gaussians are relocated every relocate_every iterations of this
        call while within its first relocate_until share, never after its last iteration. With the
        numba kernels torch's own operations run on one thread meanwhile, the kernels on all
        (serial_torch); the reference renderer, torch operations itself, keeps torch's threads."""
        with torch_serial(self.cfg, self.device):
            return self._run(iters, progress, desc, relocate)

    def _run(self, iters: int, progress: bool, desc: str | None, relocate: bool) -> "Fitter":
        self._time_ssim()
        if self.cfg.budget_ms is not None and self.step_seconds == 0.0 and iters > 0 \
                and self._within_budget_share(1.0, 0.0) and self.active_count() > 0:
            self.step_seconds = self._foresee_step()
        t0 = time.perf_counter()
        cfg = self.cfg
        record = set(cfg.record_at)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=iters, desc=desc or f"fit {self.batch_size} img, N={self.params['means'].shape[1]}",
                       unit="it", leave=False)
        last = self.step_seconds  # what the next iteration is expected to take (relocation included)
        for t in range(iters):
            if self.steps_done in record:
                self.seconds += self._clock(True) - t0
                t0 = time.perf_counter()
                self._record()
            reserve = self._polish_seconds() + self._eval_seconds()
            started = self._clock()
            active = self.active_count()
            if self._over_budget(started - t0, last + reserve) or not active:
                break
            p = self.step(_lr_scale(cfg.schedule, t, iters, cfg.lr_final), active)
            self.step_seconds = (self._clock() - started) * self.batch_size / active  # the polish solves all
            self.steps_done += 1
            if (relocate and cfg.relocate_every and (t + 1) % cfg.relocate_every == 0 and t + 1 < iters
                    and t + 1 <= int(cfg.relocate_until * iters + 1e-9)
                    and self._within_budget_share(cfg.relocate_until, self._clock() - t0)):
                self.relocate(cfg.relocate_fraction)
            last = self._clock() - started
            if bar is not None:
                bar.update(1)
                if t % 10 == 0:
                    bar.set_postfix(psnr=f"{float(p.mean()):.2f}", active=self.active_count())
        if bar is not None:
            bar.close()
        self.seconds += self._clock(True) - t0
        if self.steps_done in record and not any(h["iteration"] == self.steps_done for h in self.history):
            self._record()
        return self

    # ---------------------------------------------------------- final colors
    def _polishes(self) -> bool:
        """Whether the fit ends with polish_colors: cfg.final_colors > 0 where the loss is the plain
        squared error the solve minimizes (not in a nested fit, whose prefixes would lose to the whole
        set, nor with ssim_weight or prune_lambda)."""
        c = self.cfg
        return c.final_colors > 0 and not c.prefix_fractions and c.ssim_weight == 0 and c.prune_lambda == 0

    def finish(self) -> "Fitter":
        """The fit's last step, once (fit_images calls it before result(); call it too when driving a
        Fitter by hand): polish_colors(cfg.final_colors) where _polishes() and the budget has room
        for it; with record_at set, the history records the polished splats too (at the same
        iteration count, later seconds)."""
        with torch_serial(self.cfg, self.device):
            return self._finish()

    def _finish(self) -> "Fitter":
        budget = self.cfg.budget_ms
        room = budget is None or (self.seconds + self._polish_seconds() + self._eval_seconds()) * 1000 <= \
            budget * self.batch_size
        if self._polishes() and room and not self.finished:
            self.polish_colors(self.cfg.final_colors)
            if self.cfg.record_at:
                self._record()
        self.finished = True
        return self

    @torch.no_grad()
    def polish_colors(self, iters: int) -> "Fitter":
        """The least-squares colors for the current geometry, by `iters` CG iterations from the
        current colors (fit/colors.py: the squared error never rises). Adam's steps leave the colors
        near, not at, their optimum; this costs about colors.solve_cost(iters) iterations. Its time counts."""
        t0 = time.perf_counter()
        if iters > 0:
            self.params["colors"].copy_(solve_colors(self.splats(), self.images, iters, backend=self.cfg.backend))
        self.seconds += self._clock(True) - t0
        return self

    # ------------------------------------------------------------- relocation
    @torch.no_grad()
    def relocate(self, fraction: float) -> torch.Tensor:
        """Move the `fraction` least important Gaussians of each active image to where its error
        is largest (fit/relocate.py); their Adam moments restart. Returns [B] moved.
        (Its time counts in `seconds` when run() calls it.)"""
        if self._generator is None:
            gen_device = self.device if self.device.type == "cuda" else "cpu"  # draws stay on the GPU
            self._generator = torch.Generator(gen_device).manual_seed(self.cfg.seed + 1)
        idx = self.active.nonzero()[:, 0]
        moved = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        if len(idx):
            s = self.splats()
            sub = Splats(s.means[idx], s.chol[idx], s.colors[idx], self.h, self.w, s.counts[idx])
            index, valid, means, chol, colors = relocation_plan(sub, render(sub, backend=self.cfg.backend),
                                                                self.images[idx], fraction, self._generator)
            rows = idx[:, None].expand_as(index)[valid]
            cols = index[valid]
            for name, new in (("means", means), ("chol", chol), ("colors", colors)):
                self.params[name][rows, cols] = new[valid].to(self.params[name].dtype)
                self.opt.exp_avg[name][rows, cols] = 0
                self.opt.exp_avg_sq[name][rows, cols] = 0
            moved[idx] = valid.sum(1)
            self.decay_best[idx] = -math.inf  # the PSNR drops and climbs again: not a stall
            self.decay_it[idx] = self.iterations[idx]
        return moved

    # ---------------------------------------------------------------- pruning
    def prune(self, measure: str | None = None, tau: float | None = None,
              fraction: float | None = None) -> torch.Tensor:
        """Remove low-importance Gaussians from parameters and Adam state. Returns [B] removed."""
        t0 = time.perf_counter()
        s = self.splats()
        valid = s.mask()
        drop = select_prune(importance(s, measure or self.cfg.prune_measure), valid, tau, fraction)
        tensors = dict(self.params)
        fill = dict(PAD_FILL)
        for k in _NAMES:
            tensors[f"exp_avg.{k}"] = self.opt.exp_avg[k]
            tensors[f"exp_avg_sq.{k}"] = self.opt.exp_avg_sq[k]
        out, counts = compact(tensors, valid & ~drop, fill)
        self.params = {k: out[k].contiguous() for k in _NAMES}
        self.opt.replace(self.params, {k: out[f"exp_avg.{k}"] for k in _NAMES},
                         {k: out[f"exp_avg_sq.{k}"] for k in _NAMES})
        self.counts = counts
        removed = drop.sum(1)
        self.pruned += removed
        # pruned images changed: let them fit again, but for a spent budget (regression: a prune after a
        # budget stop erased its record, results said stopped: None)
        spent = [why == "budget" for why in self.stopped]
        self.active = torch.tensor([not x for x in spent], dtype=torch.bool, device=self.device)
        self.all_active = not any(spent)
        self.stopped = ["budget" if x else None for x in spent]
        self._reset_progress()
        self.seconds += self._clock(True) - t0
        return removed

    # ----------------------------------------------------------------- result
    def result(self) -> FitResult:
        t0 = time.perf_counter()
        with torch_serial(self.cfg, self.device):
            p, q = self.evaluate()
        self.seconds += self._clock(True) - t0
        per_image = self.seconds / self.batch_size
        # one host read per field (.tolist()), not one per image and field: on a GPU each read waits
        cols = zip(p.tolist(), q.tolist(), self.counts.tolist(), self.iterations.tolist(), self.pruned.tolist(),
                   self.stopped)
        metrics = [{"psnr": float(pb), "ssim": float(qb), "n_gaussians": int(nb), "iterations": int(ib),
                    "seconds": per_image, "batch_seconds": self.seconds, "pruned": int(rb), "stopped": sb}
                   for pb, qb, nb, ib, rb, sb in cols]
        return FitResult(self.splats(), metrics, list(self.history), asdict(self.cfg))
