"""gsv bench fit: fitting quality and speed (library code in gaussianvision.apps.bench.fit)."""
from __future__ import annotations

from pathlib import Path

from gaussianvision.apps.bench.fit import KODAK_DIR, FitBenchConfig, run_fit_bench, to_markdown
from gaussianvision.apps.cli.bench_args import check_pixels, file_name, name_list
from gaussianvision.apps.cli.command import (CliError, check_out_folder, emit, parser, path_arg, run, whole, whole_list,
                                             write_json, write_text)


def _check_counts(a, size: int) -> None:
    """What the numbers cannot tell argparse: photos available, Gaussians within the photos' pixels."""
    from gaussianvision.data.photos import PHOTO_NAMES
    if a.photos is not None and a.photos > len(PHOTO_NAMES):  # regression: 100 ran the 8 there are, silently
        raise CliError(f"--photos {a.photos}: there are {len(PHOTO_NAMES)} bundled photos")
    if a.checkpoints and max(a.checkpoints) < 1:  # regression: a ZeroDivisionError traceback from the curves
        raise CliError(f"--checkpoints {','.join(map(str, a.checkpoints))}: the last must be >= 1 (the curves are "
                       "timed per iteration)")
    where = f" (the bench fits the photos at {size}x{size})"  # regression: --ns 60000 at 224x224 ran
    check_pixels([(n, f"--ns {n}") for n in a.ns or ()], size, size, where)
    check_pixels([(n, f"--prune-n {n}") for n in ([a.prune_n] if a.prune_n else [])], size, size, where)


def main(argv=None) -> int:
    p = parser("bench fit", "PSNR vs iterations per N and init, throughput, float16 cost, pruning sweep, "
                            "naive dense baseline and Kodak. Writes fit.json and fit.md (fit_quick.* with --quick).")
    p.add_argument("--out", type=path_arg, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="a few minutes on a 2-core machine (2.5 min at load 1.2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto")
    p.add_argument("--ns", type=whole_list(1), default=None, help="comma-separated N values (default 400,900,1600,3136)")
    p.add_argument("--checkpoints", type=whole_list(0), default=None, help="comma-separated iterations (default 0,...,2000)")
    p.add_argument("--inits", default=None, help="comma-separated initializers (default grid,content,random)")
    p.add_argument("--prune-fractions", default=None, help="comma-separated fractions for the pruning sweep")
    p.add_argument("--prune-finetune", type=whole(0), default=None)
    p.add_argument("--naive-iters", type=whole(1), default=None)
    p.add_argument("--photos", type=whole(1), default=None, help="how many bundled photos (default 8)")
    p.add_argument("--speed-images", type=whole(1), default=None)
    p.add_argument("--speed-iters", type=whole(0), default=None)
    p.add_argument("--prune-n", type=whole(1), default=None)
    p.add_argument("--prune-iters", type=whole(0), default=None)
    p.add_argument("--kodak-dir", default=str(KODAK_DIR))
    p.add_argument("--kodak-limit", type=whole(1), default=None)
    p.add_argument("--kodak-iters", type=whole(0), default=None)
    p.add_argument("--sections", default=None, help="subset of ttq,curves,speed,naive,pruning,kodak; ttq_kodak (time "
                                                    "to 32.05 dB on full-size Kodak, 9000 Gaussians) is not in the default set")
    p.add_argument("--methods", default=None, help="comma-separated time-to-quality methods (bench/ttq.py METHODS; "
                                                   "default adam,adam+colors,c2f+colors,random,fast,balanced,fast+learned,balanced+learned)")
    p.add_argument("--name", type=file_name, default=None,
                   help="output file stem, a plain file name written in --out (default fit or fit_quick)")
    args = p.parse_args(argv)

    def go(a):
        if a.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise CliError("--device cuda: CUDA is not available on this machine")
        from gaussianvision.apps.cli.render import check_backend
        check_backend(a.backend)  # regression: an unknown backend was a traceback at the first fit
        _check_counts(a, FitBenchConfig.size)
        kw = {"device": a.device, "backend": a.backend, "kodak_dir": a.kodak_dir}
        if a.inits is not None:  # checked up front (regression: a traceback at the curves, after minutes of ttq)
            from gaussianvision.fit import INITIALIZERS
            kw["inits"] = tuple(name_list(a.inits, "--inits"))
            unknown = sorted(set(kw["inits"]) - set(INITIALIZERS))
            if unknown:
                raise CliError(f"--inits: unknown {', '.join(unknown)}; choose from {', '.join(INITIALIZERS)}")
        if a.prune_fractions:
            try:
                kw["prune_fractions"] = tuple(float(v) for v in a.prune_fractions.split(","))
                if not all(0.0 <= v <= 1.0 for v in kw["prune_fractions"]):
                    raise ValueError
            except ValueError:
                raise CliError(f"--prune-fractions: expected numbers from 0 to 1, got {a.prune_fractions!r}") from None
        for k in ("naive_iters", "prune_finetune", "photos", "speed_images", "speed_iters", "prune_n", "prune_iters", "kodak_limit", "kodak_iters"):
            if getattr(a, k) is not None:
                kw[k] = getattr(a, k)
        if a.ns:
            kw["ns"] = tuple(a.ns)
        if a.checkpoints:
            kw["checkpoints"] = tuple(sorted(set(a.checkpoints)))  # regression: 5,2 made unsorted columns
        if a.methods is not None:
            from gaussianvision.apps.bench.ttq import METHODS
            kw["ttq_methods"] = tuple(name_list(a.methods, "--methods"))
            unknown = sorted(set(kw["ttq_methods"]) - set(METHODS))
            if unknown:
                raise CliError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if a.sections is not None:
            kw["sections"] = tuple(name_list(a.sections, "--sections"))
            from gaussianvision.apps.bench.fit import SECTIONS
            unknown = [x for x in kw["sections"] if x not in SECTIONS]
            if unknown:  # regression: --sections bogus ran nothing and said it wrote the results
                raise CliError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
        cfg = FitBenchConfig.quick_preset(**kw) if a.quick else FitBenchConfig(**kw)
        check_out_folder(a.out)
        res = run_fit_bench(cfg, log=(lambda *_: None) if a.json else print)
        stem = a.name or ("fit_quick" if a.quick else "fit")
        write_json(a.out / f"{stem}.json", res)
        md = to_markdown(res)
        write_text(a.out / f"{stem}.md", md + "\n")
        emit(res, a.json, md + f"\nwrote {a.out / (stem + '.json')} and {a.out / (stem + '.md')}")
    return run("bench fit", go, args)
