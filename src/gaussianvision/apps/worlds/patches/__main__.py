"""python -m gaussianvision.apps.worlds.patches --out DIR: generate the patches world (one textured
patch on a noisy background; tasks texture / hue / position / size) and print the result as JSON."""
from __future__ import annotations

import argparse
import json
import sys

from gaussianvision.apps.worlds.patches.world import DEFAULTS, make_world


def main(argv=None) -> int:
    prog = "python -m gaussianvision.apps.worlds.patches"
    p = argparse.ArgumentParser(prog=prog, description="Generate the patches world: captioned 64 px scenes of one "
                                "textured patch on noise, and zero-shot tasks texture, hue, position, size.")
    p.add_argument("--out", default="out/patches")
    for name, value in DEFAULTS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, help=f"default {value}")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching world exists")
    p.add_argument("--verify", action="store_true", help="check every file's sha256 before reusing")
    a = p.parse_args(argv)
    params = {k: getattr(a, k) for k in DEFAULTS}
    try:
        res = make_world(a.out, force=a.force, verify=a.verify, progress=sys.stderr.isatty(), **params)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
