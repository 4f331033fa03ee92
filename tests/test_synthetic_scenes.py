"""The synthetic world's drawing, labels and captions, checked against the pixels.

Labels are re-derived from the rendered images (colors at object centres, connected components,
shape descriptors, blob centroids) rather than read back from the generator's metadata.
"""
import copy
import re
from collections import Counter

import numpy as np
import pytest

from gaussianvision.apps.demo.world import (COLORS, DEFAULT_HOLDOUT, SHAPES, TASKS, render_scene,
                                           sample_scene, task_sample, train_sample)

ndi = pytest.importorskip("scipy.ndimage")

# Written out here (not imported) so a wrong palette entry in the generator cannot hide.
PALETTE = {"red": (215, 40, 40), "orange": (245, 140, 25), "yellow": (240, 220, 45),
           "green": (45, 165, 65), "blue": (40, 85, 220), "purple": (145, 55, 195)}


def _arr(img):
    return np.asarray(img, dtype=np.int32)


def _plain(scene, gray=0.5, scale=1):
    """The same scene on a flat gray background, optionally drawn `scale` times larger."""
    s = copy.deepcopy(scene)
    s["background"] = {"kind": "plain", "colors": [[gray, gray, gray]]}
    if scale != 1:
        s["size"] *= scale
        for o in s["objects"]:
            o["x"] *= scale
            o["y"] *= scale
            o["radius"] *= scale
    return s


EIGHT = np.ones((3, 3), dtype=int)  # thin star tips touch their star only diagonally


def _saturated(a, thresh=60):
    # Backgrounds are near-gray; every palette color has a channel spread of 120 or more.
    return (a.max(-1) - a.min(-1)) > thresh


def test_palette_is_the_documented_one():
    assert {k: tuple(v) for k, v in COLORS.items()} == PALETTE


def test_render_is_a_pure_function_of_the_scene():
    rng = np.random.default_rng(5)
    scene = sample_scene(rng, 48)
    a, b = _arr(render_scene(scene)), _arr(render_scene(copy.deepcopy(scene)))
    assert a.shape == (48, 48, 3) and np.array_equal(a, b)


def test_edges_are_antialiased():
    _, scene = task_sample(0, "shape", 0, 64, 0)  # a circle
    a = _arr(render_scene(_plain(scene)))
    bg = np.array([128, 128, 128])
    rgb = np.array(scene["objects"][0]["rgb"])
    # Fraction of the way from background to object color, per pixel.
    t = ((a - bg) @ (rgb - bg)) / float((rgb - bg) @ (rgb - bg))
    partial = (t > 0.05) & (t < 0.95)
    assert partial.sum() >= 8, "a supersampled circle edge has partially covered pixels"


@pytest.mark.parametrize("i", range(30))
def test_color_task_centre_pixel_has_the_class_color(i):
    label = i % len(TASKS["color"].classes)
    img, scene = task_sample(3, "color", i, 64, label)
    o = scene["objects"][0]
    px = _arr(img)[int(o["y"]), int(o["x"])]
    nearest = min(PALETTE, key=lambda k: np.sum((np.array(PALETTE[k]) - px) ** 2))
    assert nearest == TASKS["color"].classes[label]
    assert np.abs(px - np.array(PALETTE[nearest])).max() <= 12  # jitter is +-10 levels


def test_count_task_blobs_match_the_label():
    for i in range(24):
        label = i % 4
        img, scene = task_sample(1, "count", i, 64, label)
        # On its own textured background, count saturated blobs ...
        _, n_tex = ndi.label(_saturated(_arr(img)), EIGHT)
        # ... and on a plain one, every non-background blob.
        a = _arr(render_scene(_plain(scene)))
        _, n_plain = ndi.label(np.abs(a - 128).max(-1) > 20, EIGHT)
        assert n_tex == n_plain == label + 1, (i, n_tex, n_plain, label)


def test_train_scene_object_count_matches_components_and_groups():
    for i in range(40):
        _, _, scene, _ = train_sample(2, "train", i, 64, DEFAULT_HOLDOUT)
        a = _arr(render_scene(_plain(scene)))
        _, n = ndi.label(np.abs(a - 128).max(-1) > 20, EIGHT)
        assert n == len(scene["objects"]) == sum(g["count"] for g in scene["groups"])
        assert 1 <= n <= 4


