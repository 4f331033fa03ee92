"""gsv bench SUITE: fit | load | codec | model | wire | serve | gpu | all. Each suite is a module cli/bench_SUITE.py."""
from __future__ import annotations

import importlib
import sys

from gaussianvision.apps.cli.command import fail

SUITES = {
    "fit": "fitting speed and quality (PSNR vs iterations, pruning, Kodak)",
    "load": "data loading throughput, splat shards vs JPEG shards",
    "codec": "rate-distortion: splats vs JPEG / WebP at equal bytes",
    "model": "GS tower vs RGB ViT: latency and FLOPs",
    "wire": "the edge's bytes: RGB teacher on JPEG / WebP vs GS encoder on splats at equal bytes",
    "serve": "load test of gsv serve on 127.0.0.1: requests/s and latency percentiles",
    "gpu": "the one-shot GPU check (make gpu-check; --tiny on CPU); not part of all",
}
ALL = ("fit", "load", "codec", "model")


def usage() -> str:
    lines = ["usage: gsv bench SUITE [options]   (gsv bench SUITE --help for each)", "", "suites:"]
    lines += [f"  {k:<6} {v}" for k, v in SUITES.items()]
    lines.append(f"  all    {', '.join(ALL)} in turn, each with its defaults; the options given")
    lines.append("         go to every suite (e.g. --out DIR)")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    help_all = argv[:1] == ["all"] and any(a in ("-h", "--help") for a in argv[1:])
    if not argv or argv[0] in ("-h", "--help") or help_all:
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        rc = 0
        for suite in ALL:
            rc |= main([suite, *rest])
        return rc
    if name not in SUITES:
        return fail("gsv bench", f"unknown suite {name!r}; choose from {', '.join(SUITES)} or all", rest)
    try:
        module = importlib.import_module(f"gaussianvision.apps.cli.bench_{name}")
    except ModuleNotFoundError as e:
        if e.name == f"gaussianvision.apps.cli.bench_{name}":
            return fail(f"gsv bench {name}", "not available in this version", rest)
        raise
    return int(module.main(rest) or 0)
