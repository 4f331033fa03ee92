"""gsv bench wire: the RGB teacher on JPEG / WebP vs the GS encoder on splats, at equal bytes per image."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from gaussianvision.apps.cli.bench_args import check_pixels, name_list
from gaussianvision.apps.cli.bench_load import machine, write_markdown
from gaussianvision.apps.cli.command import (CliError, check_out_folder, emit, parser, path_arg, run, whole_list,
                                             write_json)


def _columns(text: str | None, quick: bool) -> dict:
    from gaussianvision.apps.bench.wire import COLUMNS
    names = name_list(text, "--columns") or [c for c in COLUMNS if not (quick and c == "splats fast")]
    bad = [c for c in names if c not in COLUMNS]
    if bad:
        raise CliError(f"--columns: unknown {bad}; choose from {', '.join(COLUMNS)}")
    return {c: COLUMNS[c] for c in names}


def _check_budgets(n_list: list[int], columns: dict, photos: bool, size: int) -> None:
    """Every budget's Gaussians within the size x size images' pixels, before any work (regression: a
    ValueError traceback from the fit). The quantized column and the photos fit the budget's quantized N too."""
    from gaussianvision.apps.bench.wire import budgets
    for b in budgets(n_list):
        asked = [(b["n"], f"--n {b['n']}")]
        if photos or "splats quantized" in columns:
            asked.append((b["n_quantized"], f"--n {b['n']} (its {b['bytes']:,} B quantized file: {b['n_quantized']} "
                                            "Gaussians)"))
        check_pixels(asked, size, size)


def _save(a, res: dict, stem: str) -> None:
    """The numbers first (nothing after can lose them), then the reading, the plot and the table."""
    from gaussianvision.apps.bench.wire import markdown, plot, verdict
    write_json(a.out / f"{stem}.json", res)
    res["verdict"] = verdict(res)
    write_json(a.out / f"{stem}.json", res)
    plot(res, a.out / f"{stem}.png")
    body = markdown(res) + "\n" + res["verdict"] + f"\n![accuracy and PSNR against bytes]({stem}.png)\n"
    write_markdown(a.out / f"{stem}.md", "gsv bench wire", res["env"], body)


def main(argv=None) -> int:
    p = parser("bench wire", "At equal bytes per image: the demo's RGB teacher on JPEG / WebP images vs its GS "
                             "encoder on splats (float16, fast preset, quantized, progressive prefix); zero-shot accuracy and PSNR on "
                             "the demo's world, PSNR on the bundled photos. Needs a finished gsv demo.")
    p.add_argument("--demo", type=path_arg, default=Path("out/demo"), help="a finished gsv demo folder")
    p.add_argument("--out", type=path_arg, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="budgets N=19,76, no fast-preset column, 4 photos")
    p.add_argument("--n", type=whole_list(1), default=None, help="budgets as N Gaussians (float16 file sizes), default 19,38,57,76")
    p.add_argument("--columns", default=None, help="comma-separated: JPEG,WEBP,splats float16,splats fast,"
                                                   "splats quantized,splats progressive (default all; splats progressive: "
                                                   "prefixes of one nested fit at the largest N)")
    p.add_argument("--no-photos", action="store_true", help="the world only")
    p.add_argument("--work", type=path_arg, default=None,
                   help="working folder (codec copies, splat caches; reused by a rerun); default a temporary one")
    args = p.parse_args(argv)

    def go(a):
        from gaussianvision.apps.bench.wire import BUDGET_N, WireError, load_demo, markdown, run_wire_bench
        n_list = a.n if a.n else ([19, 76] if a.quick else list(BUDGET_N))
        columns = _columns(a.columns, a.quick)
        log = (lambda m: None) if a.json else (lambda m: print(f"  {m}", file=sys.stderr))
        try:
            ctx = load_demo(a.demo)
            _check_budgets(n_list, columns, not a.no_photos, ctx.size)
            check_out_folder(a.out)
            with tempfile.TemporaryDirectory(prefix="gsv-bench-wire-") as tmp:
                ctx.work = a.work or Path(tmp)
                res = run_wire_bench(ctx, n_list, columns, photos=not a.no_photos,
                                     photo_names=("astronaut", "chelsea", "coffee", "rocket") if a.quick else None,
                                     log=log)
        except WireError as e:
            raise CliError(str(e)) from None
        res["env"], res["quick"] = machine(), bool(a.quick)
        _save(a, res, "wire_quick" if a.quick else "wire")
        emit(res, a.json, markdown(res) + "\n" + res["verdict"])
    return run("bench wire", go, args)
