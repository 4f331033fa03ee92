"""gsv render FILE --out PNG [--scale S | --size WxH]: render splats at any resolution.

A batch file is rendered one image at a time (OUT_i.png), so any file the format allows renders
in the memory of one image. Output paths are checked before any work; a failed write leaves
no temporary file behind.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from gaussianvision.atomic import write_atomic
from gaussianvision.data.images import to_pil
from gaussianvision.data.shards import show
from gaussianvision.raster import probe_backend, render
from gaussianvision.splats import format as fmt
from gaussianvision.apps.cli.command import CliError, emit, parser, path_arg, run

MAX_PIXELS = 1 << 26


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """'WxH' (width first, as image tools write it) -> (width, height), both positive."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        w = h = 0
    if len(parts) != 2 or w < 1 or h < 1:
        raise CliError(f"{option} must be WIDTHxHEIGHT in pixels, width first (e.g. 640x480), got {text!r}")
    if w * h > MAX_PIXELS:
        raise CliError(f"{option} {w}x{h} is too large (more than {MAX_PIXELS} pixels)")
    return w, h


def say_cut(data: bytes, path: Path, cmd: str) -> dict | None:
    """For a cut progressive file (a byte prefix: README's 'any prefix is a coarser image'), which gsv
    render, show and info read as the image of the Gaussians that arrived: one note line on stderr and
    {"declared": N, "arrived": k}; None for a whole file. Regression: such a prefix was refused as
    truncated, readable from Python only (allow_truncated=True)."""
    declared = fmt.read_header(data, str(path), truncated_ok=True)
    if len(data) >= fmt.declared_len(bytes(data[:fmt.HEADER_SIZE])):
        return None
    arrived = fmt.decode_rows(data, str(path), allow_truncated=True).header.n_total
    print(f"gsv {cmd}: {show(str(path), None)}: a cut progressive file: its first {arrived} of {declared.n_total} "
          "Gaussians arrived (a coarser image)", file=sys.stderr)
    return {"declared": declared.n_total, "arrived": arrived}


def check_out_file(path: Path, option: str = "--out") -> None:
    """Refuse an output file path naming a folder, an existing non-regular file (a device, a pipe) or
    not ending in .png; create its folder, or refuse with the reason."""
    if path.is_dir():
        raise CliError(f"{option} {path} is a folder; name the file to write, e.g. {path / 'out.png'}")
    if path.suffix.lower() != ".png":  # regression: x.jpg got PNG bytes under a JPEG name
        raise CliError(f"{option} {path}: the picture is written as PNG; name it .png (e.g. {path.with_suffix('.png')})")
    if path.exists() and not path.is_file():
        raise CliError(f"{option} {path} exists and is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{option} {path}: cannot create its folder {path.parent} ({e.strerror or e})") from None


RENDER_MARK = "gsv render of splats"  # the PNG Software text of every render gsv writes


def write_png(img: torch.Tensor, path: Path) -> None:
    """[3, H, W] -> PNG at path, atomically, marked as a render (is_render); an OSError becomes one clear line."""
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text("Software", RENDER_MARK)
    try:
        write_atomic(path, lambda tmp: to_pil(img).save(tmp, format="PNG", pnginfo=info))
    except OSError as e:
        raise CliError(f"cannot write {path} ({e.strerror or e})") from None


def is_render(path: Path) -> bool:
    """Whether `path` is a PNG that gsv wrote as a render of splats (write_png's mark)."""
    if path.suffix.lower() != ".png":
        return False
    from gaussianvision.data.images import open_image
    try:
        with open_image(path) as im:
            return im.info.get("Software") == RENDER_MARK
    except Exception:  # unreadable: not ours to skip; loading it reports why
        return False


def check_backend(name: str) -> None:
    """--backend NAME must name a render backend that loads here ('auto' always does)."""
    if name != "auto":
        ok, why = probe_backend(name)
        if not ok:
            raise CliError(f"--backend {name}: {why}")


def _out_paths(out: Path, n: int) -> list[Path]:
    paths = [out] if n == 1 else [out.with_name(f"{out.stem}_{b}{out.suffix}") for b in range(n)]
    for p in paths:
        check_out_file(p)
    return paths


def main(argv=None) -> int:
    p = parser("render", "Render a .gsv file to PNG. Splats are resolution-free: --scale 2 renders at twice "
                         "the fitted size.")
    p.add_argument("file", type=path_arg)
    p.add_argument("--out", type=path_arg, required=True, help="output PNG (image i of a batch file: OUT_i.png)")
    p.add_argument("--scale", type=float, default=1.0, help="multiple of the fitted size (default 1)")
    p.add_argument("--size", type=str, default=None,
                   help="WIDTHxHEIGHT in pixels, width first (e.g. 640x480); overrides --scale")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)

    def go(a):
        size = parse_size(a.size) if a.size else None
        check_backend(a.backend)
        if size is None and not (a.scale > 0 and math.isfinite(a.scale)):
            raise CliError(f"--scale must be a positive number, got {a.scale}")
        data = fmt.read_file(a.file)
        hdr = fmt.read_header(data, str(a.file), truncated_ok=True)
        if size is None and hdr.width * a.scale * hdr.height * a.scale > MAX_PIXELS:  # before rounding: inf, 1e308
            raise CliError(f"--scale {a.scale:g}: the output would be {hdr.width * a.scale:.6g}x{hdr.height * a.scale:.6g} "
                           f"(width x height), more than {MAX_PIXELS} pixels")
        w, h = size or (max(1, round(hdr.width * a.scale)), max(1, round(hdr.height * a.scale)))
        if h * w > MAX_PIXELS:
            raise CliError(f"output {w}x{h} (width x height) is too large (more than {MAX_PIXELS} pixels)")
        say_cut(data, a.file, "render")  # a cut file that cannot be read is refused here, before any output
        outs = _out_paths(a.out, hdr.n_images)
        for path, one in zip(outs, fmt.iter_images(data, str(a.file), allow_truncated=True)):
            write_png(render(one, h, w, backend=a.backend)[0], path)
        names = ", ".join(map(str, outs)) if len(outs) <= 4 else f"{outs[0]} ... {outs[-1]} ({len(outs)} files)"
        emit({"input": str(a.file), "outputs": [str(o) for o in outs], "height": h, "width": w}, a.json,
             f"wrote {names} ({w}x{h}, width x height)")
    return run("render", go, args)
