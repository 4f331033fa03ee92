"""Benchmark: rate-distortion of splats (float16 layout 1, quantized layout 2) vs JPEG and WebP.

The bundled photos are fitted with N Gaussians; each stored form is decoded, rendered and
compared with the photo (PSNR over RGB in [0, 1]). JPEG and WebP are given the same byte budget
per image as each splat file (the highest quality whose file fits), and also swept over quality
for the plot. Bytes are whole files (headers included) for every codec.
"""
from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

__all__ = ["run_codec_bench", "markdown", "plot", "at_budget", "compress"]

QUALITIES = (2, 5, 10, 20, 30, 50, 70, 90)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def _u8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def compress(arr: np.ndarray, fmt: str, q: int) -> tuple[int, np.ndarray]:
    """(file bytes, decoded uint8 image) of `arr` through Pillow's `fmt` at quality q."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, quality=q)
    data = buf.getvalue()
    return len(data), np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def at_budget(arr: np.ndarray, fmt: str, budget: int) -> tuple[int, float, int] | None:
    """(bytes, psnr, quality) of the best quality whose file fits in `budget`, None if none does."""
    lo, hi, best = 1, 100, None
    while lo <= hi:  # file size grows with quality (close enough to monotone for a search)
        q = (lo + hi) // 2
        n, dec = compress(arr, fmt, q)
        if n <= budget:
            best, lo = (n, _psnr(dec / 255.0, arr / 255.0), q), q + 1
        else:
            hi = q - 1
    return best


def run_codec_bench(size: int = 224, n_list=(400, 900), iters: int = 300, names=None,
                    backend: str = "auto", log=print) -> dict:
    from gaussianvision.data.photos import PHOTO_NAMES, bundled_photos
    from gaussianvision.fit import fit_images
    from gaussianvision.raster import render
    from gaussianvision.splats.format import decode, encode
    from gaussianvision.splats.format import encode_quantized

    photos = bundled_photos(size, names or PHOTO_NAMES)
    names = [n for n, _ in photos]
    images = torch.stack([p for _, p in photos])
    refs = [_u8(im) for im in images]
    ref_f = [r / 255.0 for r in refs]
    rows = []
    for n in n_list:
        t0 = time.perf_counter()
        res = fit_images(images, n, iters=iters, backend=backend)
        fit_s = time.perf_counter() - t0
        log(f"codec: fitted {len(names)} photos, N={n}, {iters} iters in {fit_s:.0f} s")
        with torch.no_grad():
            fp32 = render(res.splats, backend=backend)
        for i, name in enumerate(names):
            one = res.splats[i]
            forms = {"splats fp32 (unstored)": (None, one),
                     "splats float16": (encode(one), None),
                     "splats quantized": (encode_quantized(one), None)}
            row = {"photo": name, "n_gaussians": n, "iters": iters}
            for label, (data, sp) in forms.items():
                if data is not None:
                    sp = decode(data)
                with torch.no_grad():
                    out = fp32[i] if label.endswith("(unstored)") else render(sp, backend=backend)[0]
                row[label] = {"bytes": None if data is None else len(data),
                              "psnr": _psnr(out.clamp(0, 1).permute(1, 2, 0).numpy(), ref_f[i])}
            for label in ("splats float16", "splats quantized"):
                budget = row[label]["bytes"]
                for fmt in ("JPEG", "WEBP"):
                    r = at_budget(refs[i], fmt, budget)
                    row[f"{fmt} at {label.split()[1]} bytes"] = (
                        {"bytes": r[0], "psnr": r[1], "quality": r[2]} if r else {"bytes": None, "psnr": None})
            rows.append(row)
    sweep = {}
    for fmt in ("JPEG", "WEBP"):
        pts = []
        for q in QUALITIES:
            res_q = [compress(r, fmt, q) for r in refs]
            pts.append({"quality": q, "bytes": float(np.mean([b for b, _ in res_q])),
                        "psnr": float(np.mean([_psnr(d / 255.0, f) for (_, d), f in zip(res_q, ref_f)]))})
        sweep[fmt] = pts
    return {"size": size, "photos": names, "rows": rows, "sweep": sweep, "summary": _summary(rows)}


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for n in sorted({r["n_gaussians"] for r in rows}):
        sel = [r for r in rows if r["n_gaussians"] == n]
        line = {"n_gaussians": n}
        for k in sel[0]:
            if isinstance(sel[0][k], dict):
                ok = [r[k] for r in sel if r[k]["psnr"] is not None]
                line[k] = {"bytes": float(np.mean([v["bytes"] for v in ok])) if ok and ok[0]["bytes"] else None,
                           "psnr": float(np.mean([v["psnr"] for v in ok])) if ok else None, "images": len(ok)}
        f16, q = line["splats float16"], line["splats quantized"]
        line["quantized_ratio_vs_float16"] = f16["bytes"] / q["bytes"]
        line["quantized_psnr_cost_db"] = f16["psnr"] - q["psnr"]
        out.append(line)
    return out


def markdown(result: dict) -> str:
    lines = [f"Photos: {', '.join(result['photos'])} at {result['size']}x{result['size']}; mean over photos "
             "(JPEG/WebP rows: images where some quality fits the budget).", "",
             "| N | codec | bytes/image | PSNR dB |", "|---|---|---|---|"]
    for line in result["summary"]:
        for k, v in line.items():
            if isinstance(v, dict):
                b = "-" if v["bytes"] is None else f"{v['bytes']:.0f}"
                p = "-" if v["psnr"] is None else f"{v['psnr']:.2f}"
                lines.append(f"| {line['n_gaussians']} | {k} | {b} | {p} |")
        lines.append(f"| {line['n_gaussians']} | quantized vs float16 | {line['quantized_ratio_vs_float16']:.2f}x "
                     f"smaller | {line['quantized_psnr_cost_db']:+.3f} dB cost |")
    lines += ["", "Quality sweep (mean bytes, mean PSNR):", "", "| codec | quality | bytes | PSNR dB |",
              "|---|---|---|---|"]
    for fmt, pts in result["sweep"].items():
        lines += [f"| {fmt} | {p['quality']} | {p['bytes']:.0f} | {p['psnr']:.2f} |" for p in pts]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=80)
    for fmt, pts in result["sweep"].items():
        ax.plot([p["bytes"] for p in pts], [p["psnr"] for p in pts], "o-", ms=3, label=fmt)
    for label, mk in (("splats float16", "s"), ("splats quantized", "D"), ("splats fp32 (unstored)", "x")):
        xs, ys = [], []
        for line in result["summary"]:
            v = line[label]
            xs.append(v["bytes"] if v["bytes"] else line["splats float16"]["bytes"])
            ys.append(v["psnr"])
        ax.plot(xs, ys, mk, ms=6, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"Bundled photos, {result['size']}x{result['size']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
