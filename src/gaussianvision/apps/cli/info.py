"""gsv info FILE: the header and statistics of a .gsv file (read without padding: any batch
the format allows costs about the rows, 32 bytes a Gaussian)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from gaussianvision.splats import format as fmt
from gaussianvision.apps.cli.command import emit, parser, path_arg, run
from gaussianvision.apps.cli.render import say_cut

_SHOWN_COUNTS = 16  # the human output lists at most this many per-image counts


def _stats(t: np.ndarray) -> dict | None:
    if len(t) == 0:
        return None
    return {"min": t.min(0).tolist(), "max": t.max(0).tolist(), "mean": t.mean(0, dtype=np.float64).tolist()}


def describe(path: Path) -> dict:
    data = fmt.read_file(path)
    r = fmt.decode_rows(data, str(path), allow_truncated=True)
    hdr, rows = r.header, r.rows
    cut = say_cut(data, path, "info")  # a byte prefix of a progressive file: what arrived
    pixel = 3 * hdr.height * hdr.width * hdr.n_images
    return {
        "path": str(path), "bytes": len(data), "payload_bytes": hdr.payload_len,
        "version": hdr.version, "layout": fmt.LAYOUTS[hdr.layout].name, "layout_id": hdr.layout,
        "dtype_id": hdr.dtype, "progressive": hdr.progressive, "height": hdr.height, "width": hdr.width,
        "n_images": hdr.n_images,
        "n_gaussians": hdr.n_total, "counts": r.counts.tolist(),
        "bytes_per_gaussian": (hdr.payload_len / hdr.n_total) if hdr.n_total else None,
        "pixel_bytes": pixel,
        "compression_ratio_payload": pixel / hdr.payload_len if hdr.payload_len else None,
        "compression_ratio_file": pixel / len(data),
        "means": _stats(fmt.pixel_means(rows, hdr.width, hdr.height)), "chol": _stats(rows[:, 2:5]),
        "colors": _stats(rows[:, 5:8]),
        **({"cut": cut} if cut else {}),
    }


def _human(d: dict) -> str:
    shown = dict(d)
    c = d["counts"]
    if len(c) > _SHOWN_COUNTS:
        shown["counts"] = f"{len(c)} images: min {min(c)}, max {max(c)} (all of them with --json)"
    return "\n".join(f"{k:>26}: {v}" for k, v in shown.items() if k not in ("means", "chol", "colors"))


def main(argv=None) -> int:
    p = parser("info", "Print the header and statistics of a .gsv splat file.")
    p.add_argument("file", type=path_arg)
    args = p.parse_args(argv)

    def go(a):
        d = describe(a.file)
        emit(d, a.json, _human(d))
    return run("info", go, args)
