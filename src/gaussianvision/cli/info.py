"""gsv info FILE: the header and statistics of a .gsv file."""
from __future__ import annotations

from pathlib import Path

from gaussianvision.splats import format as fmt
from .common import emit, parser, run


def describe(path: Path) -> dict:
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise fmt.FormatError(f"{path}: no such file")
    hdr = fmt.read_header(data, str(path))
    s = fmt.decode(data, str(path))
    m = s.mask()
    means, chol, colors = s.means[m], s.chol[m], s.colors[m]
    n = int(m.sum())
    pixel = 3 * hdr.height * hdr.width * hdr.n_images

    def stats(t):
        if n == 0:
            return None
        return {"min": t.min(0).values.tolist(), "max": t.max(0).values.tolist(), "mean": t.mean(0).tolist()}

    return {
        "path": str(path), "bytes": len(data), "payload_bytes": hdr.payload_len,
        "version": hdr.version, "layout": fmt.LAYOUTS[hdr.layout].name, "layout_id": hdr.layout,
        "dtype_id": hdr.dtype, "height": hdr.height, "width": hdr.width, "n_images": hdr.n_images,
        "n_gaussians": hdr.n_total, "counts": s.num_gaussians().tolist(),
        "bytes_per_gaussian": (hdr.payload_len / hdr.n_total) if hdr.n_total else None,
        "pixel_bytes": pixel,
        "compression_ratio_payload": pixel / hdr.payload_len if hdr.payload_len else None,
        "compression_ratio_file": pixel / len(data),
        "means": stats(means), "chol": stats(chol), "colors": stats(colors),
    }


def main(argv=None) -> int:
    p = parser("info", "Print the header and statistics of a .gsv splat file.")
    p.add_argument("file", type=Path)
    args = p.parse_args(argv)

    def go(a):
        d = describe(a.file)
        human = "\n".join(f"{k:>26}: {v}" for k, v in d.items() if k not in ("means", "chol", "colors"))
        emit(d, a.json, human)
    return run("info", go, args)
