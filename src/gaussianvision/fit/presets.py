"""Speed presets: one knob over the fit's settings, from quick previews to the best splats.

    FitConfig.from_options({"preset": "fast"})                 # the preset's settings
    FitConfig.from_options({"preset": "fast", "iters": 100})   # options given beside it win
    fit_images(images, 400, config=FitConfig.from_options({"preset": "balanced", "budget_ms": 300}))

The presets were chosen on a deterministic cost model (tests/test_fit_presets.py: every render
costs its Gaussian-pixel work, a backward as much again) over 64-224 px photos and N=48-400,
where each of their parts never lost to plain Adam at the same budget, and then measured in wall
time by the time-to-quality benchmark (`gsv bench fit --sections ttq`, fit_ttq.md) on the bundled
photos and on held-out Kodak photos:

  fast      150 iterations; colors solved at the start (4 conjugate-gradient steps: 8 cost more
            than they gain on short budgets); coarse to fine (60% of the iterations at half
            resolution) wherever the half-size image keeps >= 16 pixels per Gaussian (at 224 px:
            N <= 784; with fewer pixels per Gaussian it lost up to 2 dB, so it is skipped there);
            the weakest 10% of the Gaussians relocated to the error every 20 iterations
  balanced  500 iterations (the plain default's); colors solved; relocation every 20
  best      2000 iterations; colors solved; relocation every 20

Every preset combines with `budget_ms` (a wall-time cap per image, initialization included)
and `target_psnr` (each image stops once it reaches it). Without a preset the settings are the
plain defaults of FitConfig (500 iterations of Adam from the content initializer).
"""
from __future__ import annotations

__all__ = ["PRESETS", "preset_options"]

PRESETS: dict[str, dict] = {
    "fast": {"iters": 150, "color_solve": 4, "coarse_fraction": 0.6, "coarse_min_pixels": 16.0, "relocate_every": 20},
    "balanced": {"iters": 500, "color_solve": 4, "relocate_every": 20},
    "best": {"iters": 2000, "color_solve": 4, "relocate_every": 20},
}


def preset_options(name, exclude: tuple = ()) -> dict:
    """The fit options of preset `name` (without those in `exclude`); one ValueError naming the presets."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"fit option preset={name!r}: unknown preset; choose one of {', '.join(PRESETS)}")
    return {k: v for k, v in PRESETS[name].items() if k not in exclude}
