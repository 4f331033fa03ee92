"""Label sets for /classify: class names and the prompt templates their text embeddings average.

Named sets:
  cifar10                 CIFAR-10's classes with clip_benchmark's CIFAR-10 templates
  <clip_benchmark name>   every dataset clip_benchmark ships both class names and templates for
                          (imagenet1k, mnist, pets, flowers, eurosat, ...)
  world/<task>            the demo world's zero-shot tasks (shape, color, count, relation), the
                          label sets `gsv demo`'s trained model is evaluated on
Custom: class names given with the request, under CUSTOM_TEMPLATES unless templates are given."""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

from .errors import ServeError

__all__ = ["LabelSet", "label_set", "custom_label_set", "label_set_names", "CUSTOM_TEMPLATES"]

CUSTOM_TEMPLATES = ("a photo of a {c}.",)
# torchvision's CIFAR10.classes (clip_benchmark takes CIFAR-10's names from the dataset itself)
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class LabelSet:
    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def _clip_benchmark() -> dict[str, LabelSet]:
    try:
        import clip_benchmark.datasets as cbd
    except ImportError:
        return {}
    folder = os.path.dirname(cbd.__file__)
    with open(os.path.join(folder, "en_classnames.json"), encoding="utf-8") as f:
        names = json.load(f)
    with open(os.path.join(folder, "en_zeroshot_classification_templates.json"), encoding="utf-8") as f:
        templates = json.load(f)
    names["cifar10"] = list(_CIFAR10)
    return {k: LabelSet(k, tuple(names[k]), tuple(templates[k])) for k in sorted(names)
            if isinstance(templates.get(k), list)}


@functools.lru_cache(maxsize=1)
def _world() -> dict[str, LabelSet]:
    from gaussianvision.apps.demo.world.tasks import TASKS
    return {f"world/{k}": LabelSet(f"world/{k}", tuple(t.classes), tuple(t.templates)) for k, t in TASKS.items()}


def label_set_names() -> list[str]:
    return sorted(_clip_benchmark()) + sorted(_world())


def label_set(name: str) -> LabelSet:
    sets = _world() if name.startswith("world/") else _clip_benchmark()
    if name not in sets:
        raise ServeError(404, "unknown_label_set", f"unknown label set {name!r}",
                         known=label_set_names())
    return sets[name]


def custom_label_set(classes: list[str], templates: list[str], max_labels: int) -> LabelSet:
    """Class names given with a request (stripped, unique, in order) under its templates."""
    names = list(dict.fromkeys(c.strip() for c in classes if c.strip()))
    if len(names) < 2:
        raise ServeError(400, "bad_labels", "give at least two distinct class names (labels=a,b,...) or a label_set")
    if len(names) > max_labels:
        raise ServeError(422, "too_many_labels", f"{len(names)} class names, over the limit of {max_labels}",
                         limit=max_labels)
    templates = templates or list(CUSTOM_TEMPLATES)
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise ServeError(400, "bad_template", f"template {bad[0]!r} has no {{c}} for the class name")
    return LabelSet("custom", tuple(names), tuple(templates))
