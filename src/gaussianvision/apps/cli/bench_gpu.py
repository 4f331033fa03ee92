"""gsv bench gpu: the one-shot GPU check (make gpu-check); library code in gaussianvision.apps.bench.gpu_check."""
from __future__ import annotations

import json
import os
from pathlib import Path

from gaussianvision.apps.cli.command import CliError, emit, key_value, parser, path_arg, run, write_json, write_text

RESULTS = Path("benchmarks/results")  # where results go without --out
EPILOG = """\
On a GPU machine with nothing installed but torch and triton (no network, no pip install):
  python3 benchmarks/gpu_check.py            # or: make gpu-check
writes benchmarks/results/gpu.json and gpu.md (and copies them into $OUT when that is set).
The tower step needs open_clip: run `make gpu-wheels` where PyPI is reachable and bring the
repository's .whl folder along; its wheels are installed into a temporary folder for the run.
Afterwards, with the files back in benchmarks/results:
  gsv bench gpu --render benchmarks/results/gpu.json --docs docs/gpu.md
rewrites gpu.md and the results table of docs/gpu.md from the JSON. After a rerun of some steps
(--steps ttq,fit), keep both results and merge them, each step from the last run that has it:
  gsv bench gpu --render run1.json run2.json --out benchmarks/results --docs docs/gpu.md
"""


def _limits(items: list[str], cfg) -> dict:
    limits = dict(cfg.limits)
    for item in items:
        step, value = key_value(item, "--limit", "STEP=SECONDS", "fit=300")
        if step not in limits:
            raise CliError(f"--limit {item!r}: unknown step {step!r}; the steps: {', '.join(limits)}")
        try:
            limits[step] = float(value)
        except ValueError:
            raise CliError(f"--limit {item!r}: {value!r} is not a number of seconds") from None
        if limits[step] <= 0:
            raise CliError(f"--limit {item!r}: the limit must be positive")
    return limits


def _read_result(path: str) -> dict:
    from gaussianvision.apps.bench.gpu_report import to_markdown
    try:
        res = json.loads(Path(path).read_text())
        to_markdown(res)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CliError(f"--render {path}: not a gsv bench gpu result ({type(e).__name__}: {e})") from None
    return res


def _render(a) -> int:
    from gaussianvision.apps.bench.gpu_report import fill_docs, merge, to_markdown
    runs = [_read_result(p) for p in a.render]
    if len(runs) == 1:
        # beside the JSON, or in --out when given (regression: --out was ignored and the input's folder written)
        src = Path(a.render[0])
        res, target = runs[0], (src.with_suffix(".md") if a.out is None else Path(a.out) / f"{src.stem}.md")
    else:
        try:
            res = merge(runs)
        except ValueError as e:
            raise CliError(f"--render: {e}") from None
        target = Path(a.out or RESULTS) / "gpu.md"
        write_json(target.with_suffix(".json"), res)
    if a.docs and res.get("mode") != "full":
        raise CliError(f"--docs: {a.render[-1]} is a --{res.get('mode')} run (CPU, small images: a check of the "
                       f"script); docs/gpu.md takes a full run's gpu.json")
    if a.docs and not (res.get("machine") or {}).get("gpu"):  # regression: a CPU run replaced the H200's table
        raise CliError(f"--docs: nothing in {a.render[-1]} was measured on a GPU; the docs' results are kept")
    md = to_markdown(res)
    write_text(target, md)
    files = ([str(target.with_suffix(".json"))] if len(runs) > 1 else []) + [str(target)]
    if a.docs:
        try:
            fill_docs(Path(a.docs), res)
        except (OSError, ValueError) as e:
            raise CliError(f"--docs: {e}") from None
        files.append(str(a.docs))
    emit({"files": files}, a.json, md + "\nwrote " + ", ".join(files))
    return 0


def _measure(a) -> int:
    from dataclasses import replace
    from gaussianvision.apps.bench.gpu_check import GpuCheckConfig, copy_to, run_gpu_check, with_steps
    from gaussianvision.apps.bench.gpu_report import to_markdown
    cfg = GpuCheckConfig.tiny_preset() if a.tiny else GpuCheckConfig()
    if a.device == "cuda":
        import torch
        if not torch.cuda.is_available():  # regression: accepted, every step then skipped, exit 0
            raise CliError("--device cuda: CUDA is not available on this machine; use --device cpu (--tiny checks "
                           "the script on a CPU)")
    if a.device:
        cfg = replace(cfg, device=a.device)
    if a.steps:
        try:
            cfg = with_steps(cfg, tuple(s.strip() for s in a.steps.split(",") if s.strip()))
        except ValueError as e:
            raise CliError(f"--steps: {e}") from None
    cfg = replace(cfg, limits=_limits(a.limit, cfg))
    res = run_gpu_check(cfg, log=(lambda *_: None) if a.json else print)
    stem = "gpu_tiny" if a.tiny else "gpu"
    out = a.out or RESULTS
    files = [out / f"{stem}.json", out / f"{stem}.md"]
    write_json(files[0], res)
    write_text(files[1], to_markdown(res))
    res["files"] = [str(f) for f in files] + copy_to(files, os.environ.get("OUT"))
    emit(res, a.json, to_markdown(res) + "\nwrote " + ", ".join(res["files"]))
    return 0


def main(argv=None) -> int:
    p = parser("bench gpu", "The GPU check: Triton parity on CUDA, the raster kernels' launch settings side by "
                            "side, time to quality, fitting throughput by batch and N (and on request the LIG-style "
                            "baseline and the towers' throughput), each step time-boxed.")
    p.epilog = EPILOG
    p.add_argument("--out", type=path_arg, default=None,
                   help=f"results folder (default: {RESULTS}; with one --render file: beside it)")
    p.add_argument("--tiny", action="store_true", help="every step on CPU with a few small images (a test of "
                                                       "the script; writes gpu_tiny.json / .md)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where the steps run (default cuda; cpu with --tiny)")
    p.add_argument("--steps", default=None, help="comma-separated steps of parity,kernels,ttq,fit,baseline,tower "
                                                 "(default parity,kernels,ttq,fit; --tiny: all six)")
    p.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS",
                   help="time limit of one step (repeatable; defaults parity 60, kernels 90, ttq 180, fit 90, "
                        "baseline 50, tower 50; with --tiny parity 120, kernels 60, ttq 60, fit 120, baseline 60, "
                        "tower 90)")
    p.add_argument("--render", default=None, nargs="+", metavar="GPU.json",
                   help="measure nothing: rewrite the .md beside this result (and --docs); several results "
                        "(a rerun of some steps) are merged, each step from the last run that has it, into "
                        "OUT/gpu.json and gpu.md")
    p.add_argument("--docs", default=None, metavar="DOCS.md", help="with --render: fill this file's results block")
    args = p.parse_args(argv)
    if args.docs and not args.render:
        p.error("--docs goes with --render")
    return run("bench gpu", _render if args.render else _measure, args)
