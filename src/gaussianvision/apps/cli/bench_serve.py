"""gsv bench serve: a bounded load test of gsv serve on 127.0.0.1 (requests/s, latency, batch sizes)."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from gaussianvision.apps.cli.bench_load import machine, write_markdown
from gaussianvision.apps.cli.bench_args import check_pixels
from gaussianvision.apps.cli.command import (CliError, check_device, check_out_folder, emit, parser, path_arg, positive,
                                             run, whole, write_json)


def _trained_n(folder: str | Path) -> int | None:
    """The N a demo model folder (stage2_nN) was trained at; None for any other name."""
    m = re.fullmatch(r"stage2_n(\d+)", Path(folder).name)
    return int(m.group(1)) if m else None


def _model(model: str | None, demo: Path) -> str:
    if model:
        return model
    found = sorted(demo.glob("stage2_n*/gsclip.safetensors"),  # by N, not by name (stage2_n100 after stage2_n76)
                   key=lambda p: _trained_n(p.parent) or 0)
    if not found:
        raise CliError(f"{demo}: no trained GS model there (stage2_n*/); run gsv demo first, or give --model")
    return str(found[-1].parent)


def _gaussians(given: int | None, model: str) -> int:
    """Gaussians per payload: as given, else the N a demo model folder was trained at (stage2_nN), else 76
    (regression: a `gsv demo --quick` model, trained at N=64, was sent N=76 payloads)."""
    if given is not None:
        return given
    n = _trained_n(model)
    return 76 if n is None else n


def _windows(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"--windows must be comma-separated milliseconds, got {text!r}") from None
    # the server's own limits (ServeSettings.check; regression: 100000 was its ValueError traceback)
    if not vals or not all(math.isfinite(v) and 0 <= v <= 10_000 for v in vals):
        raise CliError(f"--windows must be milliseconds from 0 to 10000, got {text!r}")
    return vals


def main(argv=None) -> int:
    p = parser("bench serve", "A bounded load test: gsv serve on 127.0.0.1, N client threads for a fixed time "
                              "sending .gsv payloads to /embed, batching windows side by side.")
    p.add_argument("--model", default=None, help="a GS model (gsv serve's MODEL); default the demo's stage-2 model")
    p.add_argument("--demo", type=path_arg, default=Path("out/demo"), help="where the default model comes from")
    p.add_argument("--out", type=path_arg, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="2 clients, 2 s per window")
    p.add_argument("--clients", type=whole(1), default=None, help="client threads (default 8)")
    p.add_argument("--seconds", type=positive, default=None,  # finite: regression: inf was accepted and never ended
                   help="seconds per window, a positive finite number (default 10)")
    p.add_argument("--windows", default="0,5", help="batching windows to compare, ms")
    p.add_argument("--size", type=whole(11, 2048), default=64, help="payload image size (the demo's model: 64)")
    p.add_argument("--gaussians", type=whole(1), default=None,
                   help="Gaussians per payload (default: the N a demo model was trained at, else 76)")
    p.add_argument("--max-batch", type=whole(1), default=64)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    def go(a):
        from gaussianvision.apps.bench.serve import fit_payloads, markdown, run_serve_bench
        from gaussianvision.apps.serve.server import load_engine
        windows = _windows(a.windows)
        check_device(None if a.device == "auto" else a.device)  # regression: --device foo was a traceback
        model = _model(a.model, a.demo)
        a.gaussians = _gaussians(a.gaussians, model)
        # None is "not given" (regression: 0 was taken as not given and replaced by the default; argparse refuses 0)
        clients = (2 if a.quick else 8) if a.clients is None else a.clients
        seconds = (2.0 if a.quick else 10.0) if a.seconds is None else a.seconds
        check_pixels([(a.gaussians, f"--gaussians {a.gaussians}")], a.size, a.size, where=f" (--size {a.size})")
        check_out_folder(a.out)
        try:
            engine = load_engine(model, a.device)
        except ValueError as e:
            raise CliError(str(e)) from None
        log = (lambda m: None) if a.json else (lambda m: print(f"  {m}", file=sys.stderr))
        payloads = fit_payloads(a.size, a.gaussians)
        res = run_serve_bench(engine, payloads, windows, clients, seconds, a.max_batch, log=log)
        res["env"], res["quick"] = machine(), bool(a.quick)
        stem = "serve_quick" if a.quick else "serve"
        write_json(a.out / f"{stem}.json", res)
        write_markdown(a.out / f"{stem}.md", "gsv bench serve", res["env"], markdown(res))
        emit(res, a.json, markdown(res))
    return run("bench serve", go, args)
