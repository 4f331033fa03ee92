"""gsv show FILE --out PNG [--image ORIGINAL]: the Gaussians as ellipses beside the render.

Panels (as the paper's Figure 4): the original (with --image), the render, and every
Gaussian drawn as its 1-sigma ellipse filled with its own color (clamped to [0, 1]).
"""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import torch

from gaussianvision.atomic import write_atomic
from gaussianvision.data.images import load_image
from gaussianvision.data.tar_members import show as named
from gaussianvision.fit.metrics import psnr
from gaussianvision.raster import render
from gaussianvision.splats import format as fmt
from gaussianvision.splats.params import chol_to_scale_rot
from gaussianvision.apps.cli.command import CliError, emit, parser, path_arg, run
from gaussianvision.apps.cli.render import check_backend, check_out_file, say_cut


def _import_mpl():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.collections import EllipseCollection
    except ImportError as e:
        raise CliError(f"gsv show needs matplotlib (pip install 'gaussianvision[photos]'): {e}") from None
    return plt, EllipseCollection


SHOW_MAX_SIDE = 2048  # the render and original drawn at most this many pixels a side (aspect kept)
MAX_SIGMA = 10.0  # ellipse radius: the render's cut is 3 sigma; matplotlib hung on --sigma 1e20
UNLIKE_DB = 12.0  # a render this far from --image (PSNR below) was fitted to another image: said, not refused


def _display_size(h: int, w: int) -> tuple[int, int]:
    """(height, width) to draw an image of h x w at: itself, or scaled down to SHOW_MAX_SIDE (regression: a
    65536 x 65536 header asked for 51 GB, and 8000 x 8000 took 4.7 GB before matplotlib failed)."""
    f = min(1.0, SHOW_MAX_SIDE / max(h, w))
    return (h, w) if f == 1.0 else (max(1, round(h * f)), max(1, round(w * f)))


MAX_PANEL_ASPECT = 4  # a panel's long side at most this many times its short side (the image is stretched to it)


def _panel_box(h: int, w: int) -> tuple[float, float]:
    """(height, width) in inches of one panel: the long side 4 inches, the short side the image's share of it,
    but at least a quarter of it. Regression (new-user trial): a 15 x 3000 strip drew three panels 3 px wide."""
    long, short = max(h, w), min(h, w)
    ratio = min(long / short, MAX_PANEL_ASPECT)
    side = 4.0 / ratio
    return (4.0, side) if h >= w else (side, 4.0)


