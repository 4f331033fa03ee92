"""gsv bench load: samples/s of splat shards vs JPEG shards stored as img2dataset stores them."""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from gaussianvision.apps.cli.command import (check_out_folder, emit, parser, path_arg, run, whole, whole_list,
                                             write_json, write_text)


def machine() -> dict:
    """The machine a benchmark ran on (the load average matters: machines are shared)."""
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
            "cuda": torch.cuda.is_available(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_markdown(path: Path, title: str, env: dict, body: str) -> None:
    text = (f"# {title}\n\nMachine: {env['platform']}, {env['cpus']} CPUs, torch {env['torch']}, "
            f"load average {env['load_average_1_5_15']} at {env['date']} (shared machine).\n\n{body}")
    write_text(path, text)


def main(argv=None) -> int:
    p = parser("bench load", "Loading throughput: splat shards vs JPEG shards as img2dataset stores them for CLIP "
                             "training (shorter side 256 / 224 px, quality 95), same batch size and workers.")
    p.add_argument("--out", type=path_arg, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="400 samples, N=400, workers 0 only")
    p.add_argument("--samples", type=whole(8), default=None, help="samples written and read (default 1000, quick 400)")
    p.add_argument("--batch-size", type=whole(1), default=64)
    p.add_argument("--workers", type=whole_list(0), default=None, help="comma-separated worker counts (default 0,2)")
    p.add_argument("--full-size-jpeg", action="store_true",
                   help="also the old baseline: the photos' original-size JPEGs (300-800 px, quality 90)")
    args = p.parse_args(argv)

    def go(a):
        from gaussianvision.apps.bench.load import markdown, run_load_bench
        check_out_folder(a.out)
        n = a.samples if a.samples is not None else (400 if a.quick else 1000)
        workers = a.workers if a.workers is not None else ([0] if a.quick else [0, 2])
        log = (lambda m: None) if a.json else (lambda m: print(f"  {m}", file=sys.stderr))
        with tempfile.TemporaryDirectory(prefix="gsv-bench-load-") as work:
            res = run_load_bench(Path(work), n_samples=n, per_shard=max(1, n // 8), batch_size=a.batch_size,
                                 workers=workers, n_gaussians=(400,) if a.quick else (400, 3136),
                                 repeats=1 if a.quick else 2, jpeg_sides=(256,) if a.quick else (256, 224),
                                 full_size=a.full_size_jpeg, log=log)
        res["env"] = machine()
        res["quick"] = bool(a.quick)
        stem = "load_quick" if a.quick else "load"
        write_json(a.out / f"{stem}.json", res)
        write_markdown(a.out / f"{stem}.md", "gsv bench load", res["env"], markdown(res))
        emit(res, a.json, markdown(res))
    return run("bench load", go, args)