def _shape_of(mask_weight):
    """Classify a single blob from coverage weights: area over the circumscribed disc, and
    solidity (area over convex hull area)."""
    from scipy.spatial import ConvexHull
    w = mask_weight
    ys, xs = np.nonzero(w > 0.5)
    area = w.sum()
    cy, cx = (w * np.arange(w.shape[0])[:, None]).sum() / area, (w * np.arange(w.shape[1])).sum() / area
    rmax = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 0.5
    fill = area / (np.pi * rmax ** 2)
    pts = np.stack([xs, ys], 1).astype(float)
    corners = np.concatenate([pts + d for d in ([0, 0], [1, 0], [0, 1], [1, 1])])
    hull = ConvexHull(corners).volume
    solidity = (w > 0.5).sum() / hull
    if solidity > 0.85:
        return "circle" if fill > 0.8 else ("square" if fill > 0.5 else "triangle")
    return "star" if fill < 0.56 else "cross"


@pytest.mark.parametrize("label", range(5))
def test_shape_task_drawn_shape_matches_the_label(label):
    pytest.importorskip("scipy.spatial")
    for i in range(4):
        _, scene = task_sample(4, "shape", 10 * label + i, 64, label)
        a = _arr(render_scene(_plain(scene, scale=3))).astype(float)
        rgb = np.array(scene["objects"][0]["rgb"], dtype=float)
        bg = np.full(3, 128.0)
        w = np.clip(((a - bg) @ (rgb - bg)) / ((rgb - bg) @ (rgb - bg)), 0, 1)
        assert _shape_of(w) == SHAPES[label], (label, i)


def _centroid(a, color):
    d = np.sqrt(((a - np.array(PALETTE[color])) ** 2).sum(-1))
    ys, xs = np.nonzero(d < 40)
    assert len(xs) > 3, f"no {color} blob"
    return xs.mean(), ys.mean()


def test_relation_task_positions_match_the_label():
    t = TASKS["relation"]
    for i in range(24):
        label = i % 4
        img, _ = task_sample(6, "relation", i, 64, label)
        a = _arr(img)
        (rx, ry), (bx, by) = _centroid(a, "red"), _centroid(a, "blue")
        dx, dy = bx - rx, by - ry  # from the red circle to the blue square; y grows downward
        if abs(dx) > abs(dy):
            found = "left of" if dx > 0 else "right of"
        else:
            found = "above" if dy > 0 else "below"
        assert f" {found} " in t.classes[label], (i, found, t.classes[label])


# --------------------------------------------------------------------------------- captions

SHAPE_RE = {"circle": r"(circle|disk)", "square": r"square", "triangle": r"triangle",
            "star": r"star", "cross": r"(cross|plus sign)"}
PLURAL = {"circle": r"(circles|disks)", "square": r"squares", "triangle": r"triangles",
          "star": r"stars", "cross": r"(crosses|plus signs)"}
COLOR_RE = {"red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "blue": "blue",
            "purple": "(purple|violet)"}
SIZE_RE = {"small": "(small|little|tiny)", "large": "(large|big)"}
COUNT_RE = {1: "(a|an|one)", 2: "(two|a pair of)", 3: "three", 4: "four"}
REL_RE = {"left of": "left of", "right of": "right of", "above": "(above|over)",
          "below": "(below|under|beneath)"}
INV = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _group_re(g):
    noun = SHAPE_RE[g["shape"]] if g["count"] == 1 else PLURAL[g["shape"]]
    c, s, n = COLOR_RE[g["color"]], SIZE_RE[g["size"]], COUNT_RE[g["count"]]
    # "two small red triangles" or "two triangles, small and red"
    return rf"\b{n} ({s} {c} {noun}|{noun}, {s} and {c})\b"


