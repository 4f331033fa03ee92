#!/usr/bin/env python3
"""`make gpu-check` without make or an install: python3 benchmarks/gpu_check.py [gsv bench gpu options].

Runs on a bare GPU machine (torch and triton only): the library is taken from ../src.
Options as `gsv bench gpu --help`; for example --tiny, --steps fit,baseline, --limit fit=300.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.chdir(ROOT)  # results go to benchmarks/results of this checkout

if __name__ == "__main__":
    try:
        import torch  # noqa: F401
    except ImportError as e:
        print(f"gpu_check: {sys.executable} has no torch ({e}); run it with the python that has torch "
              f"(make gpu-check GPU_PYTHON=/path/to/python3)", file=sys.stderr)
        sys.exit(2)
    from gaussianvision.apps.cli.bench_gpu import main
    sys.exit(main(sys.argv[1:]))
