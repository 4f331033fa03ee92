"""One textured patch on a noisy background: sampling a scene (a dict of plain values) and
drawing it (a pure function of the dict).

Attributes (the classes of the zero-shot tasks):
- texture: plain, striped, checkered, dotted. Stripes run horizontally or vertically (period
  6 px), checks are 4 px squares, dots sit on a 6 px lattice (radius 1.6 px); the pattern
  alternates the patch's bright hue with the same hue at 40% of its brightness.
- hue: red, yellow, green, cyan, blue, magenta: six hues 60 degrees apart on the HSV wheel, each
  drawn within +-8 degrees, saturation 0.75-0.95, value 0.85-1.0.
- position: the quadrant of the patch centre (top left, top right, bottom left, bottom right),
  the centre at least 3 px away from both midlines (at 64 px).
- size: small, medium, large: square sides of 18-22%, 30-34% and 42-46% of the image side.

Background: a uniform gray (0.35-0.65) plus per-pixel noise (luminance sd 0.07, each channel
sd 0.03), clipped to [0, 1]. `noise=False` in render_scene draws the same scene without it (tests).
Every pixel is covered wholly by the patch or not at all (integer edges), so the ground truth is
exactly what is drawn.
"""
from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["TEXTURES", "HUES", "POSITIONS", "SIZES", "HUE_DEGREES", "SIZE_FRACTIONS", "ATTRIBUTES",
           "sample_scene", "render_scene", "texture_mask", "patch_box"]

TEXTURES = ("plain", "striped", "checkered", "dotted")
HUES = ("red", "yellow", "green", "cyan", "blue", "magenta")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "medium", "large")
HUE_DEGREES = {"red": 0.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 240.0, "magenta": 300.0}
SIZE_FRACTIONS = {"small": (0.18, 0.22), "medium": (0.30, 0.34), "large": (0.42, 0.46)}
ATTRIBUTES = {"texture": TEXTURES, "hue": HUES, "position": POSITIONS, "size": SIZES}
HUE_JITTER = 8.0
DARK = 0.4  # the pattern's dark phase: the hue at this fraction of its brightness
MIDLINE_GAP = 3  # px between the patch centre and each midline (at 64 px; scaled with the size)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(0, len(seq)))]


def sample_scene(rng: np.random.Generator, size: int = 64, **fixed) -> dict:
    """A scene: each attribute drawn uniformly unless given in `fixed` (texture=..., hue=...,
    position=..., size_class=...), then its drawing parameters."""
    attrs = {name: fixed.get("size_class" if name == "size" else name) or _pick(rng, values)
             for name, values in ATTRIBUTES.items()}
    for name, values in ATTRIBUTES.items():
        if attrs[name] not in values:
            raise ValueError(f"unknown {name} {attrs[name]!r}; known: {values}")
    lo, hi = SIZE_FRACTIONS[attrs["size"]]
    side = int(round(size * rng.uniform(lo, hi)))
    x0, y0 = _corner(rng, size, side, attrs["position"])
    hue = (HUE_DEGREES[attrs["hue"]] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360.0
    rgb = colorsys.hsv_to_rgb(hue / 360.0, rng.uniform(0.75, 0.95), rng.uniform(0.85, 1.0))
    return {"image_size": int(size), **attrs, "side": side, "x0": x0, "y0": y0, "hue_deg": float(hue),
            "rgb": [float(c) for c in rgb], "vertical": bool(rng.integers(0, 2)),
            "phase": int(rng.integers(0, 6)), "gray": float(rng.uniform(0.35, 0.65)),
            "noise_seed": int(rng.integers(0, 2**31 - 1))}


def _corner(rng, size: int, side: int, position: str) -> tuple[int, int]:
    """Top-left corner of a side x side patch whose centre lies in `position`'s quadrant, at least
    MIDLINE_GAP px (scaled) from both midlines, the patch inside the image with a 1 px margin."""
    gap = max(1, round(MIDLINE_GAP * size / 64))
    half = size / 2
    lo = 1  # corner range for the low quadrant (top / left)
    hi = int(np.floor(half - gap - side / 2))  # the centre x0 + side/2 <= half - gap
    lo_hi = (lo, max(lo, hi))
    up_lo = int(np.ceil(half + gap - side / 2))  # the high quadrant: centre >= half + gap
    up = (max(up_lo, 0), size - 1 - side)
    vert, horiz = position.split()
    ys = lo_hi if vert == "top" else up
    xs = lo_hi if horiz == "left" else up
    return int(rng.integers(xs[0], xs[1] + 1)), int(rng.integers(ys[0], ys[1] + 1))


def patch_box(scene: dict) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): pixel columns x0..x1-1 and rows y0..y1-1 are the patch."""
    return scene["x0"], scene["y0"], scene["x0"] + scene["side"], scene["y0"] + scene["side"]


def texture_mask(scene: dict) -> np.ndarray:
    """[side, side] bool: True where the patch shows its bright phase."""
    s, ph = scene["side"], scene["phase"]
    yy, xx = np.mgrid[0:s, 0:s]
    t = scene["texture"]
    if t == "plain":
        return np.ones((s, s), bool)
    if t == "striped":
        along = xx if scene["vertical"] else yy
        return ((along + ph) % 6) < 3
    if t == "checkered":
        return (((xx + ph) // 4 + (yy + ph) // 4) % 2) == 0
    if t == "dotted":
        dx = (xx + ph) % 6 - 2.5
        dy = (yy + ph) % 6 - 2.5
        return dx * dx + dy * dy <= 1.6 ** 2 * 1.5
    raise ValueError(f"unknown texture {t!r}")


def render_scene(scene: dict, noise: bool = True) -> np.ndarray:
    """[size, size, 3] uint8."""
    n = scene["image_size"]
    img = np.full((n, n, 3), scene["gray"], np.float64)
    if noise:
        g = np.random.default_rng(scene["noise_seed"])
        img += g.normal(0.0, 0.07, (n, n, 1)) + g.normal(0.0, 0.03, (n, n, 3))
    x0, y0, x1, y1 = patch_box(scene)
    rgb = np.asarray(scene["rgb"])
    m = texture_mask(scene)[..., None]
    img[y0:y1, x0:x1] = np.where(m, rgb, rgb * DARK)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
