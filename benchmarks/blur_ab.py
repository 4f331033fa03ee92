"""A/B in one process: the `fast` fit (N=400, 40 bundled photos at 224 px) with the separable
blurs as band matrices (fit/blur.py, the default) against the depthwise convolutions (BAND_MAX=0),
interleaved, best of R runs each. Writes benchmarks/results/fit_blur_ab.{json,md}.

    PYTHONPATH=src python benchmarks/blur_ab.py [--repeats 3]
"""
import argparse
import json
import time
from pathlib import Path

import torch

import gaussianvision.fit.blur as blur
from gaussianvision.apps.bench.fit import loadavg, machine_info
from gaussianvision.data.photos import bundled_photos
from gaussianvision.fit import FitConfig, fit_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    x = torch.stack([t for _, t in bundled_photos(224)]).repeat(5, 1, 1, 1)
    cfg = FitConfig.from_options({"preset": "fast"})
    fit_images(x[:1, :, :64, :64], 16, config=FitConfig.from_options({"preset": "fast", "iters": 3}))
    runs = {"band matrices (default)": [], "depthwise convolutions": []}
    psnr = {}
    machine = machine_info()  # its loadavg_start: before the runs
    for _ in range(a.repeats):
        for name, band_max in (("band matrices (default)", blur.BAND_MAX), ("depthwise convolutions", 0)):
            saved, blur.BAND_MAX = blur.BAND_MAX, band_max
            t = time.perf_counter()
            r = fit_images(x, 400, config=cfg)
            runs[name].append(1000 * (time.perf_counter() - t) / x.shape[0])
            blur.BAND_MAX = saved
            psnr[name] = sum(m["psnr"] for m in r.metrics) / len(r.metrics)
    best = {k: min(v) for k, v in runs.items()}
    machine["loadavg_end"] = loadavg()
    res = {"machine": machine, "ms_per_image": runs, "best_ms_per_image": best, "mean_psnr": psnr,
           "speedup": best["depthwise convolutions"] / best["band matrices (default)"]}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit_blur_ab.json").write_text(json.dumps(res, indent=1))
    lines = ["# Separable blurs: band matrices vs depthwise convolutions (fast preset, N=400)", "",
             f"40 bundled photos at 224 px, one process, interleaved, best of {a.repeats}; {machine['cores']} cores "
             f"({machine['cpu']}), torch {machine['torch']}, numba {machine['numba']}, load average "
             f"{machine['loadavg_start']} at start, {machine['loadavg_end']} at end. "
             "`PYTHONPATH=src python benchmarks/blur_ab.py`.", "",
             "| blurs | ms per image (best) | all runs | mean PSNR |", "|---|---|---|---|"]
    for k in runs:
        lines.append(f"| {k} | {best[k]:.1f} | {', '.join(f'{v:.1f}' for v in runs[k])} | {psnr[k]:.3f} dB |")
    lines += ["", f"Speed-up of the whole fit: **{res['speedup']:.3f}x** at the same PSNR.", ""]
    (out / "fit_blur_ab.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