def test_captions_mention_every_group_and_the_relation():
    seen_forms = set()
    for i in range(150):
        _, cap, scene, _ = train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)
        groups = scene["groups"]
        spans = []
        for g in groups:
            m = re.search(_group_re(g), cap)
            assert m, (cap, g)
            spans.append(m.span())
        rel = scene["relation"]
        if rel:
            a, b = spans[rel["a"]], spans[rel["b"]]
            first, second, r = (a, b, rel["rel"]) if a < b else (b, a, INV[rel["rel"]])
            between = cap[first[1]:second[0]]
            assert re.fullmatch(rf" (to the )?{REL_RE[r]} ", between), (cap, rel)
            seen_forms.add("relation")
        if len(groups) == 3:
            seen_forms.add("list")
        if "background" in cap:
            assert re.search(r"on an? \w+ background$", cap), cap
            seen_forms.add("background")
    assert seen_forms == {"relation", "list", "background"}


# The documented naming order of a relation's groups: palette color, then shape, then size.
COLOR_ORDER = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPE_ORDER = ["circle", "square", "triangle", "star", "cross"]


def test_relations_are_stated_from_the_group_named_first_in_palette_order():
    n_rel = 0
    for i in range(200):
        _, cap, scene, _ = train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)
        rel = scene["relation"]
        if not rel:
            continue
        n_rel += 1
        ga, gb = scene["groups"][rel["a"]], scene["groups"][rel["b"]]
        rank = [(COLOR_ORDER.index(g["color"]), SHAPE_ORDER.index(g["shape"]), ["small", "large"].index(g["size"]))
                for g in (ga, gb)]
        first, second, r = (ga, gb, rel["rel"]) if rank[0] <= rank[1] else (gb, ga, INV[rel["rel"]])
        m1, m2 = re.search(_group_re(first), cap), re.search(_group_re(second), cap)
        assert m1 and m2 and m1.end() < m2.start(), (cap, scene["groups"])
        assert re.fullmatch(rf" (to the )?{REL_RE[r]} ", cap[m1.end():m2.start()]), (cap, rel)
    assert n_rel > 50


def test_most_relations_are_between_two_single_objects():
    counts = [tuple(g["count"] for g in s["groups"])
              for s in (train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)[2] for i in range(300)) if s["relation"]]
    single = sum(c == (1, 1) for c in counts) / len(counts)
    assert 0.75 < single < 0.95 and any(max(c) > 1 for c in counts)  # 0.7 + 0.3 x P(1, 1 drawn)


KIND_WORDS = {
    "relation": {"left", "right", "of", "to", "the", "above", "over", "below", "under", "beneath"},
    "count": {"a", "an", "one", "two", "pair", "of", "three", "four"} | {w for v in SHAPE_RE.values()
                                                                      for w in re.findall(r"[a-z]+", v)}
             | {w for v in PLURAL.values() for w in re.findall(r"[a-z]+", v)},
    "shape": {w for v in list(SHAPE_RE.values()) + list(PLURAL.values()) for w in re.findall(r"[a-z]+", v)}
             | {"a", "an"},
    "color": {w for v in COLOR_RE.values() for w in re.findall(r"[a-z]+", v)},
    "size": {w for v in SIZE_RE.values() for w in re.findall(r"[a-z]+", v)} | {"a", "an"},
}


def _changed_words(a: str, b: str) -> tuple[list, list]:
    """Words of a missing from b and words of b missing from a (as multisets: a change that
    moves a group to the front of a relation reorders words without changing them)."""
    x, y = Counter(a.replace(",", " ,").split()), Counter(b.replace(",", " ,").split())
    return list((x - y).elements()), list((y - x).elements())


def test_hard_negative_is_the_caption_with_one_fact_false():
    kinds = set()
    for i in range(200):
        _, cap, scene, neg = train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)
        kind, text = neg["kind"], neg["caption"]
        kinds.add(kind)
        assert text != cap
        old, new = _changed_words(cap, text)
        assert 1 <= max(len(old), len(new)) <= 4, (cap, text)
        allowed = KIND_WORDS[kind] | (KIND_WORDS["relation"] if scene["relation"] else set())
        assert set(old) | set(new) <= allowed, (kind, cap, text)
        # false for the image: some group of the scene, or its relation, is no longer described
        described = all(re.search(_group_re(g), text) for g in scene["groups"])
        if kind == "relation":
            assert described and scene["relation"] is not None
        else:
            assert not described, (kind, cap, text)
    assert kinds == {"relation", "count", "shape", "color", "size"}


