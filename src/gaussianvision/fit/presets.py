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

All three end with 2 conjugate-gradient steps of least-squares colors for the final geometry
(final_colors: Adam leaves the colors near their optimum, not at it; about 3 iterations' cost
for +0.08 dB at N=400 and +0.3-0.44 dB at N=3136, bundled and Kodak alike), and take Adam with
short memories (beta1 = beta2 = 0.85) and step sizes that scale with the Gaussian spacing
sqrt(H W / N) (lr_spacing = 11.2: the plain rates at 400 Gaussians on 224 px, 0.29 px / 0.14 /
0.007 at N=3136). Adam's default beta2 = 0.999 remembers the large early gradients, which
shrinks every later step: at N=400 that slowed the fit (plain rates with beta2 0.85: +0.2-0.4 dB
at 150 iterations on bundled and held-out photos), while at N=3136 it was the only thing keeping
the steps small enough (beta2 0.85 at the plain rates: -2 dB). Both together
gained at every N measured (fast, 224 px, bundled / Kodak: N=100 +0.28 / +0.24 dB, N=400 +0.39 /
+0.31, N=1000 +0.11 / +0.11, N=3136 +0.46 / +0.35; balanced at N=3136 +1.0 / +0.75).

Short memories keep every step near its full rate, so an image that is nearly fitted (a smooth
gradient or noise field near 50 dB, a flat phantom) keeps stepping past its optimum: at N=3136
`fast` lost 0.6 and 1.7 dB to plain Adam there (fit_kinds.md). So each image's rates halve each time
its PSNR has not gained 0.01 dB in 10 iterations (decay_patience; a relocation restarts the count):
an image still improving, as photos do through a short fit, is untouched, one that has stalled
takes finer steps. In the same iterations (2026-12-07, benchmarks/results/fit_decay.md): fast at
N=400 +0.01 / -0.01 dB (bundled / Kodak), N=3136 0 / 0; balanced +0.09 / +0.04 and +0.48 / +0.33;
best at N=400 +0.05 / +0.02; on 17 scikit-image photos no setting was chosen on, fast +0.11 / +1.36
and balanced +0.47 / +2.20 (N=400 / 3136); on the made-up kinds +0.19 / +0.60 (fast). Patience 5
lost up to 0.3 dB on some kinds at N=400 (but gained more in fast at N=3136); 20 gained a little
more in balanced at N=400 and a little less at N=3136; 10, the middle, was kept.

Every preset combines with `budget_ms` (a wall-time cap per image, initialization included)
and `target_psnr` (each image stops once it reaches it). Without a preset the settings are the
plain defaults of FitConfig (500 iterations of Adam from the content initializer).
"""
from __future__ import annotations

__all__ = ["PRESETS", "preset_options", "spelled_out"]

_ADAM = {"lr_spacing": 11.2, "beta1": 0.85, "beta2": 0.85,  # rates per 11.2 px of spacing (N=400 at 224 px)
         "decay_patience": 10}  # an image's rates halve each time it gains < 0.01 dB in 10 iterations
PRESETS: dict[str, dict] = {
    "fast": {"iters": 150, "color_solve": 4, "coarse_fraction": 0.6, "coarse_min_pixels": 16.0, "relocate_every": 20,
             "final_colors": 2, **_ADAM},
    "balanced": {"iters": 500, "color_solve": 4, "relocate_every": 20, "final_colors": 2, **_ADAM},
    "best": {"iters": 2000, "color_solve": 4, "relocate_every": 20, "final_colors": 2, **_ADAM},
}


def preset_options(name, exclude: tuple = ()) -> dict:
    """The fit options of preset `name` (without those in `exclude`); one ValueError naming the presets."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"fit option preset={name!r}: unknown preset; choose one of {', '.join(PRESETS)}")
    return {k: v for k, v in PRESETS[name].items() if k not in exclude}


def spelled_out(options: dict, exclude: tuple = ()) -> dict:
    """`options` with a preset's settings (less those in `exclude`) written out beside its name, the
    options given beside it winning: what FitConfig.from_options builds from, and what cache keys and
    resume fingerprints hold, so they change when a preset's settings do (splats fitted under an
    older `fast` are never mixed with new ones). Options without a preset come back as given; an
    unknown preset raises preset_options' ValueError."""
    if "preset" not in options:
        return dict(options)
    return {**preset_options(options["preset"], exclude), **options}
