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
import string
from dataclasses import dataclass

from .errors import ServeError

__all__ = ["LabelSet", "label_set", "custom_label_set", "label_set_names", "CUSTOM_TEMPLATES"]

CUSTOM_TEMPLATES = ("a photo of a {c}.",)
MAX_TEMPLATE_CHARS = 300  # a template's length (the text tower reads 77 tokens)
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


def custom_label_set(classes: list[str], templates: list[str], max_labels: int, max_templates: int) -> LabelSet:
    """Class names given with a request (stripped, unique, in order) under its templates (unique, in
    order; each one plain text with {c} where the class name goes)."""
    names = list(dict.fromkeys(c.strip() for c in classes if c.strip()))
    if len(names) < 2:
        raise ServeError(400, "bad_labels", "give at least two distinct class names (labels=a,b,...) or a label_set")
    if len(names) > max_labels:
        raise ServeError(422, "too_many_labels", f"{len(names)} class names, over the limit of {max_labels}",
                         limit=max_labels)
    templates = list(dict.fromkeys(templates)) or list(CUSTOM_TEMPLATES)
    if len(templates) > max_templates:  # every class is embedded once per template: the model's time
        raise ServeError(422, "too_many_templates", f"{len(templates)} templates, over the limit of {max_templates}",
                         limit=max_templates)
    for t in templates:
        why = _template_problem(t)
        if why:
            raise ServeError(400, "bad_template", f"template {t[:80]!r}: {why}")
    return LabelSet("custom", tuple(names), tuple(templates))


def _template_problem(template: str) -> str | None:
    """Why a template cannot be used (None: it can): clip_benchmark fills it with str.format(c=name), so
    any other field, a format spec ({c:>9999999} builds a 10 MB prompt) or a stray brace would fail
    there or worse (regression: 500 internal errors; literal braces are written {{ and }})."""
    if len(template) > MAX_TEMPLATE_CHARS:
        return f"{len(template)} characters, over {MAX_TEMPLATE_CHARS}"
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"not a format string ({e}); write a literal brace as {{{{ or }}}}"
    if not any(f == "c" for f, _, _ in fields):
        return "has no {c} for the class name"
    other = next((f for f, spec, conv in fields if f != "c" or spec or conv), None)
    if other is not None:
        return "only {c} may appear in braces (no other fields, format specs or conversions)"
    return None
