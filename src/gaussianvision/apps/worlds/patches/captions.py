"""The patches world's caption grammar: four sentence frames, each naming all four attributes,
with synonyms for one word in five. Canonical words (scene.ATTRIBUTES) are the ones the task
prompts use; every frame and synonym is listed here, so a caption can be parsed back (tests)."""
from __future__ import annotations

import numpy as np

__all__ = ["FRAMES", "SYNONYMS", "caption", "words_of"]

# {s} size, {h} hue, {t} texture, {p} position
FRAMES = (
    "a {s} {h} {t} patch in the {p}",
    "{t} {h} square, {s}, {p} corner, on gray noise",
    "noise with a {s} {t} patch of {h} at the {p}",
    "in the {p}: a {h} patch, {t} and {s}",
)
SYNONYMS = {
    "plain": "solid", "striped": "lined", "checkered": "chequered", "dotted": "spotted",
    "cyan": "turquoise", "magenta": "pink",
    "small": "little", "medium": "mid-sized", "large": "big",
    "top": "upper", "bottom": "lower",
}
P_SYNONYM = 0.2


def _word(rng: np.random.Generator, word: str) -> str:
    if word in SYNONYMS and rng.random() < P_SYNONYM:
        return SYNONYMS[word]
    return word


def words_of(scene: dict) -> dict[str, str]:
    """The canonical word of each slot: {"s": size, "h": hue, "t": texture, "p": position}."""
    return {"s": scene["size"], "h": scene["hue"], "t": scene["texture"], "p": scene["position"]}


def caption(rng: np.random.Generator, scene: dict) -> str:
    frame = FRAMES[int(rng.integers(0, len(FRAMES)))]
    slots = {}
    for key, word in words_of(scene).items():
        slots[key] = " ".join(_word(rng, w) for w in word.split())
    return frame.format(**slots)
