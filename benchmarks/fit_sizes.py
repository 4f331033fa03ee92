"""Do the presets hold at other image sizes? The presets were chosen at 224 px (and on a cost model over
64-224 px): here `fast` against plain Adam and `balanced` at the same wall budget (fast's own ms per
image, given to the others as budget_ms), at sizes from 64 px to 512 x 384 (square and not, as `gsv fit
--size 0` keeps them), each at a sparse and a dense N (about 125 and 31 pixels per Gaussian; the dense
one left out above 256 px, where it takes minutes), on scikit-image photos no setting was chosen on
(the 12 that are photographs or scans: fit_decay.FRESH without the synthetic five). Each method runs
once per repeat, interleaved. Writes benchmarks/results/fit_sizes.{json,md}.

    PYTHONPATH=src python benchmarks/fit_sizes.py [--repeats 1] [--images 8]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gaussianvision.apps.bench.fit import loadavg, machine_info
from gaussianvision.fit import FitConfig, fit_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_decay import FRESH  # noqa: E402
from fit_kinds import race, say, write  # noqa: E402

SYNTHETIC = ("colorwheel", "shepp_logan_phantom", "logo", "text", "page")
SIZES = ((64, 64), (96, 128), (128, 128), (192, 256), (384, 384), (384, 512))  # (height, width)
PIXELS_PER_GAUSSIAN = (125, 31)
DENSE_UP_TO = 256 * 256


def photos(names, height: int, width: int) -> torch.Tensor:
    """The scikit-image photos, centre-cropped to the aspect and resized to height x width, [B, 3, H, W]."""
    import skimage.data
    out = []
    for name in names:
        a = np.asarray(getattr(skimage.data, name)())
        if a.dtype != np.uint8:
            a = (255 * (a - a.min()) / max(1e-9, np.ptp(a))).astype(np.uint8)
        im = Image.fromarray(a).convert("RGB")
        w, h = im.size
        cw, ch = (w, round(w * height / width)) if w * height <= h * width else (round(h * width / height), h)
        im = im.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))
        out.append(torch.from_numpy(np.array(im.resize((width, height), Image.BICUBIC))).permute(2, 0, 1).float() / 255)
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    names = [n for n in FRESH if n not in SYNTHETIC][:a.images]
    fit_images(torch.rand(1, 3, 64, 64), 16, config=FitConfig.from_options({"preset": "fast", "iters": 3}))
    machine = machine_info()
    res = {"machine": machine, "photos": names, "rows": []}
    for h, w in SIZES:
        x = photos(names, h, w)
        for ppg in PIXELS_PER_GAUSSIAN:
            if ppg < 100 and h * w > DENSE_UP_TO:
                continue
            n = max(4, round(h * w / ppg))
            for rep in range(a.repeats):
                row = {"height": h, "width": w, "n": n, "repeat": rep, **race(x, n)}
                res["rows"].append(row)
                say(f"{h}x{w} N={n}", row)
    machine["loadavg_end"] = loadavg()
    write(a.out, "fit_sizes", res, to_markdown(res, a))


def to_markdown(res: dict, a) -> str:
    m = res["machine"]
    lines = ["# Presets at other sizes: `fast` against plain Adam and `balanced` at the same wall budget", "",
             f"{len(res['photos'])} scikit-image photos no setting was chosen on ({', '.join(res['photos'])}), "
             f"centre-cropped to each aspect; each method once per repeat ({a.repeats}), interleaved; the budget is "
             f"fast's own ms per image, given to the others as budget_ms. {m['cores']} cores ({m['cpu']}), torch "
             f"{m['torch']}, numba {m['numba']}, load average {m['loadavg_start']} at start, {m['loadavg_end']} at "
             f"end. `PYTHONPATH=src python benchmarks/fit_sizes.py --repeats {a.repeats} --images {a.images}`.", "",
             "| size (H x W) | N | pixels per Gaussian | budget ms per image | fast dB | plain Adam dB | balanced dB | "
             "fast - Adam | images where fast < Adam |", "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["height"], r["width"], r["n"]) for r in res["rows"]}, key=lambda k: (k[0] * k[1], k[2]))
    for h, w, n in keys:
        rows = [r for r in res["rows"] if (r["height"], r["width"], r["n"]) == (h, w, n)]
        v = {meth: np.mean([r["psnr"][meth] for r in rows], axis=0) for meth in ("fast", "adam", "balanced")}
        worse = int((v["fast"] < v["adam"]).sum())
        lines.append(f"| {h} x {w} | {n} | {h * w / n:.0f} | {np.mean([r['budget_ms'] for r in rows]):.0f} | "
                     f"{v['fast'].mean():.2f} | {v['adam'].mean():.2f} | {v['balanced'].mean():.2f} | "
                     f"{v['fast'].mean() - v['adam'].mean():+.2f} | {worse} of {len(v['fast'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
