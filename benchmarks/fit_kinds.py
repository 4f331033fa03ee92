"""Do the presets hold beyond photos? The `fast` preset against plain Adam and `balanced` at the
same wall budget (fast's own ms per image, given to the others as budget_ms), on eight kinds of
made-up images no setting was chosen on: text, a checkerboard, white noise, smooth noise, a
cartoon of outlined discs, a colour gradient, thin lines, a dark noisy image. Each method runs
once per repeat, interleaved, on 16 images at 224 px (the kinds twice, different draws).
Writes benchmarks/results/fit_kinds.{json,md}.

    PYTHONPATH=src python benchmarks/fit_kinds.py [--ns 400 3136] [--repeats 2]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from gaussianvision.apps.bench.fit import loadavg, machine_info
from gaussianvision.fit import FitConfig, fit_images

S = 224


def _text(rng):
    im = Image.new("RGB", (S, S), "white")
    d = ImageDraw.Draw(im)
    for k in range(12):
        d.text((5 + int(rng.integers(0, 8)), 5 + 18 * k), "The quick brown fox jumps 0123", fill=(0, 0, 0))
    return im


def _checker(rng):
    a = ((np.indices((S, S)) // int(rng.integers(12, 20))).sum(0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([a, a, 255 - a], -1))


def _noise(rng):
    return Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8))


def _smooth_noise(rng):
    a = rng.normal(size=(S // 8, S // 8, 3))
    return Image.fromarray(((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)).resize((S, S), Image.BICUBIC)


def _cartoon(rng):
    im = Image.new("RGB", (S, S), (120, 180, 240))
    d = ImageDraw.Draw(im)
    for _ in range(15):
        x, y, r = int(rng.integers(0, S)), int(rng.integers(0, S)), int(rng.integers(8, 40))
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
                  outline=(0, 0, 0), width=2)
    return im


def _gradient(rng):
    x = np.linspace(0, 1, S) ** rng.uniform(0.5, 2.0)
    a = np.stack([np.outer(x, np.ones(S)), np.outer(np.ones(S), x), np.outer(x, x)], -1)
    return Image.fromarray((a * 255).astype(np.uint8))


def _lines(rng):
    im = Image.new("RGB", (S, S), "black")
    d = ImageDraw.Draw(im)
    step = int(rng.integers(5, 9))
    for k in range(0, S, step):
        d.line((k, 0, S - k, S), fill=(255, 255, k), width=1)
    return im


def _dark(rng):
    a = rng.normal(0.05, 0.02, (S // 4, S // 4, 3)).clip(0, 1)
    return Image.fromarray((a * 255).astype(np.uint8)).resize((S, S), Image.BILINEAR)


KINDS = {"text": _text, "checkerboard": _checker, "white noise": _noise, "smooth noise": _smooth_noise,
         "cartoon": _cartoon, "gradient": _gradient, "thin lines": _lines, "dark": _dark}


def images(seed: int = 0) -> torch.Tensor:
    """[16, 3, S, S]: every kind twice (two draws)."""
    rng = np.random.default_rng(seed)
    pics = [make(rng) for _ in range(2) for make in KINDS.values()]
    return torch.stack([torch.from_numpy(np.array(p.convert("RGB"))).permute(2, 0, 1).float() / 255 for p in pics])


def _fit(x, n, options):
    t = time.perf_counter()
    r = fit_images(x, n, config=FitConfig.from_options(options))
    return 1000 * (time.perf_counter() - t) / x.shape[0], [m["psnr"] for m in r.metrics]


def race(x, n) -> dict:
    """{"budget_ms": fast's ms per image, "psnr": {"fast", "adam", "balanced": [per image]}}: plain Adam and
    `balanced` given fast's own time as their budget."""
    ms, fast = _fit(x, n, {"preset": "fast"})
    psnr = {"fast": fast}
    for name, opts in (("adam", {"iters": 100000}), ("balanced", {"preset": "balanced"})):
        psnr[name] = _fit(x, n, {**opts, "budget_ms": ms})[1]
    return {"budget_ms": ms, "psnr": psnr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[400, 3136])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    x = images()
    fit_images(x[:1, :, :64, :64], 16, config=FitConfig.from_options({"preset": "fast", "iters": 3}))
    machine = machine_info()
    res = {"machine": machine, "kinds": list(KINDS), "rows": []}
    for n in a.ns:
        for rep in range(a.repeats):
            row = {"n": n, "repeat": rep, **race(x, n)}
            res["rows"].append(row)
            say(f"N={n} repeat {rep}", row)
    machine["loadavg_end"] = loadavg()
    write(a.out, "fit_kinds", res, to_markdown(res, a))


def say(label: str, row: dict) -> None:
    """One progress line of a race row: its budget and each method's mean PSNR."""
    print(f"{label}: budget {row['budget_ms']:.0f} ms; mean fast / adam / balanced "
          + " / ".join(f"{np.mean(v):.2f}" for v in row["psnr"].values()), flush=True)


def write(out: str, name: str, res: dict, markdown: str) -> None:
    """benchmarks/results/<name>.{json,md}, and the table printed."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(res, indent=1))
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)


def to_markdown(res: dict, a) -> str:
    m = res["machine"]
    k = len(res["kinds"])
    lines = ["# Presets beyond photos: `fast` against plain Adam and `balanced` at the same wall budget", "",
             f"16 made-up images at {S} px (each kind twice), each method once per repeat, interleaved; the budget "
             f"is fast's own ms per image of that repeat, given to the others as budget_ms. {m['cores']} cores "
             f"({m['cpu']}), torch {m['torch']}, numba {m['numba']}, load average {m['loadavg_start']} at start, "
             f"{m['loadavg_end']} at end. `PYTHONPATH=src python benchmarks/fit_kinds.py`.", "",
             "| N | kind | fast dB | plain Adam dB | balanced dB | fast - Adam |", "|---|---|---|---|---|---|"]
    for n in sorted({r["n"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["n"] == n]
        mean = {meth: np.mean([r["psnr"][meth] for r in rows], axis=0) for meth in ("fast", "adam", "balanced")}
        for i, kind in enumerate(res["kinds"]):
            v = {meth: (mean[meth][i] + mean[meth][i + k]) / 2 for meth in mean}
            lines.append(f"| {n} | {kind} | {v['fast']:.2f} | {v['adam']:.2f} | {v['balanced']:.2f} | "
                         f"{v['fast'] - v['adam']:+.2f} |")
        ms = np.mean([r["budget_ms"] for r in rows])
        lines.append(f"| {n} | **mean** (budget {ms:.0f} ms per image) | **{mean['fast'].mean():.2f}** | "
                     f"{mean['adam'].mean():.2f} | {mean['balanced'].mean():.2f} | "
                     f"{mean['fast'].mean() - mean['adam'].mean():+.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
