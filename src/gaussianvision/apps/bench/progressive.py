"""Benchmark: progressive splats, the price of reading a prefix instead of fitting at that N.

    python -m gaussianvision.apps.bench.progressive psnr --set bundled --n 3136
    python -m gaussianvision.apps.bench.progressive psnr --set kodak --n 400
    python -m gaussianvision.apps.bench.progressive accuracy --demo /tmp/demo_final

Each run is one section (under 2 minutes on 2 shared cores): its rows, machine, load average and
seconds go into benchmarks/results/progressive.json under the section's name, and
progressive.md is rewritten from that file.

psnr: the images are fitted once at N (the `fast` preset), put in progressive order (each
method), written as one progressive .gsv and read back with decode(max_gaussians=k); beside
each prefix, a direct fit at k with the same preset through the same float16 bytes. The price
of being progressive is direct - prefix (dB). "fit order" is the prefix of a file that is not
progressive (what a reader that ignored the flag would get). "nested fit" is a progressive fit
(fit/progressive.py: prefix losses at PREFIX_FRACTIONS of N, same preset) read in its own order (method "nested");
its row at k = N is the full-N price of fitting progressively, its time is beside the plain fit's.

accuracy: the demo's GS model (stage2_n76; --quick: stage2_n64) zero-shot on its world's four tasks through the
library's evaluator (eval.zeroshot over eval.datasets' SplatBatches, as `gsv demo` runs it),
reading prefixes k of progressive N=76 fits beside direct fits at k (the demo's fit settings):
the eliminate reorder of a plain fit and a nested fit (the demo's settings plus prefix losses).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from gaussianvision.apps.bench.fit import loadavg, machine_info
from gaussianvision.fit import FitConfig, fit_images
from gaussianvision.fit.metrics import psnr
from gaussianvision.fit.progressive import PREFIX_FRACTIONS, progressive
from gaussianvision.raster import render
from gaussianvision.splats import Splats
from gaussianvision.splats.format import decode, encode

__all__ = ["progressive_rows", "accuracy_rows", "demo_model", "DemoMissing", "image_set", "markdown", "KS", "ACC_KS"]

KS = (100, 200, 400, 900, 1600, 3136)
ACC_KS = (19, 38, 57, 76)
METHODS = ("eliminate", "greedy")
NESTED = "nested fit"  # a progressive (nested) fit read in its own order
KODAK = Path("/work/shared/data/kodak")
RESULTS = Path("benchmarks/results")


def image_set(name: str, count: int = 8, size: int = 224) -> tuple[list[str], torch.Tensor]:
    """(names, [count, 3, size, size]) of the bundled photos or held-out Kodak photos."""
    from gaussianvision.data.images import load_image
    from gaussianvision.data.photos import bundled_photos
    if name == "bundled":
        items = bundled_photos(size)[:count]
    elif name == "kodak":
        items = [(p.stem, load_image(p, size=size)) for p in sorted(KODAK.glob("*.png"))[:count]]
    else:
        raise ValueError(f"unknown image set {name!r}: bundled or kodak")
    return [n for n, _ in items], torch.stack([im for _, im in items])


def _mean_psnr(s: Splats, images: torch.Tensor) -> float:
    return float(psnr(render(s), images).mean())


def progressive_rows(images: torch.Tensor, n: int, ks=KS, preset: str = "fast", methods=METHODS) -> dict:
    """PSNR of prefixes k of progressive N fits beside direct fits at k (means over the images):
    a plain fit reordered by each method, and a nested fit (prefix_fractions, fit/progressive.py)."""
    cfg = FitConfig.from_options({"preset": preset})
    t0 = time.perf_counter()
    full = fit_images(images, n, config=cfg).splats.detach()
    fit_s = (time.perf_counter() - t0) / len(images)
    t0 = time.perf_counter()
    nested = fit_images(images, n, config=FitConfig.from_options(
        {"preset": preset, "prefix_fractions": PREFIX_FRACTIONS})).splats.detach()
    nested_s = (time.perf_counter() - t0) / len(images)
    files, order_s = {"fit order": encode(full, progressive=True), NESTED: encode(progressive(nested, method="nested"), progressive=True)}, {}
    for m in methods:
        t0 = time.perf_counter()
        files[m] = encode(progressive(full, method=m), progressive=True)
        order_s[m] = (time.perf_counter() - t0) / len(images)
    rows = []
    for k in [k for k in ks if k <= n]:
        direct = full if k == n else fit_images(images, k, config=cfg).splats.detach()
        row = {"n": n, "k": k, "payload_bytes": 16 * k, "direct": _mean_psnr(decode(encode(direct)), images)}
        for m, data in files.items():
            row[m] = _mean_psnr(decode(data, max_gaussians=k), images)
        rows.append(row)
    return {"rows": rows, "fit_seconds_per_image": fit_s, "order_seconds_per_image": order_s,
            "nested_fit_seconds_per_image": nested_s, "prefix_fractions": list(PREFIX_FRACTIONS),
            "methods": ["fit order", *methods, NESTED]}


class _Ordered:
    """The N fits of `full` (a SplatCache) in progressive order, stored as one progressive file per
    batch of images (memoized by the images' bytes: every k reads the same file)."""

    def __init__(self, full, method: str):
        self.full, self.method, self.files = full, method, {}

    def __call__(self, images: torch.Tensor) -> bytes:
        key = hashlib.sha256(images.numpy().tobytes()).hexdigest()
        if key not in self.files:
            self.files[key] = encode(progressive(self.full(images), method=self.method), progressive=True)
        return self.files[key]


class _Prefix:
    """A SplatBatches source: each image's first k Gaussians of the ordered file; the PSNR of
    what it handed out."""

    def __init__(self, ordered: _Ordered, k: int):
        self.ordered, self.k = ordered, k
        self.psnrs: list[float] = []

    def __call__(self, images: torch.Tensor) -> Splats:
        s = decode(self.ordered(images), max_gaussians=self.k)
        self.psnrs += psnr(render(s), images).tolist()
        return s


def _demo_settings(demo: Path, n: int, **extra):
    from gaussianvision.eval import SplatSettings
    conv = json.loads((demo / "results.json").read_text())["settings"]["convert"]
    return SplatSettings(n_gaussians=n, iters=conv["iters"], init=conv["init"], size=64, fit_batch=64,
                         fit_options={**conv.get("fit", {}), **extra})


def _zeroshot(em, t: dict, source, batch: int) -> float:
    from gaussianvision.eval.datasets import SplatBatches, build_dataset, build_loader, dataset_task, transform_for
    from gaussianvision.eval.zeroshot import zeroshot_classification
    transform = transform_for(em)
    ds = build_dataset(t["dataset"], t["root"], transform, dataset_task(t["dataset"], t["root"]))
    loader = SplatBatches(build_loader(t["dataset"], ds, batch, transform=transform, root=t["root"]), source,
                          classes_from=ds)
    return zeroshot_classification(em, loader, "cpu")["acc1"]


class DemoMissing(ValueError):
    """The `--demo` folder holds no finished demo with a stage-2 GS model."""


def demo_model(demo: Path) -> tuple[Path, int]:
    """(folder, N) of the demo's stage-2 GS model of the largest N (`gsv demo` writes stage2_n76, `--quick`
    stage2_n64); DemoMissing naming the folder where there is none (regression: stage2_n76 was assumed and
    a quick demo ended in a traceback)."""
    found = [(int(q.parent.name[len("stage2_n"):]), q.parent) for q in Path(demo).glob("stage2_n*/gsclip.safetensors")
             if q.parent.name[len("stage2_n"):].isdigit()]
    if not (Path(demo) / "results.json").is_file() or not found:
        raise DemoMissing(f"{demo}: no finished demo there (results.json and stage2_n*/gsclip.safetensors); "
                          "run gsv demo first, or give its output with --demo")
    n, folder = max(found)
    return folder, n


def accuracy_rows(demo: Path, ks=None, n: int | None = None, method: str = "eliminate", cache: Path | None = None,
                  batch: int = 160) -> dict:
    """Per task and k: zero-shot acc1 of the demo's GS model on prefixes k of progressive N fits
    and on direct fits at k (the demo's fit settings; fits cached under `cache`). N: the model's (demo_model),
    ks: its quarters (ACC_KS at N=76)."""
    from gaussianvision.apps.demo.pipeline import register_bases
    from gaussianvision.eval import SplatCache, load_eval_model
    folder, model_n = demo_model(demo)
    n = model_n if n is None else n
    ks = tuple(round(n * q / 4) for q in range(1, 5)) if ks is None else ks
    register_bases()
    em = load_eval_model(f"gs:{folder}", "cpu")
    world = json.loads((demo / "steps" / "world.json").read_text())["result"]
    cache = Path(cache or "/tmp/gsv_progressive_cache")
    ordered = _Ordered(SplatCache(str(cache), _demo_settings(demo, n)), method)
    nested = _Ordered(SplatCache(str(cache), _demo_settings(demo, n, prefix_fractions=PREFIX_FRACTIONS)), "nested")
    rows = []
    for k in ks:
        row = {"k": k, "tasks": {}}
        for task, t in world["tasks"].items():
            direct = SplatCache(str(cache), _demo_settings(demo, k))
            prefix, nest = _Prefix(ordered, k), _Prefix(nested, k)
            row["tasks"][task] = {"prefix": _zeroshot(em, t, prefix, batch), "direct": _zeroshot(em, t, direct, batch),
                                  "nested": _zeroshot(em, t, nest, batch),
                                  "prefix_psnr": sum(prefix.psnrs) / len(prefix.psnrs), "direct_psnr": direct.psnr_mean,
                                  "nested_psnr": sum(nest.psnrs) / len(nest.psnrs)}
        for key in ("prefix", "direct", "nested", "prefix_psnr", "direct_psnr", "nested_psnr"):
            row[key] = sum(r[key] for r in row["tasks"].values()) / len(row["tasks"])
        rows.append(row)
    return {"rows": rows, "n": n, "method": method, "model": folder.name,
            "images_per_task": {t: w["n"] for t, w in world["tasks"].items()}}


# ---------------------------------------------------------------- the results file and its table
def _psnr_md(name: str, sec: dict) -> list[str]:
    methods = sec["methods"]
    head = ["k", "payload bytes", "direct fit at k"] + [f"{m} prefix (price)" for m in methods]
    nested = (f"; nested fit (prefixes {sec['prefix_fractions']} of N) {sec['nested_fit_seconds_per_image']:.2f} s"
              " per image" if "nested_fit_seconds_per_image" in sec else "")
    out = [f"### {name}", "", f"Fit {sec['fit_seconds_per_image']:.2f} s per image{nested}; order "
           + ", ".join(f"{m} {v:.2f} s" for m, v in sec["order_seconds_per_image"].items()) + " per image; "
           f"machine load {sec['machine']['loadavg_start']} -> {sec['machine']['loadavg_end']}, "
           f"{sec['seconds']:.0f} s in all.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sec["rows"]:
        cells = [str(r["k"]), f"{r['payload_bytes']:,}", f"{r['direct']:.2f} dB"]
        cells += [f"{r[m]:.2f} dB ({r['direct'] - r[m]:+.2f})" for m in methods]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def _acc_md(sec: dict) -> list[str]:
    tasks = list(sec["rows"][0]["tasks"])
    head = ["k", "payload bytes", "prefix acc", "nested-fit prefix acc", "direct acc", "prefix PSNR",
            "nested-fit prefix PSNR", "direct PSNR"] + [f"{t} prefix / nested / direct" for t in tasks]
    out = [f"### zero-shot, demo GS model ({sec.get('model', 'stage2_n76')}) on its world, prefixes of progressive N={sec['n']} fits "
           f"({sec['method']} reorder of a plain fit; nested fit with prefixes {list(PREFIX_FRACTIONS)} of N)", "", f"Images per task: {sec['images_per_task']}; machine load "
           f"{sec['machine']['loadavg_start']} -> {sec['machine']['loadavg_end']}, {sec['seconds']:.0f} s in all.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sec["rows"]:
        cells = [str(r["k"]), f"{16 * r['k']:,}", f"{100 * r['prefix']:.1f}%", f"{100 * r['nested']:.1f}%",
                 f"{100 * r['direct']:.1f}%", f"{r['prefix_psnr']:.2f} dB", f"{r['nested_psnr']:.2f} dB",
                 f"{r['direct_psnr']:.2f} dB"]
        cells += [f"{100 * v['prefix']:.1f} / {100 * v['nested']:.1f} / {100 * v['direct']:.1f}" for v in r["tasks"].values()]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def markdown(res: dict) -> str:
    m = next(iter(res.values()))["machine"] if res else {}
    lines = ["# Progressive splats: prefixes against direct fits", "",
             f"Machine: {m.get('cores')} cores ({m.get('cpu')}), torch {m.get('torch')}, numba {m.get('numba')}; "
             "each section records its own load (the machine is shared). Made by "
             "`python -m gaussianvision.apps.bench.progressive` (see its docstring).", ""]
    for name, sec in sorted(res.items(), key=lambda kv: (kv[0] == "accuracy", kv[0])):
        lines += _acc_md(sec) if name == "accuracy" else _psnr_md(name, sec)
    return "\n".join(lines)


def _save(name: str, sec: dict, out: Path) -> None:
    from gaussianvision.apps.cli.command import write_json, write_text
    path = out / "progressive.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    res[name] = sec
    write_json(path, res)
    write_text(out / "progressive.md", markdown(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gaussianvision.apps.bench.progressive", description=__doc__.split("\n")[0])
    p.add_argument("section", choices=["psnr", "accuracy"])
    p.add_argument("--set", default="bundled", choices=["bundled", "kodak"], help="psnr: the photos")
    p.add_argument("--count", type=int, default=8, help="psnr: how many photos")
    p.add_argument("--n", type=int, default=3136, help="psnr: the full fit's N")
    p.add_argument("--demo", type=Path, default=Path("/tmp/demo_final"), help="accuracy: a `gsv demo` output")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    machine, t0 = machine_info(), time.perf_counter()
    if a.section == "psnr":
        names, images = image_set(a.set, a.count)
        sec, name = progressive_rows(images, a.n, KS + ((a.n,) if a.n not in KS else ())), f"{a.set} photos ({len(names)}), N={a.n}"
        sec["images"] = names
    else:
        try:
            sec, name = accuracy_rows(a.demo), "accuracy"
        except DemoMissing as e:
            print(f"bench progressive: {e}", file=sys.stderr)
            return 2
    sec.update(machine=dict(machine, loadavg_end=loadavg()), seconds=time.perf_counter() - t0)
    _save(name, sec, a.out)
    print(markdown({name: sec}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