def test_captions_vary():
    caps = [train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)[1] for i in range(60)]
    assert len(set(caps)) >= 55
    prefixes = {c.split(" of ")[0] for c in caps if c.startswith(("a photo", "an image", "a picture", "a drawing"))}
    assert len(prefixes) >= 3


def test_train_scenes_avoid_the_heldout_combinations():
    held = {tuple(h) for h in DEFAULT_HOLDOUT}
    seen = set()
    for i in range(400):
        scene = sample_scene(np.random.default_rng([9, i]), 64, holdout=DEFAULT_HOLDOUT)
        combos = {(g["color"], g["shape"]) for g in scene["groups"]}
        assert not combos & held
        seen |= combos
    assert len(seen) == len(PALETTE) * len(SHAPES) - len(held)  # everything else does occur


def test_objects_stay_inside_and_apart():
    from gaussianvision.apps.demo.world.scenes import extent
    for i in range(200):
        scene = sample_scene(np.random.default_rng([11, i]), 64)
        objs = scene["objects"]
        for o in objs:
            e = extent(o["shape"], o["radius"])
            assert e <= o["x"] <= 64 - e and e <= o["y"] <= 64 - e
        for j, o in enumerate(objs):
            for p in objs[j + 1:]:
                d = np.hypot(o["x"] - p["x"], o["y"] - p["y"])
                assert d > extent(o["shape"], o["radius"]) + extent(p["shape"], p["radius"])


@pytest.mark.parametrize("cells", [8, 4])
def test_layout_grid_puts_every_centre_near_a_cell_centre(cells):
    """cells > 0: each object centre is within LAYOUT_JITTER of a cell of the centre of one of
    cells x cells cells, in train scenes and in every task; the jitter is used (not always 0)."""
    from gaussianvision.apps.demo.world import TASK_NAMES
    from gaussianvision.apps.demo.world.scenes import LAYOUT_JITTER
    step = 64 / cells
    offsets = []
    scenes = [train_sample(0, "train", i, 64, DEFAULT_HOLDOUT, cells=cells)[2] for i in range(40)]
    scenes += [task_sample(0, t, i, 64, i % len(TASKS[t].classes), cells=cells)[1]
               for t in TASK_NAMES for i in range(10)]
    for s in scenes:
        for o in s["objects"]:
            for v in (o["x"], o["y"]):
                k = np.floor(v / step)
                offsets.append(v - (k + 0.5) * step)
    offsets = np.abs(offsets)
    assert offsets.max() <= LAYOUT_JITTER * step + 1e-3
    assert offsets.mean() > 0.2 * LAYOUT_JITTER * step


def test_free_placement_without_cells():
    xs = [o["x"] for i in range(40)
          for o in train_sample(0, "train", i, 64, DEFAULT_HOLDOUT, cells=0)[2]["objects"]]
    off = np.abs(np.asarray(xs) % 8 - 4)
    assert off.max() > 2  # centres away from the 8-px cell centres occur


def test_world_rejects_bad_cells(tmp_path):
    from gaussianvision.apps.demo.world import make_world
    with pytest.raises(ValueError, match="cells"):
        make_world(tmp_path / "w", n_train=2, n_test=1, n_task=1, cells=32)  # 2-px cells at 64 px


# --------------------------------------------------------------------------------- mirror twins

def _mirrored(scene, axis):
    s = copy.deepcopy(scene)
    key = "x" if axis == "x" else "y"
    for o in s["objects"]:
        o[key] = s["size"] - o[key]
        o["angle"] = -o["angle"]
    return s


