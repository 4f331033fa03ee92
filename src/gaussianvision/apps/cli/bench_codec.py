"""gsv bench codec: PSNR of splats (float16, quantized) vs JPEG and WebP at equal bytes."""
from __future__ import annotations

import sys
from pathlib import Path

from gaussianvision.apps.cli.bench_args import check_pixels
from gaussianvision.apps.cli.bench_load import machine, write_markdown
from gaussianvision.apps.cli.command import check_out_folder, emit, parser, path_arg, run, whole, whole_list, write_json
from gaussianvision.apps.cli.render import check_backend


def main(argv=None) -> int:
    p = parser("bench codec", "Rate-distortion on the bundled photos: splats vs JPEG / WebP at equal bytes.")
    p.add_argument("--out", type=path_arg, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="4 photos at 96x96, N=200, 100 iterations")
    p.add_argument("--size", type=whole(11, 2048), default=None, help="default 224 (quick 96)")
    p.add_argument("--n", type=whole_list(1), default=None, help="Gaussians per image, comma-separated (default 400,900)")
    p.add_argument("--iters", type=whole(0), default=None, help="fitting iterations (default 300, quick 100)")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)

    def go(a):
        from gaussianvision.apps.bench.codec import markdown, plot, run_codec_bench
        check_backend(a.backend)
        n_list = a.n if a.n is not None else ([200] if a.quick else [400, 900])
        size = a.size if a.size is not None else (96 if a.quick else 224)
        where = f" (--size {size})" if a.size is not None else f" (the default size, {size})"
        check_pixels([(n, f"--n {n}") for n in n_list], size, size, where)  # regression: a traceback from the fit
        check_out_folder(a.out)
        names = ("astronaut", "chelsea", "coffee", "rocket") if a.quick else None
        log = (lambda m: None) if a.json else (lambda m: print(f"  {m}", file=sys.stderr))
        res = run_codec_bench(size=size, n_list=n_list,
                              iters=a.iters if a.iters is not None else (100 if a.quick else 300), names=names, backend=a.backend, log=log)
        res["env"] = machine()
        res["quick"] = bool(a.quick)
        stem = "codec_quick" if a.quick else "codec"
        write_json(a.out / f"{stem}.json", res)
        plot(res, a.out / f"{stem}.png")
        write_markdown(a.out / f"{stem}.md", "gsv bench codec", res["env"],
                       markdown(res) + f"\n![rate-distortion]({stem}.png)\n")
        emit(res, a.json, markdown(res))
    return run("bench codec", go, args)
