"""python -m gaussianvision.apps.demo.world [--out DIR] [--quick] ...: generate the offline world
and print the make_world result as JSON."""
from __future__ import annotations

import argparse
import json
import sys

from gaussianvision.apps.demo.world.world import make_world


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gaussianvision.apps.demo.world",
                                description="Generate the synthetic captioned world and its zero-shot tasks.")
    p.add_argument("--out", default="out/world")
    p.add_argument("--quick", action="store_true", help="a small world (seconds)")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--n-task", type=int, help="images per zero-shot task")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", type=int, default=8,
                   help="layout grid: object centres on the centres of cells x cells cells (0: anywhere)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="processes (0: one per CPU)")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 before reusing")
    a = p.parse_args(argv)
    try:
        res = make_world(a.out, n_train=a.n_train, n_test=a.n_test, n_task=a.n_task, size=a.size, seed=a.seed,
                         quick=a.quick, shard_size=a.shard_size, workers=a.workers, force=a.force,
                         verify=a.verify, cells=a.cells, progress=sys.stderr.isatty())
    except ValueError as e:  # bad parameters: one line, no traceback
        print(f"python -m gaussianvision.apps.demo.world: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
