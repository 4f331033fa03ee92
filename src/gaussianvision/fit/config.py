"""FitConfig: every option of a batched fit, checked (fit/fitter.py runs it; CLI options map onto it).

    cfg = FitConfig.from_options({"iters": 300, "relocate_every": 10})   # checked, one ValueError naming the option
    cfg = FitConfig.from_options({"preset": "fast", "budget_ms": 200})   # a preset (fit/presets.py), options over it
"""
from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass

from gaussianvision.fit.init import INITIALIZERS
from gaussianvision.fit.prune import MEASURES

__all__ = ["FitConfig", "SCHEDULES", "too_many_gaussians"]

SCHEDULES = ("constant", "cosine", "exp")


def too_many_gaussians(n: int, height: int, width: int, asked: str, images: str = "images'", where: str = "") -> str | None:
    """The one line that says a fit of n Gaussians on height x width images asks for more than one Gaussian
    per pixel (the fit's limit), None where it does not. `asked` names what set n ("--gaussians 500",
    "n_gaussians 500"), `images` the images ("image's" for one), `where` is added after their pixels (the flag
    that set their size). fit_images, SplatSettings and the CLI all word it here. Regression: 100,000,000
    Gaussians on an 11x11 image grew past the machine's memory and were killed without a word."""
    if n <= height * width:
        return None
    return (f"{asked} is more than the {height}x{width} {images} {height * width} pixels{where}; "
            "give at most one per pixel")


