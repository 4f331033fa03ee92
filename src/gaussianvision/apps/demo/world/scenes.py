"""Scenes of colored shapes: sampling (from a numpy Generator) and drawing (4x supersampled).

A scene is a plain JSON-able dict, and drawing is a pure function of it, so the ground truth
written beside each image is exactly what was drawn (`render_scene(json.loads(meta))` gives the
same pixels back)::

    {"size": 64,
     "background": {"kind": "stripes", "colors": [[r, g, b], [r, g, b]], ...},   # floats in [0, 1]
     "groups": [{"shape": "triangle", "color": "red", "size": "small", "count": 2}, ...],
     "objects": [{"group": 0, "shape": ..., "color": ..., "size": ..., "x": 17.3, "y": 40.1,
                  "radius": 5.2, "angle": 8.0, "rgb": [213, 41, 37]}, ...],
     "relation": {"a": 0, "rel": "left of", "b": 1} | None}

Coordinates are in output pixels, continuous, with pixel (i, j) covering [i, i+1) x [j, j+1):
the object centre lies in pixel (floor(y), floor(x)). `radius` is the nominal radius in pixels;
every shape is built so that its centre is inside it (the triangle is centred on its centroid).
Groups hold identical objects (same shape, color and size class): that is what a count means.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "COLORS", "SIZES", "BACKGROUNDS", "ALL_BACKGROUNDS", "RELATIONS", "INVERSE",
           "SUPERSAMPLE", "LAYOUT_JITTER", "MAX_DRAWS", "render_scene", "sample_scene", "place_objects",
           "sample_background", "make_group", "extent", "relation_of", "nearest_color"]

SHAPES = ("circle", "square", "triangle", "star", "cross")

# Hues spread around the wheel at high saturation; backgrounds are kept near-gray, so every
# object differs from its background in chroma even when their luminance is similar.
COLORS = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 220, 45),
    "green": (45, 165, 65),
    "blue": (40, 85, 220),
    "purple": (145, 55, 195),
}

# Nominal radius as a fraction of the image side. The gap between the classes (0.095 -> 0.14)
# keeps "small" and "large" apart even after the per-object jitter.
SIZES = {"small": (0.075, 0.095), "large": (0.14, 0.17)}

BACKGROUNDS = ("gradient", "stripes", "noise", "checker")
ALL_BACKGROUNDS = BACKGROUNDS + ("plain",)  # plain is for tests (clean connected components)

RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

SUPERSAMPLE = 4
# Share of two-group (relation) scenes drawn as one object left of / above one other: a tiny
# ViT learns a relation between two single objects from a few thousand scenes, but not between
# groups of several (docs/world.md: supervised, 95% vs 45% on the relation task's pair).
P_SINGLE_PAIR = 0.7
LAYOUT_JITTER = 0.125  # of a cell (1 px at 64 px and 8 cells): see place_objects
# Draws a sampler makes before it gives up with a ValueError (regression: --cells 1, or 3 at 64 px, left no
# layout for the relation task's pair and the world generator looped for ever). Where a layout fits at all the
# most any scene took was 113 draws (the relation task at 2 cells); a failed draw costs about 0.5 ms.
MAX_DRAWS = 2000
_COLOR_JITTER = 10  # +- levels per channel: variety without blurring the named colors

# Outer radius of each shape relative to its nominal radius (for placement and margins).
_EXTENT = {"circle": 1.0, "square": 0.85 * math.sqrt(2), "triangle": 1.25, "star": 1.2, "cross": 1.0}


def extent(shape: str, radius: float) -> float:
    return _EXTENT[shape] * radius


def nearest_color(rgb) -> str:
    """The palette name closest (Euclidean, RGB) to an (r, g, b) triple in 0..255."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLORS, key=lambda k: float(np.sum((np.asarray(COLORS[k]) - rgb) ** 2)))


# ----------------------------------------------------------------------------------- drawing