def draw(splats, original: torch.Tensor | None, out: Path, n_sigma: float = 1.0, backend: str = "auto",
         title: str | None = None) -> float | None:
    """Write the figure for one image's splats (batch of one) to `out` (PNG, atomically); returns the render's
    PSNR against the original panel as drawn (None without an original)."""
    plt, EllipseCollection = _import_mpl()
    h, w = splats.height, splats.width
    shown = _display_size(h, w)  # the panels are 4 inches at 150 dpi: a larger render shows nothing more
    img = render(splats.scaled(*shown) if shown != (h, w) else splats, backend=backend)[0]
    img = img.clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    if original is not None and tuple(original.shape[-2:]) != shown:
        original = torch.nn.functional.interpolate(original[None].float(), size=shown, mode="area")[0]
    agree = None if original is None else float(psnr(torch.from_numpy(img).permute(2, 0, 1)[None],
                                                      original[None].clamp(0, 1).cpu())[0])
    panels = ([("original", original.clamp(0, 1).permute(1, 2, 0).cpu().numpy())] if original is not None else [])
    panels += [("render", img), (f"Gaussians ({n_sigma:g}-sigma ellipses)", None)]
    box_h, box_w = _panel_box(h, w)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * box_w + 0.5, box_h + 0.6), dpi=150)
    stretched = max(h, w) > MAX_PANEL_ASPECT * min(h, w)
    for ax, (name, arr) in zip(axes, panels):
        ax.set_title(name, fontsize=8)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_aspect("auto" if stretched else "equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if arr is not None:
            ax.imshow(arr, extent=(0, w, h, 0), interpolation="nearest")
            continue
        ax.set_facecolor("black")
        sr = chol_to_scale_rot(splats.chol[0].double()).cpu()  # (sigma1, sigma2, theta)
        cols = splats.colors[0].clamp(0, 1).cpu().numpy()
        # draw the largest first so small detail Gaussians stay visible on top
        order = torch.argsort(sr[:, 0] * sr[:, 1], descending=True)
        sr = sr[order]
        ec = EllipseCollection(widths=(2 * n_sigma * sr[:, 0]).numpy(), heights=(2 * n_sigma * sr[:, 1]).numpy(),
                               angles=torch.rad2deg(sr[:, 2]).numpy(), units="xy",
                               offsets=splats.means[0].cpu()[order].numpy(), offset_transform=ax.transData,
                               facecolors=cols[order.numpy()], edgecolors="none", alpha=0.75)
        ax.add_collection(ec)
    if title or stretched:
        fig.suptitle((title or "") + (f" (drawn stretched to {MAX_PANEL_ASPECT}:1)" if stretched else ""), fontsize=8)
    fig.tight_layout()
    try:
        write_atomic(out, lambda tmp: fig.savefig(tmp, format="png"))
    except OSError as e:
        raise CliError(f"cannot write {out} ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return agree


def _like_splats(orig: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The original [3, H0, W0] as the splats of h x w saw it: its centre cropped to their aspect ratio
    (a square crop for square splats, as the fit's --size takes it; nothing for a photo fitted at its own
    size), then resized to the display size. Regression: the centre square of a 640x427 photo was
    stretched to 96x64 splats, its panel zoomed and shifted against the render."""
    h0, w0 = orig.shape[-2:]
    if (h0, w0) == (h, w):
        return orig
    if w0 * h > h0 * w:  # wider than the splats: crop the width
        cw = max(1, min(w0, round(h0 * w / h)))
        orig = orig[:, :, (w0 - cw) // 2:(w0 - cw) // 2 + cw]
    else:
        ch = max(1, min(h0, round(w0 * h / w)))
        orig = orig[:, (h0 - ch) // 2:(h0 - ch) // 2 + ch, :]
    return torch.nn.functional.interpolate(orig[None], size=_display_size(h, w), mode="bilinear", antialias=True,
                                           align_corners=False)[0]


def _one_image(path: Path, index: int):
    """Image `index` of a .gsv file (B = 1), read image by image: no padding of a batch."""
    data = fmt.read_file(path)
    n = fmt.read_header(data, str(path), truncated_ok=True).n_images
    if not 0 <= index < n:
        raise CliError(f"--index {index} out of range: {path} holds {n} image(s)")
    one = next(itertools.islice(fmt.iter_images(data, str(path), allow_truncated=True), index, None))
    say_cut(data, path, "show")
    return one


def main(argv=None) -> int:
    p = parser("show", "Draw the Gaussians of a .gsv file as ellipses beside its render (and the original).")
    p.add_argument("file", type=path_arg)
    p.add_argument("--out", type=path_arg, required=True, help="output PNG")
    p.add_argument("--image", type=path_arg, default=None, help="the original image, shown first")
    p.add_argument("--index", type=int, default=0, help="which image of a batch file")
    p.add_argument("--sigma", type=float, default=1.0, help="ellipse radius in standard deviations")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)

    def go(a):
        if not (math.isfinite(a.sigma) and 0 < a.sigma <= MAX_SIGMA):
            raise CliError(f"--sigma must be positive and at most {MAX_SIGMA:g}, got {a.sigma}")
        check_backend(a.backend)
        one = _one_image(a.file, a.index)
        check_out_file(a.out)
        orig = None
        if a.image is not None:
            orig = _like_splats(load_image(a.image, size=None), one.height, one.width)
        agree = draw(one, orig, a.out, n_sigma=a.sigma, backend=a.backend,
                     title=f"{a.file.name}: {one.max_gaussians} Gaussians, {one.width}x{one.height} px")
        if agree is not None and agree < UNLIKE_DB:
            print(f"gsv show: warning: {named(str(a.image), None)} is not like the render of "
                  f"{named(str(a.file), None)} (PSNR {agree:.1f} dB, under "
                  f"{UNLIKE_DB:g}): is it the image these splats were fitted to?", file=sys.stderr)
        emit({"input": str(a.file), "output": str(a.out), "n_gaussians": one.max_gaussians,
              **({} if agree is None else {"psnr_vs_image": round(agree, 2)})}, a.json,
             f"wrote {a.out}" + ("" if agree is None else f" (render vs --image: {agree:.2f} dB)"))
    return run("show", go, args)