@dataclass
class FitConfig:
    iters: int = 500
    init: str = "content"          # grid | content | random
    lr_means: float = 0.8          # Adam step sizes (pixels, pixels, color units)
    lr_chol: float = 0.4
    lr_colors: float = 0.02
    lr_spacing: float | None = None  # None: the rates are as given; else they are for this Gaussian spacing
    #                                  (px, sqrt(H W / N)) and scale with the fit's own spacing (Fitter.rates)
    beta1: float = 0.9             # Adam's moment decay rates
    beta2: float = 0.999
    schedule: str = "constant"     # constant | cosine | exp (decay to lr_final x the rate)
    lr_final: float = 0.1
    ssim_weight: float = 0.0       # loss = (1 - w) MSE + w (1 - SSIM)
    min_scale: float = 0.3         # pixels, lower bound of l11 and l22
    target_psnr: float | None = None
    plateau_patience: int | None = None
    plateau_delta: float = 0.01    # dB
    decay_patience: int | None = None  # an image's step sizes x decay_factor each time its PSNR has not gained
    decay_factor: float = 0.5          # decay_delta dB for decay_patience iterations (None: off)
    decay_delta: float = 0.01          # dB
    prune_lambda: float = 0.0      # L1 on luminance, times the mean over Gaussians
    prune_measure: str = "energy"  # energy | max_color | luma (see fit/prune.py)
    prune_tau: float | None = None
    prune_fraction: float | None = None
    finetune_iters: int = 0        # iterations after pruning
    relocate_every: int = 0        # move the least important Gaussians to the error every k iterations (0: off)
    relocate_fraction: float = 0.1  # share of each image's Gaussians moved each time (fit/relocate.py)
    relocate_until: float = 0.6    # relocate only in this first share of the iterations (the rest settles)
    color_solve: int = 0           # CG iterations of least-squares colors after initialization (fit/colors.py; 0: off)
    final_colors: int = 0          # CG iterations of least-squares colors for the final geometry (0: off; not in a nested fit)
    coarse_fraction: float = 0.0   # share of `iters` run first at coarse_scale resolution (coarse to fine; 0: off)
    coarse_scale: float = 0.5      # the coarse phase's image scale (area-downsampled; splats scaled back up)
    coarse_min_pixels: float = 0.0  # coarse to fine only where the coarse image has >= this many pixels per Gaussian
    budget_ms: float | None = None  # wall ms per image (the batch's time / B, initialization included): then every image stops
    backend: str = "auto"
    device: str | None = None      # None: the images' device
    seed: int = 0
    record_at: tuple = ()          # iterations of the whole fit at which to record every image's PSNR (not in a coarse phase)
    prefix_fractions: tuple = ()   # nested (progressive) fit: loss over these prefixes k = f N (fit/progressive.py; (): off)
    prefix_weights: tuple | None = None  # one weight per prefix fraction (None: equal)

    def _check_types(self) -> None:
        """Every numeric option a number (not a string from a command line; an int option an
        int, not 2.0 or True), init a known name."""
        for name, f in self.__dataclass_fields__.items():
            v = getattr(self, name)
            want = str(f.type).replace("'", "")
            if not want.startswith(("int", "float")) or (v is None and "None" in want):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"fit option {name}={v!r}: expected a number")
            if want.startswith("int") and not isinstance(v, int):
                raise ValueError(f"fit option {name}={v!r}: expected a whole number (an int)")
        if not isinstance(self.init, str) or self.init not in INITIALIZERS:
            raise ValueError(f"fit option init={self.init!r}: unknown initializer; choose one of {sorted(INITIALIZERS)}")

    def check(self) -> "FitConfig":
        self._check_types()
        if self.iters < 0 or self.finetune_iters < 0:
            raise ValueError(f"iters and finetune_iters must be >= 0, got {self.iters}, {self.finetune_iters}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {list(SCHEDULES)}")
        if self.prune_measure not in MEASURES:
            raise ValueError(f"unknown prune measure {self.prune_measure!r}; choose one of {list(MEASURES)}")
        if not 0.0 <= self.ssim_weight <= 1.0:
            raise ValueError(f"ssim_weight must lie in [0, 1], got {self.ssim_weight}")
        if self.prune_fraction is not None and not 0.0 <= self.prune_fraction <= 1.0:
            raise ValueError(f"prune_fraction must lie in [0, 1], got {self.prune_fraction}")
        if self.relocate_every < 0 or not 0.0 < self.relocate_fraction < 1.0 or not 0.0 <= self.relocate_until <= 1.0:
            raise ValueError(f"relocate_every must be >= 0, relocate_fraction in (0, 1) and relocate_until in "
                             f"[0, 1], got {self.relocate_every}, {self.relocate_fraction}, {self.relocate_until}")
        if not (0.0 <= self.coarse_fraction < 1.0 and 0.0 < self.coarse_scale < 1.0):
            raise ValueError(f"coarse_fraction must lie in [0, 1) and coarse_scale in (0, 1), got "
                             f"{self.coarse_fraction}, {self.coarse_scale}")
        self._check_ranges()
        for name in ("color_solve", "final_colors"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (conjugate-gradient iterations), got {getattr(self, name)}")
        self._check_prefixes()
        self._check_record_at()
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1) (Adam's moment decay), got {getattr(self, name)}")
        if self.lr_spacing is not None and not (self.lr_spacing > 0 and math.isfinite(self.lr_spacing)):
            raise ValueError(f"lr_spacing must be a positive number of pixels or None, got {self.lr_spacing}")
        if not 0 <= self.seed < 2 ** 63:  # regression: 10**20 was taken, then every fit failed in manual_seed
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed}")
        if not (self.min_scale > 0 and math.isfinite(self.min_scale)):
            raise ValueError(f"min_scale must be positive, got {self.min_scale}")
        return self

    def _check_ranges(self) -> None:
        """The stop criteria, rates and pruning options: finite and where they mean something (a NaN,
        a negative penalty or a patience of 0 was taken silently and did nothing or nonsense)."""
        if self.budget_ms is not None and not (self.budget_ms > 0 and math.isfinite(self.budget_ms)):
            raise ValueError(f"budget_ms must be a finite number above 0 (wall milliseconds per image; leave it out for "
                             f"no budget), got {self.budget_ms}")
        if self.target_psnr is not None and not (self.target_psnr > 0 and math.isfinite(self.target_psnr)):
            raise ValueError(f"target_psnr must be a number of dB above 0 or None, got {self.target_psnr}")
        for name in ("plateau_patience", "decay_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 iteration or None, got {getattr(self, name)}")
        if not 0.0 < self.decay_factor <= 1.0:
            raise ValueError(f"decay_factor must lie in (0, 1] (the step sizes' factor at a stall), got {self.decay_factor}")
        for name in ("lr_means", "lr_chol", "lr_colors", "lr_final", "plateau_delta", "decay_delta", "prune_lambda",
                     "prune_tau", "relocate_fraction", "relocate_until", "coarse_min_pixels", "ssim_weight"):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")

    def _check_record_at(self) -> None:
        """record_at: whole iterations >= 0 (regression, new-user trial: record_at=5 failed every image's fit
        with "'int' object is not iterable", and "abc" or [-5, "x"] were taken and recorded nothing)."""
        r = self.record_at
        try:
            ks = None if isinstance(r, (str, bytes)) else list(r)
        except TypeError:
            ks = None
        if ks is None or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 0 for k in ks):
            raise ValueError(f"record_at must be a list of iterations (whole numbers >= 0), e.g. [0,50,100], got {r!r}")
        self.record_at = tuple(int(k) for k in ks)  # a range, numpy integers, an array (review: refused)

    def _check_prefixes(self) -> None:
        if not isinstance(self.prefix_fractions, (list, tuple)):  # regression: 0.25 gave "'float' object is not iterable"
            raise ValueError(f"prefix_fractions must be a list of fractions in (0, 1], e.g. 0.25,0.5,1.0, got "
                             f"{self.prefix_fractions!r}")
        if self.prefix_weights is not None and not isinstance(self.prefix_weights, (list, tuple)):
            raise ValueError(f"prefix_weights must be a list of weights, one per prefix fraction, got "
                             f"{self.prefix_weights!r}")
        fr, w = tuple(self.prefix_fractions), self.prefix_weights
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 < f <= 1.0 for f in fr):
            raise ValueError(f"prefix_fractions must lie in (0, 1], got {self.prefix_fractions}")
        if w is not None and (len(w) != len(fr) or not all(isinstance(x, (int, float)) and x >= 0 for x in w)
                              or not sum(w) > 0):
            raise ValueError(f"prefix_weights must be one non-negative weight per prefix fraction (not all zero), "
                             f"got {w} for {fr}")
        if fr and self.ssim_weight > 0:
            raise ValueError("a nested fit (prefix_fractions; a progressive encoding in nested order fits one) does not "
                             "combine with ssim_weight > 0: its prefixes are fitted by squared error")

    @classmethod
    def from_options(cls, options: dict, exclude: tuple = ()) -> "FitConfig":
        """A checked FitConfig from fit_images keyword options; unknown names (or names in
        `exclude`: a caller's own settings) and bad values raise one ValueError naming them.
        preset=None is no preset."""
        from gaussianvision.fit.presets import spelled_out
        if "preset" in options and options["preset"] is None:  # {"preset": args.preset} without one: no preset
            options = {k: v for k, v in options.items() if k != "preset"}
        fields = (set(cls.__dataclass_fields__) | {"preset"}) - set(exclude)
        own = sorted(k for k in options if k in exclude)
        if own:
            raise ValueError(f"fit options {own}: set by their own settings here, not as fit options")
        bad = sorted(k for k in options if k not in fields)
        if bad:
            near = {k: difflib.get_close_matches(k, fields, 1, 0.75) for k in bad}
            meant = "; ".join(f"{k}: did you mean {m[0]}?" for k, m in near.items() if m)
            raise ValueError(f"fit options {bad}: not fit_images options" + (f" ({meant})" if meant else "") +
                             f"; the options: {', '.join(sorted(fields))}")
        if "preset" in options:  # the preset's settings, the other options over them
            options = {k: v for k, v in spelled_out(options, exclude).items() if k != "preset"}
        try:
            return cls(**options).check()
        except TypeError as e:  # e.g. a value of the wrong type
            raise ValueError(f"fit options {options}: {e}") from None

    @property
    def prunes(self) -> bool:
        return self.prune_tau is not None or self.prune_fraction is not None
