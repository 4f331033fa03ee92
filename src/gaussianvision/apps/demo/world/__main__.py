"""python -m gaussianvision.apps.demo.world [--out DIR] [--quick] ...: generate the offline world
and print the make_world result as JSON."""
from __future__ import annotations

import json
import sys

from gaussianvision.apps.cli.command import ArgumentParser, CliError, HelpFormatter, check_not_a_file, path_text, whole
from gaussianvision.apps.demo.world.world import MAX_SIZE, MIN_SIZE, make_world


def _reason(e: Exception) -> str:
    """The error's line: an OSError as 'PATH: what the system said' (regression: --out naming a file was a
    FileExistsError traceback)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv=None) -> int:
    # gsv's parser: an option error is one line (argparse's usage block is what --help is for)
    p = ArgumentParser(prog="python -m gaussianvision.apps.demo.world", formatter_class=HelpFormatter,
                       description="Generate the synthetic captioned world and its zero-shot tasks.")
    p.add_argument("--out", type=path_text, default="out/world")
    p.add_argument("--quick", action="store_true", help="a small world (seconds)")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--n-task", type=int, help="images per zero-shot task")
    p.add_argument("--size", type=int, default=64, help=f"image side in pixels, {MIN_SIZE} to {MAX_SIZE}")
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--cells", type=int, default=8,
                   help="layout grid: object centres on the centres of cells x cells cells (0: anywhere; else at "
                        "least 2, and cells of at least 4 pixels)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=whole(0), default=1, help="processes (0: one per CPU)")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 before reusing")
    a = p.parse_args(argv)
    try:
        check_not_a_file(a.out)
        res = make_world(a.out, n_train=a.n_train, n_test=a.n_test, n_task=a.n_task, size=a.size, seed=a.seed,
                         quick=a.quick, shard_size=a.shard_size, workers=a.workers, force=a.force,
                         verify=a.verify, cells=a.cells, progress=sys.stderr.isatty())
    except (ValueError, OSError, CliError) as e:  # bad parameters, an --out that takes no world: one line, no traceback
        print(f"{p.prog}: error: {_reason(e)}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
