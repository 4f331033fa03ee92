"""A/B of two source trees: a preset's fit (the bundled photos tiled to 40, at 224 px) with the code of a git
revision against the working tree, in alternating fresh processes, best of R each.

Each process imports the library from its own tree (PYTHONPATH) and times its start-up (imports,
photos) and one fit of the batch (numba's kernel load included); one warm-up process per tree
first compiles or loads that tree's numba cache. With --warm the process fits the batch once untimed
first (the kernels loaded, as in a service or a long conversion); with --alone the images are fitted
one per call, as an edge device fits each photo it takes. Use it to keep or drop a change of the
kernels or of the fit loop: same photos, same machine, same minute.

    PYTHONPATH=src python benchmarks/rev_ab.py --base HEAD [--preset fast] [--n 400] [--images 40] [--repeats 4]
                                               [--warm] [--alone]
Writes benchmarks/results/<name>.{json,md} (--name, default rev_ab_<preset>_<n>).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gaussianvision.apps.bench.fit import loadavg, machine_info

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from gaussianvision.data.photos import bundled_photos
from gaussianvision.fit import FitConfig, fit_images
preset, n, b, warm, alone = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
x = torch.stack([t for _, t in bundled_photos(224)]).repeat(-(-b // 8), 1, 1, 1)[:b]
cfg = FitConfig.from_options({"preset": preset})
fit = lambda: [m for i in range(b) for m in fit_images(x[i:i + 1], n, config=cfg).metrics] if alone \
    else fit_images(x, n, config=cfg).metrics
t1 = time.perf_counter()
if warm:
    fit()
t2 = time.perf_counter()
metrics = fit()
t3 = time.perf_counter()
print(json.dumps({"fit_ms": 1000 * (t3 - t2) / b, "startup_s": t1 - t0,
                  "psnr": sum(m["psnr"] for m in metrics) / len(metrics)}))
"""


def _run(src: Path, a: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", CHILD, a.preset, str(a.n), str(a.images), str(int(a.warm)),
                          str(int(a.alone))], env=env, check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), rev],
                   check=True, capture_output=True)
    return where / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD", help="git revision of the baseline (default HEAD)")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--images", type=int, default=40, help="batch: the 8 bundled photos tiled (default 40)")
    ap.add_argument("--warm", action="store_true", help="time a second fit of the batch in each process")
    ap.add_argument("--alone", action="store_true", help="fit the images one per call")
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.base], check=True,
                              capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="gsv-ab-"))
    trees = {f"base {base_rev}": _worktree(a.base, tmp / "base"), "working tree": ROOT / "src"}
    try:
        for src in trees.values():  # warm-up: compile or load each tree's numba cache
            _run(src, a)
        machine = machine_info()  # its loadavg_start: after the warm-up
        runs = {k: [] for k in trees}
        for _ in range(a.repeats):
            for k, src in trees.items():
                runs[k].append(_run(src, a))
        machine["loadavg_end"] = loadavg()
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "base")],
                       capture_output=True)
    best = {k: min(r["fit_ms"] for r in v) for k, v in runs.items()}
    psnr = {k: v[0]["psnr"] for k, v in runs.items()}
    kb, kw = list(trees)
    res = {"machine": machine,
           "preset": a.preset, "n": a.n, "images": a.images, "warm": a.warm, "alone": a.alone, "runs": runs, "best_fit_ms_per_image": best, "mean_psnr": psnr,
           "speedup": best[kb] / best[kw]}
    name = a.name or f"rev_ab_{a.preset}_{a.n}"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    how = ("; one per call" if a.alone else "") + ("; timed after a first fit in the same process" if a.warm else "")
    flags = (" --warm" if a.warm else "") + (" --alone" if a.alone else "")
    lines = [f"# A/B: `{a.preset}` fit at N={a.n}, base {base_rev} vs the working tree", "",
             f"{a.images} bundled photos (the 8 tiled) at 224 px{how}; fresh processes alternating, best of {a.repeats}; "
             f"{machine['cores']} cores ({machine['cpu']}), load average {machine['loadavg_start']} at start, "
             f"{machine['loadavg_end']} at end. "
             f"`PYTHONPATH=src python benchmarks/rev_ab.py --base {a.base} --preset {a.preset} --n {a.n} "
             f"--images {a.images}{flags}`.", "",
             "| tree | fit ms per image (best) | all runs | start-up s (best) | mean PSNR |",
             "|---|---|---|---|---|"]
    for k, v in runs.items():
        all_ms = ", ".join(f"{r['fit_ms']:.1f}" for r in v)
        lines.append(f"| {k} | {best[k]:.1f} | {all_ms} | "
                     f"{min(r['startup_s'] for r in v):.2f} | {psnr[k]:.3f} dB |")
    lines += ["", f"Speed-up of the fit: **{res['speedup']:.3f}x**.", ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
