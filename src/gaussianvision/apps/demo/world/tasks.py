"""Held-out zero-shot tasks: class names, prompt templates and a scene sampler per class.

Prompts only use words the training captions use, in the training captions' phrasings, and
average (clip_benchmark averages the embeddings of all templates of a class) over the
attributes a task does not ask about: the shape task's templates run over every size and
color ("a photo of a small red {c}."), the color task's over every size and shape.

- shape:    one object; class = its shape (5 classes).
- color:    one object; class = its color (6 classes).
- count:    1-4 small red circles; class = the count, named as the captions name such a group
            ("a small red circle", "two small red circles"). Size and color are fixed, as the
            relation task's pair is: a small text tower's count direction depends on the
            color and size words around it, so prompts averaged over every color and size
            (templates cannot put words between the count and the noun) blur it.
- relation: a small red circle and a large blue square; class = where the circle is relative
            to the square ("a small red circle left of a large blue square", "... right of ...",
            "... above ...", "... below ..."). The four prompts hold the same words except the
            relation; captions state a relation from the group first in palette order (red
            before blue: captions.first_named), so the words decide the class.
            The layout is unambiguous: along the relation's axis the centres are apart by at
            least 1.5 times their offset across it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gaussianvision.apps.demo.world.captions import BACKGROUND_WORDS
from gaussianvision.apps.demo.world.scenes import (BACKGROUNDS, COLORS, MAX_DRAWS, RELATIONS, SHAPES, SIZES, make_group,
                                                   place_objects, relation_of, relation_regions, sample_background)

__all__ = ["Task", "TASKS", "TASK_NAMES", "RELATION_PAIR", "COUNT_GROUP"]

# The relation task's fixed pair: group a is the circle, group b the square.
RELATION_PAIR = (("circle", "red", "small"), ("square", "blue", "large"))
COUNT_GROUP = ("circle", "red", "small")
_COUNT_NAMES = ["a small red circle", "two small red circles", "three small red circles", "four small red circles"]


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    description: str
    sampler: Callable = field(repr=False, compare=False)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.classes)

    def sample(self, rng: np.random.Generator, size: int, label: int, cells: int = 0) -> dict:
        """A test-distribution scene whose class is `label` (index into classes); `cells` as in
        scenes.place_objects. ValueError when no scene of the class came out in MAX_DRAWS draws."""
        for _ in range(MAX_DRAWS):
            scene = self.sampler(rng, size, label, cells)
            if scene is not None:
                return scene
        raise ValueError(f"the {self.name} task's class {self.classes[label]!r} does not fit {size}-pixel images with "
                         f"cells={cells}: no layout in {MAX_DRAWS} draws; choose other cells (0: free placement) or "
                         "another size")


def _bg(rng, size):
    return sample_background(rng, size, BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))])


def _pick(rng, seq):
    return seq[int(rng.integers(0, len(seq)))]


def _single(rng, size, shape, color, sz, cells):
    groups = [make_group(shape, color, sz, 1)]
    objs = place_objects(rng, size, groups, cells=cells)
    if objs is None:
        return None
    return {"size": int(size), "background": _bg(rng, size), "groups": groups, "objects": objs,
            "relation": None}


def _shape_sampler(rng, size, label, cells):
    return _single(rng, size, SHAPES[label], _pick(rng, tuple(COLORS)), _pick(rng, tuple(SIZES)), cells)


def _color_sampler(rng, size, label, cells):
    return _single(rng, size, _pick(rng, SHAPES), tuple(COLORS)[label], _pick(rng, tuple(SIZES)), cells)


def _count_sampler(rng, size, label, cells):
    groups = [make_group(*COUNT_GROUP, label + 1)]
    objs = place_objects(rng, size, groups, cells=cells)
    if objs is None:
        return None
    return {"size": int(size), "background": _bg(rng, size), "groups": groups, "objects": objs,
            "relation": None}


def _relation_sampler(rng, size, label, cells):
    rel = RELATIONS[label]
    groups = [make_group(s, c, z, 1) for s, c, z in RELATION_PAIR]
    objs = place_objects(rng, size, groups, list(relation_regions(rel)), cells=cells)
    if objs is None or relation_of(objs, 0, 1, ratio=1.5) != rel:
        return None
    return {"size": int(size), "background": _bg(rng, size), "groups": groups, "objects": objs,
            "relation": {"a": 0, "rel": rel, "b": 1}}


def _bg_templates(prefixes=("a photo of {c}.",)):
    out = list(prefixes)
    out += [f"{{c}} on a {BACKGROUND_WORDS[k][0]} background." for k in BACKGROUNDS]
    return tuple(out)


_pair_a = " ".join(reversed(RELATION_PAIR[0]))  # "small red circle"
_pair_b = " ".join(reversed(RELATION_PAIR[1]))

TASKS: dict[str, Task] = {
    "shape": Task(
        "shape", SHAPES,
        tuple(f"a photo of a {z} {c} {{c}}." for z in SIZES for c in COLORS),
        "one object on a textured background; class = its shape", _shape_sampler),
    "color": Task(
        "color", tuple(COLORS),
        tuple(f"a photo of a {z} {{c}} {s}." for z in SIZES for s in SHAPES),
        "one object on a textured background; class = its color", _color_sampler),
    "count": Task(
        "count", tuple(_COUNT_NAMES),
        _bg_templates(("a photo of {c}.", "an image of {c}.", "a picture of {c}.", "{c}.")),
        "1-4 small red circles; class = how many", _count_sampler),
    "relation": Task(
        "relation", tuple(f"a {_pair_a} {r} a {_pair_b}" for r in RELATIONS),
        _bg_templates(("a photo of {c}.", "an image of {c}.", "a picture of {c}.", "{c}.")),
        f"a {_pair_a} and a {_pair_b}; class = where the circle is relative to the square",
        _relation_sampler),
}
TASK_NAMES = tuple(TASKS)
