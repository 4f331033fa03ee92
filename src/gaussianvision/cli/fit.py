"""gsv fit INPUT... --gaussians N: fit image files or folders to splats, one .gsv per image.

Bad inputs (missing, empty, corrupt, not images) are reported with their reason and
skipped; the rest are fitted in batches. Writes OUT/NAME.gsv (and OUT/NAME.png with
--save-png) plus OUT/results.json: {"results": [per image], "failures": [...], "config": {...}}.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from gaussianvision.data.images import ImageLoadError, list_images, load_image, save_png
from gaussianvision.fit import FitConfig, INITIALIZERS, MEASURES, fit_images
from gaussianvision.raster import render
from gaussianvision.splats import save
from .common import CliError, emit, parser, run, write_json


def _names(paths: list[Path]) -> list[str]:
    """Output stems, unique even when two folders hold files of the same name."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem or "image"
        k = seen.get(stem, 0)
        seen[stem] = k + 1
        out.append(stem if k == 0 else f"{stem}_{k}")
    return out


def main(argv=None) -> int:
    p = parser("fit", "Fit images (files or folders) to 2D Gaussian splats; one .gsv per image.")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--gaussians", "-n", type=int, required=True, help="Gaussians per image")
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--init", default="content", choices=sorted(INITIALIZERS))
    p.add_argument("--size", type=int, default=224, help="centre-crop and resize to SIZE (0: keep the original size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--target-psnr", type=float, default=None, help="stop an image once it reaches this PSNR")
    p.add_argument("--plateau", type=int, default=None, help="stop an image after this many iterations without gain")
    p.add_argument("--prune-lambda", type=float, default=0.0, help="L1 luminance penalty (times the mean over N)")
    p.add_argument("--prune-tau", type=float, default=None, help="prune Gaussians whose importance is under TAU")
    p.add_argument("--prune-fraction", type=float, default=None, help="prune this fraction (the least important)")
    p.add_argument("--prune-measure", default="energy", choices=list(MEASURES))
    p.add_argument("--finetune", type=int, default=None, help="iterations after pruning (default iters/5)")
    p.add_argument("--relocate-every", type=int, default=0,
                   help="every K iterations move the least important Gaussians to where the error is (0: off)")
    p.add_argument("--relocate-fraction", type=float, default=0.1, help="share of each image's Gaussians moved")
    p.add_argument("--ssim-weight", type=float, default=0.0)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine", "exp"])
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage precision")
    p.add_argument("--out", type=Path, default=Path("out/fit"))
    p.add_argument("--save-png", action="store_true", help="also write the reconstruction as NAME.png")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def go(a):
        if a.gaussians < 1:
            raise CliError(f"--gaussians must be >= 1, got {a.gaussians}")
        if a.batch_size < 1 or a.iters < 0:
            raise CliError("--batch-size must be >= 1 and --iters >= 0")
        if a.device == "cuda" and not torch.cuda.is_available():
            raise CliError("--device cuda: CUDA is not available on this machine")
        prunes = a.prune_tau is not None or a.prune_fraction is not None
        try:
            cfg = FitConfig(iters=a.iters, init=a.init, target_psnr=a.target_psnr, plateau_patience=a.plateau,
                            prune_lambda=a.prune_lambda, prune_tau=a.prune_tau, prune_fraction=a.prune_fraction,
                            prune_measure=a.prune_measure, ssim_weight=a.ssim_weight, schedule=a.schedule,
                            finetune_iters=(a.finetune if a.finetune is not None else (a.iters // 5 if prunes else 0)),
                            relocate_every=a.relocate_every, relocate_fraction=a.relocate_fraction,
                            backend=a.backend, device=a.device, seed=a.seed).check()
        except ValueError as e:
            raise CliError(str(e)) from None
        paths = list_images(a.inputs)
        if not paths:
            raise CliError(f"no images found in {', '.join(a.inputs)}")
        a.out.mkdir(parents=True, exist_ok=True)
        names = _names(paths)
        results, failures = [], []
        # load lazily batch by batch so a large folder never sits in memory at once
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="gsv fit", unit="img", disable=a.json or not sys.stderr.isatty())
        pending: dict[tuple, list] = {}

        def flush(key):
            items = pending.pop(key, [])
            if not items:
                return
            batch = torch.stack([t for _, _, t in items])
            t0 = time.perf_counter()
            try:
                res = fit_images(batch, a.gaussians, config=cfg, progress=not a.json and sys.stderr.isatty())
            except (RuntimeError, ValueError) as e:  # one failed batch must not cost the others
                for path, _, _ in items:
                    failures.append({"path": str(path), "error": f"fit failed: {e}"})
                bar.update(len(items))
                return
            secs = time.perf_counter() - t0
            for b, (path, name, img) in enumerate(items):
                s = res.splats[b]
                gsv_path = a.out / f"{name}.gsv"
                nbytes = save(gsv_path, s, dtype=a.dtype)
                m = dict(res.metrics[b])
                rec = {"path": str(path), "output": str(gsv_path), "psnr": m["psnr"], "ssim": m["ssim"],
                       "n_gaussians": m["n_gaussians"], "bytes": nbytes,
                       "compression_ratio": s.pixel_bytes() / nbytes, "iterations": m["iterations"],
                       "seconds": secs / len(items), "height": s.height, "width": s.width,
                       "pruned": m["pruned"], "stopped": m["stopped"]}
                if a.save_png:
                    png = a.out / f"{name}.png"
                    save_png(render(s, backend=a.backend)[0], png)
                    rec["png"] = str(png)
                results.append(rec)
            bar.update(len(items))

        for path, name in zip(paths, names):
            try:
                img = load_image(path, size=a.size or None)
            except ImageLoadError as e:
                failures.append({"path": str(path), "error": str(e)})
                bar.update(1)
                continue
            key = tuple(img.shape[-2:])
            pending.setdefault(key, []).append((path, name, img))
            if len(pending[key]) >= a.batch_size:
                flush(key)
        for key in list(pending):
            flush(key)
        bar.close()
        order = {str(p): i for i, p in enumerate(paths)}
        results.sort(key=lambda r: order[r["path"]])
        summary = {"results": results, "failures": failures, "fitted": len(results), "failed": len(failures),
                   "config": {**{k: v for k, v in vars(cfg).items()}, "size": a.size, "dtype": a.dtype,
                              "gaussians": a.gaussians}}
        write_json(a.out / "results.json", summary)
        lines = [f"{Path(r['path']).name}: {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, N={r['n_gaussians']}, "
                 f"{r['bytes']} bytes ({r['compression_ratio']:.2f}x), {r['iterations']} it" for r in results]
        lines += [f"FAILED {f['error']}" for f in failures]
        lines.append(f"fitted {len(results)}, failed {len(failures)}; wrote {a.out}/")
        emit(summary, a.json, "\n".join(lines))
        return 0 if results or not failures else 1
    return run("fit", go, args)
