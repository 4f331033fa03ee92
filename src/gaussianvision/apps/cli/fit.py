"""gsv fit INPUT... --gaussians N: fit image files or folders to splats, one .gsv per image.

Bad options and output folders are refused before any work (one line, exit code 2). Bad
inputs (missing, empty, corrupt, not images), and images whose files cannot be written, are reported
with their reason and skipped; the rest are fitted in batches. Writes OUT/NAME.gsv (and OUT/NAME.png with --save-png) plus
OUT/results.json: {"results": [per image], "failures": [...], "config": {...}}; per image,
`seconds` is its share of its batch (`batch_seconds` / `batch_size`). Exit code 0 when at least
one image was fitted, 2 when every input failed (after the report) or on a bad option.
The batching, fitting and encoding are the library's FitStream (fit/stream.py).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

from gaussianvision.atomic import write_atomic
from gaussianvision.data.images import MAX_SIZE, MIN_SIDE, ImageLoadError, empty_note, list_images, load_image, skipped_note
from gaussianvision.data.shards import show
from gaussianvision.fit.config import SCHEDULES
from gaussianvision.fit.metrics import PSNR_CAP, SSIM_WINDOW
from gaussianvision.fit import INITIALIZERS, MEASURES, Encoding, FitConfig, FitItem, FitStream
from gaussianvision.fit.stream import default_batch_pixels, default_batch_size
from gaussianvision.raster import render
from gaussianvision.apps.cli.command import (CliError, add_progressive_options, add_speed_options, check_at_least,
                                             check_device, check_encoding, check_gaussians, check_out_folder,
                                             check_progressive_order, emit, fit_option, flag_message, parser, path_arg,
                                             path_text, run, write_json)
from gaussianvision.apps.cli.render import check_backend, is_render, write_png

MIN_SIZE = SSIM_WINDOW  # pixels a side: the SSIM window the fit reports with
NAME_BYTES = 200  # an output stem's UTF-8 bytes at most: NAME.gsv and its temporary name fit the usual 255


def _names(paths: list[Path], out: Path | None = None, exts: tuple = (".gsv",)) -> list[str]:
    """Output stems: unique (case-insensitively) when two folders hold files of the same name or a
    suffixed name is itself an input's stem (a/x.png, b/x.png, x_1.png: x, x_2, x_1), and never such
    that NAME + one of `exts` is an input in the output folder `out` (which it would overwrite)."""
    def key(text: str) -> str:
        return text.casefold()
    taken = {key(p.stem) for p in paths}  # every input's own stem is reserved for it first
    if out is not None:
        try:
            here = out.resolve()
            taken |= {key(p.name) for p in paths if p.parent.resolve() == here}
        except OSError:
            pass
    used: set[str] = set()
    names = []
    for p in paths:
        stem = p.stem.encode("utf-8", "surrogateescape")[:NAME_BYTES].decode("utf-8", "ignore") or "image"
        name, k = stem, 0
        while key(name) in used or (k and key(name) in taken) or any(key(name + e) in taken for e in exts):
            k += 1
            name = f"{stem}_{k}"
        used.add(key(name))
        names.append(name)
    return names


def _parser():
    p = parser("fit", "Fit images (files or folders) to 2D Gaussian splats; one .gsv per image.")
    p.add_argument("inputs", nargs="+", type=path_text, help="image files or folders (searched recursively)")
    p.add_argument("--gaussians", "-n", type=int, required=True, help="Gaussians per image")
    add_speed_options(p)
    p.add_argument("--iters", type=int, default=None, help="iterations (default 500, or the preset's)")
    p.add_argument("--init", default="content", choices=sorted(INITIALIZERS))
    p.add_argument("--size", default="224", help="side in pixels of the square centre crop the images are "
                   f"resized to (at least {MIN_SIZE}; 0: keep each image's own width and height)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images fitted together (default 16, fewer above 512 px; with --device cuda 512 at 224 px, "
                        "fewer for larger sizes)")
    p.add_argument("--plateau", type=int, default=None, help="stop an image after this many iterations without gain")
    p.add_argument("--prune-lambda", type=float, default=0.0, help="L1 luminance penalty (times the mean over N)")
    p.add_argument("--prune-tau", type=float, default=None, help="prune Gaussians whose importance is under TAU")
    p.add_argument("--prune-fraction", type=float, default=None, help="prune this fraction (the least important)")
    p.add_argument("--prune-measure", default=None, choices=list(MEASURES),
                   help="with --prune-tau or --prune-fraction: what ranks the Gaussians (default energy)")
    p.add_argument("--finetune", type=int, default=None, help="iterations after pruning (default iters/5)")
    p.add_argument("--relocate-every", type=int, default=None,
                   help="every K iterations move the least important Gaussians to where the error is "
                        "(0: off; default 0, or the preset's)")
    p.add_argument("--relocate-fraction", type=float, default=None,
                   help="with relocation: share of each image's Gaussians moved (default 0.1)")
    p.add_argument("--ssim-weight", type=float, default=0.0)
    p.add_argument("--schedule", default="constant", choices=list(SCHEDULES))
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage precision")
    add_progressive_options(p, "Gaussians of each image")
    p.add_argument("--out", type=path_arg, default=Path("out/fit"), help="output folder")
    p.add_argument("--save-png", action="store_true", help="also write the reconstruction as NAME.png")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto", help="render backend: auto, reference, numba or triton")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (--json implies it)")
    p.add_argument("--fit-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other fit_images option, repeatable (e.g. color_solve=8, coarse_fraction=0.6); "
                        "the options with a flag of their own are set by their flag")
    return p


_FLAG_OF = {"plateau_patience": "--plateau", "finetune_iters": "--finetune"}  # the others: --name-with-dashes


def _size(text: str) -> int:
    try:
        size = int(text)
    except ValueError:
        size = -1
    if size != 0 and not MIN_SIZE <= size <= MAX_SIZE:
        raise CliError(f"--size must be 0 (keep the original size) or one side of {MIN_SIZE} to {MAX_SIZE} pixels "
                       f"(the fit crops squares; {MAX_SIZE} squared is the largest image read), got {text!r}")
    return size


def _config(a) -> FitConfig:
    """The checked FitConfig of the options, or a CliError naming the bad one (and --batch-size's default)."""
    a.batch_pixels = None  # a given --batch-size is kept as given
    if a.batch_size is None:
        a.batch_size = default_batch_size(a.device, a.size)
        a.batch_pixels = default_batch_pixels(a.device)  # --size 0: large photos in smaller batches
    # each named with its value (regression: one message for two flags)
    check_at_least(("--gaussians", a.gaussians, 1), ("--batch-size", a.batch_size, 1), ("--iters", a.iters, 0))
    check_gaussians(a.gaussians, a.size)
    check_progressive_order(a)
    check_device(a.device)
    check_backend(a.backend)
    prunes = a.prune_tau is not None or a.prune_fraction is not None
    # set only when given, so that a preset's settings apply
    given = dict(preset=a.preset, budget_ms=a.budget_ms, iters=a.iters, relocate_every=a.relocate_every,
                 prune_measure=a.prune_measure, relocate_fraction=a.relocate_fraction)
    flags = dict({k: v for k, v in given.items() if v is not None},
                 init=a.init, target_psnr=a.target_psnr, plateau_patience=a.plateau,
                 prune_lambda=a.prune_lambda, prune_tau=a.prune_tau, prune_fraction=a.prune_fraction,
                 ssim_weight=a.ssim_weight, schedule=a.schedule, backend=a.backend, device=a.device, seed=a.seed)
    if a.finetune is not None:
        flags["finetune_iters"] = a.finetune
    extra = dict(fit_option(x) for x in a.fit_option)
    by_flag = {k: _FLAG_OF.get(k, "--" + k.replace("_", "-")) for k in (*flags, *given)}
    own = next((k for k in extra if k in by_flag), None)
    if own:  # one way to set each option: its flag
        raise CliError(f"--fit-option {own}=...: give it as {by_flag[own]}")
    try:
        cfg = FitConfig.from_options({**flags, **extra})
        if prunes and a.finetune is None and "finetune_iters" not in extra:
            cfg = FitConfig.from_options({**flags, **extra, "finetune_iters": cfg.iters // 5})
    except ValueError as e:
        raise CliError(flag_message(str(e), by_flag)) from None
    check_encoding(Encoding(progressive=a.progressive, order=a.progressive_order), cfg, by_flag)
    _check_effect(a, cfg, extra)
    return cfg


def _check_effect(a, cfg: FitConfig, extra: dict) -> None:
    """A setting that would change nothing in this fit, given by its flag or as a --fit-option (extra), is
    one CliError line (regression: --finetune, --prune-measure and --relocate-fraction were accepted and
    ignored without pruning or relocation)."""
    prune, relocate = "--prune-tau or --prune-fraction", "relocation (--relocate-every, or a --preset that relocates)"
    given = {"finetune_iters": ("--finetune", a.finetune), "prune_measure": ("--prune-measure", a.prune_measure),
             "relocate_fraction": ("--relocate-fraction", a.relocate_fraction)}
    for key, effect, needs in (("finetune_iters", cfg.prunes, prune), ("prune_measure", cfg.prunes, prune),
                               ("relocate_fraction", cfg.relocate_every > 0, relocate),
                               ("relocate_until", cfg.relocate_every > 0, relocate)):
        flag, value = given.get(key, (None, None))
        named = f"{flag} {value}" if value is not None else (
            f"--fit-option {key}={extra[key]}" if key in extra else None)
        if named and not effect:
            raise CliError(f"{named}: has no effect without {needs}")


def _inputs(inputs: list[str]) -> tuple[list[Path], int]:
    """(the images to fit, how many were skipped): files as named, folders' images less the renders gsv
    wrote there (a rerun of `gsv fit DIR --out DIR --save-png` fitted its own reconstructions); the
    skipped ones are said. (A folder's own path is never one of its images: `named` needs no is_dir.)"""
    named = {Path(x) for x in inputs}
    paths, renders, seen, again = [], [], set(), 0
    skipped, empty = [], []
    found = list_images(inputs, skipped, empty)
    if empty and len(empty) < len(inputs):  # regression: an empty folder beside other inputs went unsaid
        print(f"gsv fit: {empty_note(empty)}", file=sys.stderr)
    set_aside: dict = {}  # identity -> the render met first, while no naming of it was named
    for p in found:
        where = _identity(p)  # a/x.png, ./a/x.png, a folder's a/x.png, a link to it: one input
        if where in seen:  # regression: fitted once per naming, its lines out of order
            again += 1
            if p in named and where in set_aside:  # a render named explicitly is fitted (review finding)
                first = set_aside.pop(where)
                renders.remove(first)
                paths.append(first)
            continue
        seen.add(where)
        if p not in named and is_render(p):
            renders.append(p)
            set_aside[where] = p
        else:
            paths.append(p)
    if (note := skipped_note(skipped)):
        print(f"gsv fit: {note}", file=sys.stderr)
    if again:
        print(f"gsv fit: skipped {again} repeat{'s' if again != 1 else ''} of inputs named before (each image is "
              f"fitted once)", file=sys.stderr)
    if renders:
        print(f"gsv fit: skipped {len(renders)} render{'s' if len(renders) != 1 else ''} of splats that gsv wrote "
              f"(e.g. {show(str(renders[0]), None)}); name a file to fit it anyway", file=sys.stderr)
    return paths, len(renders)


def _identity(p: Path):
    """What makes two inputs one image: the file itself (device and inode, links followed: a folder given
    by a symlink and by its own path, or a link to an image beside it, was fitted twice (new-user trial)),
    or where it cannot be read, its normalized path (its load then says why)."""
    try:
        st = os.stat(p)
    except OSError:
        st = None
    if st is not None and st.st_ino:  # (a file system without inode numbers gives 0: by path there)
        return st.st_dev, st.st_ino
    return os.path.normpath(os.path.abspath(p))


def _out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is not a folder (fit writes NAME.gsv files and results.json into it)")
    check_out_folder(out)  # regression: a folder it could not write into failed after every fit


def _images(a, paths: list[Path], failures: list[dict], bar):
    """(path, name), image for each input that loads, in order; the others go to `failures`."""
    for path, name in zip(paths, _names(paths, a.out, (".gsv", ".png") if a.save_png else (".gsv",))):
        try:
            img = load_image(path, size=a.size or None, min_side=MIN_SIDE if a.size else MIN_SIZE)
        except ImageLoadError as e:
            failures.append({"path": str(path), "error": str(e)})
            bar.update(1)
            continue
        yield (path, name), img


UNWRITTEN = "fitted, but "  # a failure's reason where the image was fitted and its file could not be written


def _write(a, item: FitItem) -> dict:
    """NAME.gsv (and NAME.png) of a fitted image; its record for results.json. OSError naming the file where
    one cannot be written: that image's failure (regression, new-user trial: a folder named like one output
    ended the run, the other images' files and results.json unwritten)."""
    (path, name), s, m = item.key, item.splats, item.metrics
    gsv_path = a.out / f"{name}.gsv"
    try:
        write_atomic(gsv_path, lambda tmp: tmp.write_bytes(item.data))
    except OSError as e:
        raise OSError(f"cannot write {gsv_path} ({e.strerror or e})") from None
    nbytes = len(item.data)
    rec = {"path": str(path), "output": str(gsv_path), "psnr": m["psnr"], "ssim": m["ssim"],
           "n_gaussians": m["n_gaussians"], "bytes": nbytes, "compression_ratio": s.pixel_bytes() / nbytes,
           "iterations": m["iterations"], "seconds": m["seconds"], "batch_seconds": m["batch_seconds"],
           "batch_size": item.batch_size, "height": s.height, "width": s.width, "pruned": m["pruned"],
           "stopped": m["stopped"]}
    if a.save_png:
        rec["png"] = str(a.out / f"{name}.png")
        try:
            write_png(render(s, backend=a.backend)[0], Path(rec["png"]))
        except CliError as e:  # write_png's one line ("cannot write ..."): the .gsv goes too, no file without a record
            gsv_path.unlink(missing_ok=True)
            raise OSError(str(e)) from None
    return rec


def _fit_all(a, cfg: FitConfig, paths: list[Path], bar, progress: bool) -> tuple[list[dict], list[dict]]:
    """Fit the images through the library's FitStream (batches of one size, written as each batch
    is done); (results, failures)."""
    stream = FitStream(a.gaussians, cfg, batch_size=a.batch_size, batch_pixels=a.batch_pixels, ordered=False,
                       encoding=Encoding(dtype=a.dtype, progressive=a.progressive, order=a.progressive_order),
                       progress=progress)
    results: list[dict] = []
    failures: list[dict] = []
    for item in stream(_images(a, paths, failures, bar)):
        path = item.key[0]
        if item.ok:
            try:
                results.append(_write(a, item))
            except OSError as e:
                failures.append({"path": str(path), "error": f"{path}: {UNWRITTEN}{e}"})
        elif item.exception is not None:
            why = str(item.exception).removeprefix("fit_images: ")  # the API's name is no news to a CLI user
            failures.append({"path": str(path), "error": f"{path}: fit failed: {why}"})
        else:
            failures.append({"path": str(path), "error": f"{path}: {item.error}"})
        bar.update(1)
    return results, failures


def _reached(results: list[dict], cfg: FitConfig) -> dict:
    """What the fit reached against what was asked (--target-psnr, --budget-ms): mean and lowest
    PSNR, mean wall ms per image (the batch's time / its images), how many stopped and why."""
    stopped: dict[str, int] = {}
    for x in results:
        if x["stopped"]:
            stopped[x["stopped"]] = stopped.get(x["stopped"], 0) + 1
    psnrs = [x["psnr"] for x in results]
    out = {"mean_psnr": sum(psnrs) / len(psnrs), "min_psnr": min(psnrs),
           "mean_ms": 1000 * sum(x["seconds"] for x in results) / len(results), "stopped": stopped,
           "target_psnr": cfg.target_psnr, "budget_ms": cfg.budget_ms}
    if cfg.target_psnr is not None:
        out["reached_target"] = sum(p >= cfg.target_psnr for p in psnrs)
    out["exact"] = sum(p >= PSNR_CAP - 1e-3 for p in psnrs)  # reported at the cap, in the mean as such
    if cfg.budget_ms is not None:  # what no iteration count can fix: the start and the final metrics alone
        over = [x for x in results if 1000 * x["seconds"] > cfg.budget_ms]
        out["over_budget"] = len(over)
        out["over_budget_at_start"] = sum(x["iterations"] == 0 for x in over)
    return out


def _label(path: str, names: Counter) -> str:
    """A result's name in the printed lines: the file's name, or its path where another result has that name
    (new-user trial: a/cat.png and b/cat.png printed two lines 'cat.png: ...', written as cat.gsv and cat_1.gsv)."""
    name = Path(path).name
    return path if names[name] > 1 else name


def _report(a, cfg: FitConfig, paths: list[Path], results: list[dict], failures: list[dict]) -> int:
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda x: order[x["path"]])
    summary = {"results": results, "failures": failures, "fitted": len(results), "failed": len(failures),
               "config": {**vars(cfg), "preset": a.preset, "size": a.size, "dtype": a.dtype, "gaussians": a.gaussians}}
    if not results:  # still one JSON document on stdout, the reason in it and on stderr
        unwritten = sum(f["error"].startswith(f"{f['path']}: {UNWRITTEN}") for f in failures)
        summary["error"] = (f"every input failed ({len(failures)} of {len(paths)}); nothing was fitted" if not unwritten
                            else f"every input failed ({len(failures)} of {len(paths)}; {unwritten} fitted but not "
                                 f"written); nothing was written")
    else:
        summary["reached"] = _reached(results, cfg)
    try:
        write_json(a.out / "results.json", summary)
    except OSError as e:
        raise CliError(f"cannot write {a.out / 'results.json'} ({e.strerror or e})") from None
    names = Counter(Path(p).name for p in paths)  # photos of one name in two folders (fitted or not): their paths
    lines = [f"{show(_label(x['path'], names), None)}: {x['psnr']:.2f} dB, SSIM {x['ssim']:.3f}, N={x['n_gaussians']}, "
             f"{x['bytes']} bytes ({x['compression_ratio']:.2f}x), {x['iterations']} it, {1000 * x['seconds']:.0f} ms, "
             f"{x['width']}x{x['height']}" + (f" (stopped: {x['stopped']})" if x["stopped"] else "")
             for x in results]
    lines += [f"FAILED {show(f['error'], None)}" for f in failures]  # one line each, whatever the names hold
    if results:
        reached = summary["reached"]
        lines.append(f"reached: mean {reached['mean_psnr']:.2f} dB (min {reached['min_psnr']:.2f}) in "
                     f"{reached['mean_ms']:.0f} ms per image" + (
                         f"; {reached['reached_target']} of {len(results)} at or above {cfg.target_psnr:g} dB"
                         if cfg.target_psnr is not None else "") + "".join(
                         f"; {v} stopped at the {k}" for k, v in reached["stopped"].items()) + (
                         f"; {reached['exact']} exact (counted at {PSNR_CAP:g} dB)" if reached["exact"] else ""))
        if reached.get("over_budget"):
            why = ("the initialization and the final metrics alone take longer at this size and N; raise --budget-ms "
                   "or lower --gaussians or --size" if reached["over_budget_at_start"] == reached["over_budget"] else
                   "each iteration's time is foreseen from the one before (the first one's from the initial color "
                   "solve, or from a timed render): a budget of a few iterations can be passed by one")
            lines.append(f"note: {reached['over_budget']} of {len(results)} took over --budget-ms {cfg.budget_ms:g}: {why}")
    lines.append(f"fitted {len(results)}, failed {len(failures)}; wrote {show(str(a.out), None)}/")
    emit(summary, a.json, "\n".join(lines))
    if "error" in summary:
        print(f"gsv fit: {summary['error']}", file=sys.stderr)
        return 2
    return 0


def _after_dashes(argv: list[str]) -> list[str]:
    """The inputs after `--` that look like options spelled as the relative paths they are (./-x.png):
    argparse's intermixed parse loses them after `--` (regression: `gsv fit -- -x.png` said no inputs)."""
    if "--" not in argv:
        return argv
    cut = argv.index("--")
    return argv[:cut] + [os.path.join(".", x) if x.startswith("-") else x for x in argv[cut + 1:]]


def main(argv=None) -> int:
    argv = _after_dashes(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_intermixed_args(argv)  # inputs before, between or after the options

    def go(a):
        a.size = _size(a.size)
        cfg = _config(a)
        paths, skipped = _inputs(a.inputs)
        if not paths:
            raise CliError(f"no images found in {', '.join(a.inputs)}" + (
                " (only renders gsv wrote, which are skipped: name them to fit them)" if skipped else ""))
        _out_folder(a.out)
        from tqdm import tqdm
        progress = not (a.json or a.no_progress)
        with tqdm(total=len(paths), desc="gsv fit", unit="img", disable=not progress) as bar:
            results, failures = _fit_all(a, cfg, paths, bar, progress)
        return _report(a, cfg, paths, results, failures)
    return run("fit", go, args)
