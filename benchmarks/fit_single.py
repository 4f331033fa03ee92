"""One image at a time, as an edge device or `gsv send` of one photo fits it: wall ms per image and PSNR
of the `fast` preset fitting each photo alone in a warm process, beside the same photos fitted as one
batch in the same run (the batch's ms per image), and plain Adam at `fast`'s iterations as a
baseline. 224x224; the bundled photos and, when ../shared/data/kodak exists, the first 8 Kodak photos.
Writes benchmarks/results/fit_single.{json,md}.

    PYTHONPATH=src python benchmarks/fit_single.py [--n 400] [--rounds 2]
"""
import argparse
import json
import time
from pathlib import Path

import torch

from gaussianvision.apps.bench.fit import KODAK_DIR, loadavg, machine_info
from gaussianvision.data.images import load_image
from gaussianvision.data.photos import bundled_photos
from gaussianvision.fit import FitConfig, fit_images

OUT = Path(__file__).resolve().parent / "results"


def image_sets() -> dict[str, torch.Tensor]:
    sets = {"bundled": torch.stack([t for _, t in bundled_photos(224)])}
    kodak = sorted(Path(KODAK_DIR).glob("*.png"))[:8]
    if kodak:
        sets["kodak"] = torch.stack([load_image(f, size=224) for f in kodak])
    return sets


def timed(images: torch.Tensor, n: int, **options) -> tuple[float, float]:
    """(wall seconds, mean PSNR) of one fit_images call."""
    t = time.perf_counter()
    r = fit_images(images, n, **options)
    return time.perf_counter() - t, sum(m["psnr"] for m in r.metrics) / len(r.metrics)


def measure(images: torch.Tensor, n: int, rounds: int) -> dict:
    """Alone (each image its own call) and batched, `fast` and plain Adam at fast's iterations,
    interleaved over `rounds` so that the machine's load falls on every row alike; best round kept."""
    rows: dict[str, list] = {}
    b = len(images)
    for _ in range(rounds):
        iters = FitConfig.from_options({"preset": "fast"}).iters
        for name, opts in (("fast", {"preset": "fast"}), ("adam", {"iters": iters})):
            alone = [timed(images[i:i + 1], n, **opts) for i in range(b)]
            rows.setdefault(f"{name} alone", []).append((1000 * sum(s for s, _ in alone) / b,
                                                         sum(p for _, p in alone) / b))
            s, p = timed(images, n, **opts)
            rows.setdefault(f"{name} batch of {b}", []).append((1000 * s / b, p))
    return {k: {"ms_per_image": min(v)[0], "psnr": v[0][1], "rounds_ms": [x[0] for x in v]} for k, v in rows.items()}


def markdown(res: dict) -> str:
    m = res["machine"]
    machine = f"{m['cores']} cores ({m['cpu']}), torch {m['torch']} on {m['torch_threads']} threads, numba {m['numba']}"
    lines = ["# One image at a time (224x224)", "",
             f"Wall ms per image in a warm process (kernels compiled), best of {res['rounds']} interleaved rounds; "
             "'alone' fits each photo in its own call, 'batch' all of a set in one call. Plain Adam runs the "
             f"same iterations as `fast` ({FitConfig.from_options({'preset': 'fast'}).iters}). `PYTHONPATH=src python benchmarks/fit_single.py`. {machine}; "
             f"load average {res['load_start']} at start, {res['load_end']} at end.", "",
             "| set | N | method | ms per image | images/s | PSNR dB |", "|---|---|---|---|---|---|"]
    for key, rows in res["sets"].items():
        for method, r in rows.items():
            lines.append(f"| {key} | {res['n']} | {method} | {r['ms_per_image']:.0f} | "
                         f"{1000 / r['ms_per_image']:.1f} | {r['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    sets = image_sets()
    fit_images(sets["bundled"][:1], a.n, preset="fast")  # compile / load the kernels once
    res = {"n": a.n, "rounds": a.rounds, "machine": machine_info(), "load_start": loadavg(), "sets": {}}
    for key, images in sets.items():
        res["sets"][key] = measure(images, a.n, a.rounds)
        print(key, json.dumps(res["sets"][key]), flush=True)
    res["load_end"] = loadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fit_single.json").write_text(json.dumps(res, indent=2) + "\n")
    (OUT / "fit_single.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
