"""Hard-negative captions: the caption of the same scene with exactly one fact made false.

A contrastive batch of random captions rarely holds two that differ only in a count or in
which object is on the left, so CLIP training learns little of either (and a text tower can
stay a bag of words). Training against a near-identical false caption per image (NegCLIP,
Yuksekgonul et al., ICLR 2023) makes every such fact count. The world writes one negative per
training sample (`KEY.neg.txt`); `gsv train --hard-negatives` uses it.

The negative is worded like the caption (the same template, synonyms and optional phrases:
both are drawn from one generator state, each group's words from its own), so the changed fact
is the only difference, except that a changed color or shape can move a group to the front of
a relation (captions.first_named), which reorders the same phrases:

    caption   "two small red triangles left of a blue circle on a striped background"
    relation  "two small red triangles right of a blue circle on a striped background"
    count     "three small red triangles left of a blue circle on a striped background"
"""
from __future__ import annotations

import copy

import numpy as np

from gaussianvision.apps.demo.world.captions import caption_scene
from gaussianvision.apps.demo.world.scenes import COLORS, INVERSE, SHAPES

__all__ = ["NEGATIVE_KINDS", "perturb_scene", "caption_pair"]

NEGATIVE_KINDS = ("relation", "count", "shape", "color", "size")
P_RELATION = 0.4  # share of relation flips among the negatives of two-group scenes


def _key(g: dict) -> tuple:
    return g["shape"], g["color"], g["size"]


def perturb_scene(rng: np.random.Generator, scene: dict) -> tuple[dict, str]:
    """(copy of `scene` with one fact changed, the kind of change). The changed group never
    becomes identical to another group of the scene, so the description is false, not merely
    odd. Only the description changes: objects and their positions are left as they are."""
    out = copy.deepcopy(scene)
    if out.get("relation") is not None and rng.uniform() < P_RELATION:
        out["relation"]["rel"] = INVERSE[out["relation"]["rel"]]
        return out, "relation"
    groups = out["groups"]
    while True:
        gi = int(rng.integers(0, len(groups)))
        g = groups[gi]
        kind = NEGATIVE_KINDS[1 + int(rng.integers(0, len(NEGATIVE_KINDS) - 1))]
        old = dict(g)
        if kind == "count":
            g["count"] = int(rng.choice([c for c in (1, 2, 3, 4) if c != old["count"]]))
        elif kind == "shape":
            g["shape"] = str(rng.choice([s for s in SHAPES if s != old["shape"]]))
        elif kind == "color":
            g["color"] = str(rng.choice([c for c in COLORS if c != old["color"]]))
        else:
            g["size"] = "large" if old["size"] == "small" else "small"
        if all(_key(g) != _key(h) for j, h in enumerate(groups) if j != gi):
            return out, kind
        g.clear()
        g.update(old)


def caption_pair(rng: np.random.Generator, scene: dict) -> tuple[str, str, str]:
    """(caption, hard negative, kind of change) of a scene, both worded from one state of `rng`.

    Draws from `rng` exactly what caption_scene draws plus one integer (the change's seed)."""
    fork = int(rng.integers(0, 2 ** 63 - 1))
    state = copy.deepcopy(rng.bit_generator.state)
    caption = caption_scene(rng, scene)
    wrong, kind = perturb_scene(np.random.default_rng(fork), scene)
    twin = np.random.Generator(type(rng.bit_generator)())
    twin.bit_generator.state = state
    return caption, caption_scene(twin, wrong), kind