def _polygon(shape: str, x: float, y: float, r: float, angle_deg: float) -> list[tuple[float, float]]:
    a0 = math.radians(angle_deg)
    if shape == "circle":
        pts = [(r, 2 * math.pi * k / 64) for k in range(64)]
    elif shape == "square":
        h = 0.85 * r * math.sqrt(2)
        pts = [(h, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        # Pointing up before rotation; the circumcentre is the centroid for an equilateral one.
        pts = [(1.25 * r, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
    elif shape == "star":
        pts = [(1.2 * r if k % 2 == 0 else 0.5 * r, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    elif shape == "cross":
        w, l = 0.36 * r, 1.0 * r
        corners = [(w, -l), (w, -w), (l, -w), (l, w), (w, w), (w, l),
                   (-w, l), (-w, w), (-l, w), (-l, -w), (-w, -w), (-w, -l)]
        pts = [(math.hypot(u, v), math.atan2(v, u)) for u, v in corners]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [(x + rho * math.cos(t + a0), y + rho * math.sin(t + a0)) for rho, t in pts]


def _coords(size: int, ss: int) -> np.ndarray:
    """Sample positions (in output pixels) of an ss x ss grid inside each output pixel."""
    return ((np.arange(size * ss, dtype=np.float32) + 0.5) / ss)


def _box(bits: np.ndarray, ss: int) -> np.ndarray:
    """Box-filter a 0/1 integer array by ss (PIL's reduce is several times faster than numpy)."""
    img = Image.fromarray((bits * 255).astype(np.uint8), "L").reduce(ss)
    return np.asarray(img, dtype=np.float32) / 255.0


def _background(bg: dict, size: int) -> np.ndarray:
    """[size, size, 3] float in [0, 1]. Hard-edged patterns (stripes, checker) are box-filtered
    from a SUPERSAMPLE grid; smooth ones are sampled at pixel centres."""
    kind = bg["kind"]
    if kind == "plain":
        return np.broadcast_to(np.asarray(bg["colors"][0], dtype=np.float32), (size, size, 3)).copy()
    c0 = np.asarray(bg["colors"][0], dtype=np.float32)
    c1 = np.asarray(bg["colors"][1], dtype=np.float32)
    if kind == "gradient":
        c = _coords(size, 1)
        t = math.radians(bg["angle"])
        u, v = math.cos(t), math.sin(t)
        proj = (c[None, :] - size / 2) * u + (c[:, None] - size / 2) * v
        span = (abs(u) + abs(v)) * size / 2
        w = np.clip(proj / (2 * span) + 0.5, 0, 1)
    elif kind == "stripes":
        c = _coords(size, SUPERSAMPLE)
        t = math.radians(bg["angle"])
        proj = c[None, :] * math.cos(t) + c[:, None] * math.sin(t)
        w = _box(np.floor(proj / (bg["period"] / 2) + bg["phase"]).astype(np.int32) & 1, SUPERSAMPLE)
    elif kind == "checker":
        c = np.floor(_coords(size, SUPERSAMPLE) / bg["cell"] + bg["phase"]).astype(np.int32)
        w = _box((c[None, :] + c[:, None]) & 1, SUPERSAMPLE)
    elif kind == "noise":
        grid = np.asarray(bg["grid"], dtype=np.float32)
        w = np.asarray(Image.fromarray(grid, "F").resize((size, size), Image.BICUBIC), dtype=np.float32)
        w = np.clip(w, 0, 1)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    w = w.astype(np.float32)[..., None]
    return c0 * (1 - w) + c1 * w


def render_scene(scene: dict) -> Image.Image:
    """Draw a scene dict: an RGB PIL image of scene['size'] pixels on a side.

    Each object's coverage of each pixel is measured on a SUPERSAMPLE x SUPERSAMPLE grid (a
    box filter: anti-aliased edges) and its color blended by that coverage. Objects never
    overlap, so this equals drawing everything at SUPERSAMPLE resolution and downsampling.
    """
    size = int(scene["size"])
    img = _background(scene["background"], size) * 255.0
    for o in scene["objects"]:
        # Only the object's bounding box (whole output pixels, clipped to the image) is drawn.
        e = extent(o["shape"], o["radius"]) + 1.0
        x0, y0 = max(0, int(math.floor(o["x"] - e))), max(0, int(math.floor(o["y"] - e)))
        x1, y1 = min(size, int(math.ceil(o["x"] + e))), min(size, int(math.ceil(o["y"] + e)))
        if x1 <= x0 or y1 <= y0:
            continue
        mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
        # PIL puts integer coordinates on pixel centres; ours put them on pixel corners.
        pts = [(SUPERSAMPLE * (px - x0) - 0.5, SUPERSAMPLE * (py - y0) - 0.5)
               for px, py in _polygon(o["shape"], o["x"], o["y"], o["radius"], o["angle"])]
        ImageDraw.Draw(mask).polygon(pts, fill=255)
        a = np.asarray(mask.reduce(SUPERSAMPLE), dtype=np.float32)[..., None] / 255.0
        region = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = region * (1 - a) + np.asarray(o["rgb"], dtype=np.float32) * a
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------------- sampling

def _r4(v: float) -> float:
    return round(float(v), 4)


def _gray_pair(rng: np.random.Generator, contrast: tuple[float, float]) -> list[list[float]]:
    base = rng.uniform(0.3, 0.78)
    tint = rng.uniform(-0.05, 0.05, size=3)
    delta = rng.uniform(*contrast) * (1 if base < 0.54 else -1)
    c0 = np.clip(base + tint, 0, 1)
    c1 = np.clip(base + delta + tint + rng.uniform(-0.03, 0.03, size=3), 0, 1)
    return [[_r4(v) for v in c0], [_r4(v) for v in c1]]


def sample_background(rng: np.random.Generator, size: int, kind: str) -> dict:
    """Low-saturation, low-frequency backgrounds: texture a few dozen Gaussians can still carry."""
    if kind == "plain":
        return {"kind": "plain", "colors": _gray_pair(rng, (0.0, 0.0))[:1]}
    if kind == "gradient":
        return {"kind": kind, "colors": _gray_pair(rng, (0.15, 0.3)), "angle": _r4(rng.uniform(0, 360))}
    if kind == "stripes":
        return {"kind": kind, "colors": _gray_pair(rng, (0.1, 0.18)),
                "period": _r4(size * rng.uniform(1 / 5, 1 / 3)),
                "angle": _r4(rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-10, 10)),
                "phase": _r4(rng.uniform(0, 2))}
    if kind == "checker":
        return {"kind": kind, "colors": _gray_pair(rng, (0.08, 0.15)),
                "cell": _r4(size * rng.uniform(1 / 5, 1 / 3)), "phase": _r4(rng.uniform(0, 1))}
    if kind == "noise":
        g = int(rng.integers(3, 6))
        return {"kind": kind, "colors": _gray_pair(rng, (0.15, 0.3)),
                "grid": [[_r4(v) for v in row] for row in rng.uniform(0, 1, size=(g, g))]}
    raise ValueError(f"unknown background kind {kind!r}")


def make_group(shape: str, color: str, size: str, count: int) -> dict:
    return {"shape": shape, "color": color, "size": size, "count": int(count)}


def place_objects(rng: np.random.Generator, img_size: int, groups: list[dict],
                  regions: list[tuple[float, float, float, float]] | None = None,
                  tries: int = 60, cells: int = 0) -> list[dict] | None:
    """Non-overlapping objects for each group, centres inside each group's region.

    regions[g] = (x0, y0, x1, y1) as fractions of the image for group g's centres. Returns None
    when a random layout did not fit after `tries` attempts per object (the caller resamples).

    cells > 0 puts every centre on a layout grid: the centre of one of cells x cells equal cells,
    moved by at most LAYOUT_JITTER of a cell in each direction. With cells = image side / patch
    size, every object sits at the same place relative to a ViT's patch grid, which a tiny ViT
    trained from scratch needs to learn shapes in minutes (see docs/world.md). cells = 0 places
    centres anywhere.
    """
    s = float(img_size)
    margin = 1.0
    # More than 2*sqrt(2) px between outlines: no two pixels touched by different objects are
    # neighbours, even diagonally, so each object is its own connected component.
    gap = max(3.0, 0.05 * s)
    specs = []
    for gi, g in enumerate(groups):
        lo, hi = SIZES[g["size"]]
        rgb = np.clip(np.asarray(COLORS[g["color"]]) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3), 0, 255)
        for _ in range(g["count"]):
            r = rng.uniform(lo, hi) * s
            specs.append((gi, r, [int(v) for v in rgb]))
    order = sorted(range(len(specs)), key=lambda i: -specs[i][1])  # big ones first: they fit worst
    placed: dict[int, dict] = {}
    for i in order:
        gi, r, rgb = specs[i]
        g = groups[gi]
        ext = extent(g["shape"], r)
        x0, y0, x1, y1 = regions[gi] if regions else (0.0, 0.0, 1.0, 1.0)
        lo_x, hi_x = max(x0 * s, ext + margin), min(x1 * s, s - ext - margin)
        lo_y, hi_y = max(y0 * s, ext + margin), min(y1 * s, s - ext - margin)
        if lo_x > hi_x or lo_y > hi_y:
            return None
        if cells:
            xs, ys = _grid_positions(rng, s, cells, lo_x, hi_x, tries), _grid_positions(rng, s, cells, lo_y, hi_y, tries)
            if xs is None or ys is None:
                return None
        else:
            xs, ys = rng.uniform(lo_x, hi_x, tries), rng.uniform(lo_y, hi_y, tries)
        ok = np.ones(tries, dtype=bool)
        for p in placed.values():
            ok &= np.hypot(xs - p["x"], ys - p["y"]) >= ext + p["_ext"] + gap
        hits = np.flatnonzero(ok)
        if hits.size == 0:
            return None
        x, y = float(xs[hits[0]]), float(ys[hits[0]])
        angle = 0.0 if g["shape"] == "circle" else rng.uniform(-15, 15)
        placed[i] = {"group": gi, "shape": g["shape"], "color": g["color"], "size": g["size"],
                     "x": _r4(x), "y": _r4(y), "radius": _r4(r), "angle": _r4(angle), "rgb": rgb,
                     "_ext": ext}
    objs = [placed[i] for i in range(len(specs))]
    for o in objs:
        del o["_ext"]
    return objs


def _grid_positions(rng: np.random.Generator, side: float, cells: int, lo: float, hi: float,
                    n: int) -> np.ndarray | None:
    """n coordinates in [lo, hi], each a cell centre plus jitter; None when no cell centre fits."""
    step = side / cells
    jit = LAYOUT_JITTER * step
    centres = (np.arange(cells) + 0.5) * step
    centres = centres[(centres - jit >= lo) & (centres + jit <= hi)]
    if centres.size == 0:
        return None
    return centres[rng.integers(0, centres.size, n)] + rng.uniform(-jit, jit, n)


def _centroid(objs: list[dict], gi: int) -> tuple[float, float]:
    pts = [(o["x"], o["y"]) for o in objs if o["group"] == gi]
    return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)


def relation_of(objs: list[dict], a: int, b: int, ratio: float = 1.0) -> str | None:
    """The relation 'group a REL group b' from the objects' positions, or None when unclear.

    Clear means: every object of a is beyond every object of b along the relation's axis (image
    y grows downward), and the centroid offset along that axis is at least `ratio` times the
    offset across it.
    """
    ax, ay = _centroid(objs, a)
    bx, by = _centroid(objs, b)
    dx, dy = bx - ax, by - ay
    A = [o for o in objs if o["group"] == a]
    B = [o for o in objs if o["group"] == b]
    if abs(dx) >= ratio * abs(dy) and abs(dx) > 0:
        if max(o["x"] for o in A) < min(o["x"] for o in B):
            return "left of"
        if min(o["x"] for o in A) > max(o["x"] for o in B):
            return "right of"
    if abs(dy) >= ratio * abs(dx) and abs(dy) > 0:
        if max(o["y"] for o in A) < min(o["y"] for o in B):
            return "above"
        if min(o["y"] for o in A) > max(o["y"] for o in B):
            return "below"
    return None


_HALF = 0.5
_SPLIT = 0.04


def relation_regions(rel: str) -> tuple[tuple, tuple]:
    """Centre regions (fractions) for groups a and b so that 'a REL b' tends to hold."""
    lo = (0.0, _HALF - _SPLIT)
    hi = (_HALF + _SPLIT, 1.0)
    if rel == "left of":
        return (lo[0], 0.0, lo[1], 1.0), (hi[0], 0.0, hi[1], 1.0)
    if rel == "right of":
        return (hi[0], 0.0, hi[1], 1.0), (lo[0], 0.0, lo[1], 1.0)
    if rel == "above":
        return (0.0, lo[0], 1.0, lo[1]), (0.0, hi[0], 1.0, hi[1])
    if rel == "below":
        return (0.0, hi[0], 1.0, hi[1]), (0.0, lo[0], 1.0, lo[1])
    raise ValueError(f"unknown relation {rel!r}")


def _choice(rng: np.random.Generator, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def sample_scene(rng: np.random.Generator, size: int = 64, holdout=(), backgrounds=BACKGROUNDS,
                 relation_ratio: float = 1.0, cells: int = 0) -> dict:
    """A training-distribution scene: 1-3 groups of identical objects, 1-4 objects in all.

    `holdout` lists (color, shape) pairs that must not appear (the held-out combinations of the
    train split). Two-group scenes always get a clear relation (group a REL group b).
    """
    held = {tuple(h) for h in holdout}
    for _ in range(MAX_DRAWS):
        n_groups = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
        if n_groups == 1:
            counts = [int(rng.choice([1, 2, 3, 4], p=[0.4, 0.25, 0.2, 0.15]))]
        elif n_groups == 2:
            counts = [1, 1]
            if rng.uniform() >= P_SINGLE_PAIR:
                ca = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
                w = np.array([0.6, 0.3, 0.1][: 4 - ca])
                counts = [ca, int(rng.choice(np.arange(1, 5 - ca), p=w / w.sum()))]
        else:
            counts = [1, 1, 1]
            if rng.uniform() < 0.3:
                counts[int(rng.integers(0, 3))] = 2
        groups = _pick_groups(rng, counts, held)
        relation, regions = None, None
        if n_groups == 2:
            rel = _choice(rng, RELATIONS)
            relation = {"a": 0, "rel": rel, "b": 1}
            regions = list(relation_regions(rel))
        objs = None
        for _ in range(10):
            objs = place_objects(rng, size, groups, regions, cells=cells)
            if objs is not None and (relation is None or
                                     relation_of(objs, 0, 1, relation_ratio) == relation["rel"]):
                break
            objs = None
        if objs is None:
            continue
        bg = sample_background(rng, size, _choice(rng, tuple(backgrounds)))
        return {"size": int(size), "background": bg, "groups": groups, "objects": objs,
                "relation": relation}
    raise ValueError(f"no training scene fits {size}-pixel images with cells={cells}: no layout in {MAX_DRAWS} draws; "
                     "choose other cells (0: free placement) or another size")


def _pick_groups(rng: np.random.Generator, counts: list[int], held: set) -> list[dict]:
    """Groups of distinct (shape, color, size) with the given counts, no (color, shape) pair in `held`."""
    groups, keys = [], set()
    for _ in range(MAX_DRAWS):
        shape, color = _choice(rng, SHAPES), _choice(rng, tuple(COLORS))
        sz = _choice(rng, tuple(SIZES))
        if (color, shape) in held or (shape, color, sz) in keys:
            continue
        keys.add((shape, color, sz))
        groups.append(make_group(shape, color, sz, counts[len(groups)]))
        if len(groups) == len(counts):
            return groups
    raise ValueError(f"the holdout {sorted(held)} leaves too few (color, shape) pairs for {len(counts)} distinct "
                     "groups")
