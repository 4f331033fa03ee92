"""gsv demo: fit a bundled photo to splats and write the splat file, its render and a comparison."""
from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from gaussianvision.data.images import save_png, to_pil
from gaussianvision.data.photos import bundled_photos
from gaussianvision.fit import fit_images
from gaussianvision.raster import render
from gaussianvision.splats import save
from .common import emit, parser, run, write_json


def side_by_side(original: torch.Tensor, rendered: torch.Tensor, caption: str) -> Image.Image:
    a, b = to_pil(original), to_pil(rendered)
    pad = 28
    canvas = Image.new("RGB", (a.width + b.width + 10, a.height + pad), "white")
    canvas.paste(a, (0, pad))
    canvas.paste(b, (a.width + 10, pad))
    ImageDraw.Draw(canvas).text((4, 8), caption, fill="black")
    return canvas


def main(argv=None) -> int:
    p = parser("demo", "Fit a photo that ships with scikit-image and write splats, render and comparison.")
    p.add_argument("--out", type=Path, default=Path("out/demo"))
    p.add_argument("--photo", default="astronaut")
    p.add_argument("--gaussians", type=int, default=400)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="small and fast (a few seconds)")
    args = p.parse_args(argv)

    def go(a):
        if a.quick:
            a.size, a.gaussians, a.iters = 64, 100, 50
        a.out.mkdir(parents=True, exist_ok=True)
        (name, img), = bundled_photos(a.size, names=(a.photo,))
        t0 = time.perf_counter()
        res = fit_images(img[None], a.gaussians, iters=a.iters, progress=not a.json)
        secs = time.perf_counter() - t0
        m = res.metrics[0]
        gsv_path = a.out / f"{name}.gsv"
        nbytes = save(gsv_path, res.splats)
        payload = 16 * res.splats.max_gaussians
        pixel = res.splats.pixel_bytes()
        rendered = render(res.splats)[0]
        save_png(rendered, a.out / f"{name}_render.png")
        save_png(img, a.out / f"{name}_original.png")
        cap = (f"{name} {a.size}x{a.size}: {pixel} pixel bytes vs {nbytes} splat bytes "
               f"({pixel / payload:.2f}x), N={a.gaussians}, PSNR {m['psnr']:.2f} dB")
        side_by_side(img, rendered, cap).save(a.out / f"{name}_compare.png")
        result = {"photo": name, "size": a.size, "n_gaussians": a.gaussians, "iters": a.iters,
                  "psnr": m["psnr"], "ssim": m["ssim"], "pixel_bytes": pixel, "splat_bytes": nbytes,
                  "payload_bytes": payload, "compression_ratio_payload": pixel / payload,
                  "compression_ratio_file": pixel / nbytes, "seconds": secs,
                  "files": {"splats": str(gsv_path), "render": str(a.out / f"{name}_render.png"),
                            "compare": str(a.out / f"{name}_compare.png")}}
        write_json(a.out / "results.json", result)
        emit(result, a.json, cap + f"\nwrote {a.out}/ in {secs:.1f} s")
    return run("demo", go, args)
