"""Compositional captions for scenes: templates and synonyms, chosen by the scene's own rng.

Every caption names each group's count, size, color and shape (in one of two word orders:
"two small red triangles" or "two triangles, small and red"), the relation between the two
groups of a two-group scene, and optionally the background and, for a lone object, where it is.

A relation is always stated from the group that comes first in a fixed order of the groups'
words (palette color, then shape, then size: `first_named`): "two small red triangles left of
a blue circle", never "a blue circle right of two small red triangles". The words of a caption
then fix its meaning whatever their order, so a text tower that reads a caption as a bag of
words (what small contrastive text towers become: Yuksekgonul et al., ICLR 2023) can still
learn relations; with both phrasings, "red ... left ... blue" and "blue ... left ... red" hold
the same words and opposite meanings (docs/world.md).
The canonical words (first in each list) are the ones the zero-shot prompts use; synonyms are
rarer so a tiny text encoder trained on a few thousand captions still sees the canonical words
most.
"""
from __future__ import annotations

import numpy as np

from gaussianvision.apps.demo.world.scenes import COLORS, INVERSE, SHAPES, SIZES

__all__ = ["SHAPE_WORDS", "COLOR_WORDS", "SIZE_WORDS", "COUNT_WORDS", "RELATION_WORDS",
           "BACKGROUND_WORDS", "POSITION_WORDS", "caption_scene", "group_phrase", "region_of", "first_named"]

# (singular, plural); the first entry is canonical.
SHAPE_WORDS = {
    "circle": [("circle", "circles"), ("disk", "disks")],
    "square": [("square", "squares")],
    "triangle": [("triangle", "triangles")],
    "star": [("star", "stars")],
    "cross": [("cross", "crosses"), ("plus sign", "plus signs")],
}
COLOR_WORDS = {"red": ["red"], "orange": ["orange"], "yellow": ["yellow"], "green": ["green"],
               "blue": ["blue"], "purple": ["purple", "violet"]}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big"]}
COUNT_WORDS = {1: ["a", "one"], 2: ["two", "a pair of"], 3: ["three"], 4: ["four"]}
RELATION_WORDS = {"left of": ["left of", "to the left of"], "right of": ["right of", "to the right of"],
                  "above": ["above", "over"], "below": ["below", "under", "beneath"]}
BACKGROUND_WORDS = {"gradient": ["gradient", "shaded"], "stripes": ["striped"], "noise": ["noisy", "mottled"],
                    "checker": ["checkered", "checkerboard"], "plain": ["plain"]}
# 3 x 3 regions of the image, indexed [row][col].
POSITION_WORDS = [
    [["in the top left corner"], ["at the top"], ["in the top right corner"]],
    [["on the left"], ["in the middle", "in the centre"], ["on the right"]],
    [["in the bottom left corner"], ["at the bottom"], ["in the bottom right corner"]],
]
_PREFIXES = ["", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "a photo showing "]

_P_SYNONYM = 0.2  # how often a non-canonical synonym replaces the canonical word


def _word(rng: np.random.Generator, options: list):
    # Always two draws, whatever the number of options: a caption of a scene with one word
    # changed (negatives.caption_pair) then keeps every other choice of the original.
    u, k = rng.uniform(), int(rng.integers(0, 1 << 30))
    if len(options) == 1 or u >= _P_SYNONYM:
        return options[0]
    return options[1 + k % (len(options) - 1)]


def first_named(ga: dict, gb: dict) -> bool:
    """True if group `ga` is named before group `gb` in a relation (palette color, shape, size order)."""
    def rank(g):
        return list(COLORS).index(g["color"]), SHAPES.index(g["shape"]), list(SIZES).index(g["size"])
    return rank(ga) <= rank(gb)


def _article(count_word: str, next_word: str) -> str:
    if count_word == "a" and next_word[:1] in "aeiou":
        return "an"
    return count_word


def group_phrase(rng: np.random.Generator, g: dict, allow_postfix: bool = True) -> str:
    n = g["count"]
    sing, plur = _word(rng, SHAPE_WORDS[g["shape"]])
    noun = sing if n == 1 else plur
    size, color = _word(rng, SIZE_WORDS[g["size"]]), _word(rng, COLOR_WORDS[g["color"]])
    cw = _word(rng, COUNT_WORDS[n])
    if not allow_postfix or rng.uniform() < 0.8:
        return f"{_article(cw, size)} {size} {color} {noun}"
    return f"{_article(cw, noun)} {noun}, {size} and {color}"


def region_of(x: float, y: float, size: int) -> tuple[int, int]:
    """(row, col) of the 3 x 3 grid cell that holds the point (x, y)."""
    return min(2, int(3 * y / size)), min(2, int(3 * x / size))


def caption_scene(rng: np.random.Generator, scene: dict) -> str:
    groups = scene["groups"]
    prefix = _PREFIXES[int(rng.integers(0, len(_PREFIXES)))]
    # Each group's words come from its own generator, so naming the groups in another order
    # (a changed color can move a group to the front of a relation) keeps every group's wording.
    seeds = [int(rng.integers(0, 2 ** 63 - 1)) for _ in groups]

    def phrase(i: int, allow_postfix: bool = True) -> str:
        return group_phrase(np.random.default_rng(seeds[i]), groups[i], allow_postfix)

    rel = scene.get("relation")
    if rel is not None:
        a, b, r = rel["a"], rel["b"], rel["rel"]
        if not first_named(groups[a], groups[b]):
            a, b, r = b, a, INVERSE[r]
        body = f"{phrase(a)} {_word(rng, RELATION_WORDS[r])} {phrase(b)}"
    else:
        # "x, small and red" inside a comma-separated list would be ambiguous.
        phrases = [phrase(i, allow_postfix=len(groups) == 1) for i in range(len(groups))]
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        objs = scene["objects"]
        if len(objs) == 1 and rng.uniform() < 0.4:
            row, col = region_of(objs[0]["x"], objs[0]["y"], scene["size"])
            body += " " + _word(rng, POSITION_WORDS[row][col])
    if rng.uniform() < 0.5:
        body += f" on a {_word(rng, BACKGROUND_WORDS[scene['background']['kind']])} background"
    return prefix + body
