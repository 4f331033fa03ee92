"""gsv bench codec: PSNR of splats (float16, quantized) vs JPEG and WebP at equal bytes."""
from __future__ import annotations

import sys
from pathlib import Path

from gaussianvision.apps.cli.bench_load import machine, write_markdown
from gaussianvision.apps.cli.command import CliError, emit, parser, run, write_json


def main(argv=None) -> int:
    p = parser("bench codec", "Rate-distortion on the bundled photos: splats vs JPEG / WebP at equal bytes.")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="4 photos at 96x96, N=200, 100 iterations")
    p.add_argument("--size", type=int, default=None, help="default 224")
    p.add_argument("--n", default=None, help="Gaussians per image, comma-separated (default 400,900)")
    p.add_argument("--iters", type=int, default=None, help="fitting iterations (default 300)")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)

    def go(a):
        from gaussianvision.apps.bench.codec import markdown, plot, run_codec_bench
        try:
            n_list = [int(v) for v in a.n.split(",")] if a.n else ([200] if a.quick else [400, 900])
        except ValueError:
            raise CliError(f"--n must be comma-separated integers, got {a.n!r}") from None
        names = ("astronaut", "chelsea", "coffee", "rocket") if a.quick else None
        log = (lambda m: None) if a.json else (lambda m: print(f"  {m}", file=sys.stderr))
        res = run_codec_bench(size=a.size or (96 if a.quick else 224), n_list=n_list,
                              iters=a.iters or (100 if a.quick else 300), names=names, backend=a.backend, log=log)
        res["env"] = machine()
        res["quick"] = bool(a.quick)
        stem = "codec_quick" if a.quick else "codec"
        write_json(a.out / f"{stem}.json", res)
        plot(res, a.out / f"{stem}.png")
        write_markdown(a.out / f"{stem}.md", "gsv bench codec", res["env"],
                       markdown(res) + f"\n![rate-distortion]({stem}.png)\n")
        emit(res, a.json, markdown(res))
    return run("bench codec", go, args)
