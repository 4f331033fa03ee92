"""gsv render FILE --out PNG [--scale S | --size HxW]: render splats at any resolution."""
from __future__ import annotations

from pathlib import Path

from gaussianvision.data.images import save_png
from gaussianvision.raster import render
from gaussianvision.splats import load
from .common import CliError, emit, parser, run


def main(argv=None) -> int:
    p = parser("render", "Render a .gsv file to PNG. Splats are resolution-free: --scale 2 renders at twice "
                         "the fitted size.")
    p.add_argument("file", type=Path)
    p.add_argument("--out", type=Path, required=True, help="output PNG (image i of a batch file: OUT_i.png)")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--size", type=str, default=None, help="HxW, overrides --scale")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)

    def go(a):
        s = load(a.file)
        if a.size:
            try:
                h, w = (int(v) for v in a.size.lower().split("x"))
            except ValueError:
                raise CliError(f"--size must look like 448x448, got {a.size!r}") from None
        else:
            if not a.scale > 0:
                raise CliError(f"--scale must be positive, got {a.scale}")
            h, w = max(1, round(s.height * a.scale)), max(1, round(s.width * a.scale))
        if h * w > 1 << 26:
            raise CliError(f"output {h}x{w} is too large")
        img = render(s, h, w, backend=a.backend)
        outs = []
        a.out.parent.mkdir(parents=True, exist_ok=True)
        for b in range(img.shape[0]):
            path = a.out if img.shape[0] == 1 else a.out.with_name(f"{a.out.stem}_{b}{a.out.suffix}")
            save_png(img[b], path)
            outs.append(str(path))
        emit({"input": str(a.file), "outputs": outs, "height": h, "width": w}, a.json,
             f"wrote {', '.join(outs)} ({h}x{w})")
    return run("render", go, args)