@pytest.mark.parametrize("axis", ["x", "y"])
def test_mirror_caption_states_the_mirrored_scenes_relation(axis):
    """The twin's caption is true of the mirrored scene: its relation (recomputed from the mirrored
    positions) is stated from the same palette-first group, and captions without a direction on
    that axis (or with a triangle or star, top-bottom) have no twin."""
    from gaussianvision.apps.demo.world.mirror import mirror_caption
    from gaussianvision.apps.demo.world.scenes import relation_of
    on_axis = {"x": ("left of", "right of"), "y": ("above", "below")}[axis]
    twins = 0
    for i in range(300):
        _, cap, scene, _ = train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)
        twin = mirror_caption(cap, axis)
        rel = scene["relation"]
        asym = any(g["shape"] in ("triangle", "star") for g in scene["groups"])
        if rel is None or rel["rel"] not in on_axis:
            if rel is not None or len(scene["objects"]) > 1:
                assert twin is None, (cap, twin)
            continue
        if axis == "y" and asym:
            assert twin is None, cap
            continue
        assert twin is not None, cap
        twins += 1
        m = _mirrored(scene, axis)
        new_rel = relation_of(m["objects"], rel["a"], rel["b"])
        assert new_rel == INV[rel["rel"]]
        ga, gb = scene["groups"][rel["a"]], scene["groups"][rel["b"]]
        rank = [(COLOR_ORDER.index(g["color"]), SHAPE_ORDER.index(g["shape"]), ["small", "large"].index(g["size"]))
                for g in (ga, gb)]
        first, second, r = (ga, gb, new_rel) if rank[0] <= rank[1] else (gb, ga, INV[new_rel])
        m1, m2 = re.search(_group_re(first), twin), re.search(_group_re(second), twin)
        assert m1 and m2 and re.fullmatch(rf" (to the )?{REL_RE[r]} ", twin[m1.end():m2.start()]), (cap, twin)
        # every word but the direction is kept
        assert [w for w in cap.split() if w not in INV_WORDS] == [w for w in twin.split() if w not in INV_WORDS]
    assert twins > 15


INV_WORDS = {"left", "right", "above", "below", "over", "under", "beneath", "top", "bottom"}


def test_mirror_caption_position_words_and_errors():
    from gaussianvision.apps.demo.world.mirror import mirror_caption
    assert mirror_caption("a red cross in the top left corner", "x") == "a red cross in the top right corner"
    assert mirror_caption("a red cross in the top left corner", "y") == "a red cross in the bottom left corner"
    assert mirror_caption("a red star at the top", "y") is None  # a mirrored star points down
    assert mirror_caption("a blue square beneath a red disk", "y") == "a blue square over a red disk"
    assert mirror_caption("a bright red circle in the middle", "x") is None
    with pytest.raises(ValueError, match="axis"):
        mirror_caption("a red circle", "z")


def test_mirrored_image_is_the_mirrored_scene():
    """Flipping the drawn image left-right = drawing the scene mirrored (plain background). PIL's
    polygon fill is not mirror-symmetric, so edge pixels may differ by up to two of their 16
    subsamples (32 levels on the strongest edge); the unflipped drawing differs far more."""
    for i in range(40):
        _, cap, scene, _ = train_sample(0, "train", i, 64, DEFAULT_HOLDOUT)
        if not scene["relation"]:
            continue
        drawn = _arr(render_scene(_plain(scene)))
        b = _arr(render_scene(_mirrored(_plain(scene), "x")))
        d = np.abs(drawn[:, ::-1] - b)
        assert d.max() <= 40 and d.mean() < 1.0, (i, d.max(), d.mean())
        assert np.abs(drawn - b).mean() > 3 * d.mean() + 1


def test_mirror_pairs_keeps_the_batch_size_and_pairs_twins():
    import torch
    from gaussianvision.apps.demo.world.mirror import mirror_pairs
    imgs = torch.rand(6, 3, 4, 5)
    texts = ["a red circle", "a red circle left of a blue square", "a red star above a blue square",
             "a red cross above a blue square", "a green square", "a red circle right of a blue disk"]
    negs = [t + " x" for t in texts]
    out, t2, n2 = mirror_pairs(imgs, texts, 2, negs)
    assert out.shape == imgs.shape
    # two twins (the star has none top-bottom), then the rest in order, two left out
    assert t2 == [texts[1], texts[3], "a red circle right of a blue square", "a red cross below a blue square",
                  texts[0], texts[2]]
    assert n2[2] == "a red circle right of a blue square x" and n2[4] == negs[0]
    assert torch.equal(out[0], imgs[1]) and torch.equal(out[2], imgs[1].flip(-1))
    assert torch.equal(out[3], imgs[3].flip(-2)) and torch.equal(out[5], imgs[2])
    same, t3, n3 = mirror_pairs(imgs, texts, 0)
    assert torch.equal(same, imgs) and t3 == texts and n3 is None
    with pytest.raises(ValueError, match="6 images but 5 captions"):
        mirror_pairs(imgs, texts[:5], 1)
