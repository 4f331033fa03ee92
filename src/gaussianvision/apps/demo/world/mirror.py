"""Mirror twins: a world image flipped left-right (or top-bottom) is again a true scene of the
world once its caption's direction words are swapped, so it is the exact counterfactual of a
relation ("a red circle left of a blue square" <-> "... right of ..."). Put beside the original in
one contrastive batch, the twin makes the relation the only thing that tells the two pairs apart,
on the image side as well as on the text side (a hard negative is only a text).

Top-bottom mirroring is used only when the caption names no triangle or star: those shapes are
not symmetric about a horizontal axis (a mirrored triangle points down, which no caption says).
Every other shape of the world (circle, square, cross) and every background is symmetric about
both axes, and the layout grid and the 3 x 3 position regions are too.
"""
from __future__ import annotations

import re

import torch

__all__ = ["mirror_caption", "mirror_pairs", "AXES"]

AXES = ("x", "y")  # x: left-right mirror (flip the width axis); y: top-bottom (flip the height axis)

_SWAPS = {
    "x": {"left": "right", "right": "left"},
    # "beneath" has no opposite synonym; "over" is one of "above"'s own words
    "y": {"above": "below", "below": "above", "over": "under", "under": "over", "beneath": "over",
          "top": "bottom", "bottom": "top"},
}
_PATTERNS = {axis: re.compile(r"\b(" + "|".join(sorted(words, key=len, reverse=True)) + r")\b")
             for axis, words in _SWAPS.items()}
_ASYMMETRIC_Y = re.compile(r"\b(triangles?|stars?)\b")


def mirror_caption(caption: str, axis: str) -> str | None:
    """The caption of the image mirrored along `axis`, or None when mirroring leaves the caption
    unchanged (no direction word on that axis) or the mirrored image has no true caption in the
    world's words (top-bottom with a triangle or star)."""
    if axis not in AXES:
        raise ValueError(f"mirror_caption: axis must be one of {AXES}, got {axis!r}")
    if not _PATTERNS[axis].search(caption):
        return None
    if axis == "y" and _ASYMMETRIC_Y.search(caption):
        return None
    return _swap(caption, axis)


def _swap(caption: str, axis: str) -> str:
    return _PATTERNS[axis].sub(lambda m: _SWAPS[axis][m.group(1)], caption)


def mirror_pairs(images: torch.Tensor, texts: list[str], pairs: int,
                 negatives: list[str] | None = None) -> tuple[torch.Tensor, list[str], list[str] | None]:
    """A batch of the same size B with up to `pairs` samples followed by their mirror twins.

    images [B, 3, H, W], texts (and hard negatives, mirrored alike) of length B. The first
    `pairs` samples whose captions mirror (left-right tried first) are kept with their twins;
    the other samples fill the batch in order, and as many as the twins need are left out.
    Returns (images [B, 3, H, W], texts, negatives or None). The size stays B so that every
    rank of a distributed run gathers equal batches.
    """
    b = images.shape[0]
    if len(texts) != b or (negatives is not None and len(negatives) != b):
        raise ValueError(f"mirror_pairs: {b} images but {len(texts)} captions"
                         + ("" if negatives is None else f" and {len(negatives)} negatives"))
    pairs = max(0, min(int(pairs), b // 2))
    chosen: list[tuple[int, str, str]] = []
    rest: list[int] = []
    for i, t in enumerate(texts):
        if len(chosen) < pairs:
            for axis in AXES:
                m = mirror_caption(t, axis)
                if m is not None:
                    chosen.append((i, axis, m))
                    break
            else:
                rest.append(i)
        else:
            rest.append(i)
    keep = rest[:b - 2 * len(chosen)]
    order = [i for i, _, _ in chosen]
    twins = [images[i].flip(-1 if axis == "x" else -2) for i, axis, _ in chosen]
    out_images = torch.cat([images[order], *(t[None] for t in twins), images[keep]], 0)
    out_texts = [texts[i] for i in order] + [m for _, _, m in chosen] + [texts[i] for i in keep]
    out_neg = None
    if negatives is not None:
        # the false caption of the mirrored image is the mirrored false caption (one fact false)
        twin_neg = [_swap(negatives[i], axis) for i, axis, _ in chosen]
        out_neg = [negatives[i] for i in order] + twin_neg + [negatives[i] for i in keep]
    return out_images, out_texts, out_neg
