"""Compositional captions for scenes: templates and synonyms, chosen by the scene's own rng.

Every caption names each group's count, size, color and shape (in one of two word orders:
"two small red triangles" or "two triangles, small and red"), the relation between the two
groups of a two-group scene (possibly stated from the other side: "a blue circle right of two
small red triangles"), and optionally the background and, for a lone object, where it is.
The canonical words (first in each list) are the ones the zero-shot prompts use; synonyms are
rarer so a tiny text encoder trained on a few thousand captions still sees the canonical words
most.
"""
from __future__ import annotations

import numpy as np

from .scenes import INVERSE

__all__ = ["SHAPE_WORDS", "COLOR_WORDS", "SIZE_WORDS", "COUNT_WORDS", "RELATION_WORDS",
           "BACKGROUND_WORDS", "POSITION_WORDS", "caption_scene", "group_phrase", "region_of"]

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
    if len(options) == 1 or rng.uniform() >= _P_SYNONYM:
        return options[0]
    return options[1 + int(rng.integers(0, len(options) - 1))]


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
    rel = scene.get("relation")
    if rel is not None:
        a, b, r = rel["a"], rel["b"], rel["rel"]
        if rng.uniform() < 0.5:  # say it from the other group's side
            a, b, r = b, a, INVERSE[r]
        body = f"{group_phrase(rng, groups[a])} {_word(rng, RELATION_WORDS[r])} {group_phrase(rng, groups[b])}"
    else:
        # "x, small and red" inside a comma-separated list would be ambiguous.
        phrases = [group_phrase(rng, g, allow_postfix=len(groups) == 1) for g in groups]
        body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        objs = scene["objects"]
        if len(objs) == 1 and rng.uniform() < 0.4:
            row, col = region_of(objs[0]["x"], objs[0]["y"], scene["size"])
            body += " " + _word(rng, POSITION_WORDS[row][col])
    if rng.uniform() < 0.5:
        body += f" on a {_word(rng, BACKGROUND_WORDS[scene['background']['kind']])} background"
    return prefix + body
