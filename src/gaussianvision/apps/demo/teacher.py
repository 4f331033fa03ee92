"""The demo's teacher recipe: stage rgb on the synthetic world with five tricks on top of the
library's plain CLIP stage (train.stages.RGBClipStage), all of them about the world's relations
("a red circle left of a blue square"), which a tiny CLIP trained on a few thousand captions
otherwise never learns (docs/training.md, benchmarks/results/demo_teacher_trials.md):

lock_text_steps > 0 holds the text tower at its (random) initialization for that many optimizer
steps, then trains it with the rest. The image tower first learns to match a fixed, random text
embedding of the captions, in which every word moves the embedding; otherwise both towers settle
on the attribute that is easiest to see (colour) and suppress the others together.

hard_negatives: batches carry "negative" (one false caption per image, KEY.neg.txt, written by
the world) and the loss is NegCLIP's (train.losses.make_negclip_loss): each image must also beat
its own near-identical false caption.

mirror_pairs: the fraction of each batch given to mirror twins (world.mirror.mirror_pairs): samples
whose captions state a direction are joined by their image flipped and caption's directions
swapped, so relations are contrasted on both sides; the batch keeps its size.

word_loss, word_boost: a head on the image embedding predicts the caption's words (words.py),
weighted by word_loss, with the named words weighed word_boost times; not exported.

The fifth, relation oversampling, is a property of the data and lives in pipeline.py.
`gsv train --stage rgb` builds a TeacherStage when any of these flags is given.
"""
from __future__ import annotations

import functools
import math

import torch

from gaussianvision.train.losses import make_negclip_loss
from gaussianvision.train.build import build_stage as build_library_stage
from gaussianvision.train.build import check_stage
from gaussianvision.train.stages import RGBClipStage, is_text_param

from .words import WORD_HEAD, CaptionWords
from .world.mirror import mirror_pairs as world_mirror_pairs

__all__ = ["TeacherStage", "build_stage", "TEACHER_OPTIONS", "uses_teacher"]

TEACHER_OPTIONS = ("lock_text_steps", "hard_negatives", "mirror_pairs", "word_loss", "word_boost")


def uses_teacher(**settings) -> bool:
    """True when any teacher option (TEACHER_OPTIONS) is set to something other than off."""
    return any(bool(settings.get(k)) for k in TEACHER_OPTIONS)


def _check_settings(lock_text_steps, mirror_pairs, word_loss, word_boost) -> None:
    if not (word_loss >= 0 and math.isfinite(word_loss)):
        raise ValueError(f"--word-loss must be a weight >= 0, got {word_loss}")
    if word_boost and not word_loss:
        raise ValueError("--word-boost needs --word-loss > 0")
    for w, f in (word_boost or {}).items():
        if not (isinstance(f, (int, float)) and f > 0 and math.isfinite(f)):
            raise ValueError(f"--word-boost {w}={f}: the factor must be a positive number")
    if lock_text_steps < 0:
        raise ValueError(f"--lock-text-steps must be >= 0, got {lock_text_steps}")
    if not 0.0 <= mirror_pairs <= 1.0:
        raise ValueError(f"--mirror-pairs must be a fraction of the batch in [0, 1], got {mirror_pairs}")


class TeacherStage(RGBClipStage):
    """The library's RGB CLIP stage with the demo's tricks (see the module docstring). describe()
    holds the five settings under the names earlier runs used, so their checkpoints and the
    demo's step cache agree; all five must match on --resume (word_loss's head has parameters
    of its own; the others change the steps)."""

    def __init__(self, model, tokenizer, info=None, meta=None, lock_text_steps: int = 0,
                 hard_negatives: bool = False, mirror_pairs: float = 0.0, word_loss: float = 0.0,
                 word_boost: dict[str, float] | None = None):
        _check_settings(lock_text_steps, mirror_pairs, word_loss, word_boost)
        super().__init__(model, tokenizer, info, {**(meta or {}), "lock_text_steps": int(lock_text_steps),
                                                  "hard_negatives": bool(hard_negatives),
                                                  "mirror_pairs": float(mirror_pairs), "word_loss": float(word_loss),
                                                  "word_boost": dict(word_boost or {})})
        self.word_loss = float(word_loss)
        if self.word_loss > 0:  # the head trains with the model (named WORD_HEAD), is left out of the export
            model.add_module(WORD_HEAD, _word_head(model, tokenizer, word_boost))
        self.mirror_pairs = float(mirror_pairs)
        self.hard_negatives = bool(hard_negatives)
        self.negclip_loss = make_negclip_loss(self.rank, self.world_size)
        self.lock_text_steps = int(lock_text_steps)
        self._text_params = [p for n, p in model.named_parameters() if is_text_param(n)]
        self._text_locked = False

    def resume_keys(self) -> dict:
        # every teacher option changes the training (regression (new-user trial): a resume without
        # --hard-negatives / --lock-text-steps went on without them)
        return {**super().resume_keys(), "word_loss": 0.0, "word_boost": {}, "lock_text_steps": 0,
                "hard_negatives": False, "mirror_pairs": 0.0}

    def begin_step(self, step: int) -> list:
        """Called by the loop before each optimizer step: the parameters to hold fixed in it."""
        self._text_locked = step < self.lock_text_steps
        return self._text_params if self._text_locked else []

    def prepare(self, batch):
        images, texts, _ = super().prepare(batch)
        if self.hard_negatives and "negative" not in batch:
            raise ValueError("stage rgb with hard negatives needs batches with 'negative' (KEY.neg.txt captions)")
        negatives = list(batch["negative"]) if self.hard_negatives else None
        if self.mirror_pairs > 0:
            images, texts, negatives = world_mirror_pairs(images, texts, round(self.mirror_pairs * len(texts) / 2),
                                                          negatives)
        return images, texts, negatives or []

    def encode_texts(self, tokens):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._text_locked):
            return super().encode_texts(tokens)

    def pair_loss(self, img, txt, scale):
        if self.hard_negatives:
            b = img.shape[0]
            return self.negclip_loss(img, txt[:b], txt[b:], scale)
        return super().pair_loss(img, txt, scale)

    def extra_loss(self, loss, logs, features, tokens):
        logs["text_locked"] = float(self._text_locked)
        if self.word_loss > 0:
            words = getattr(self.model, WORD_HEAD)(features, tokens)
            logs["clip_loss"], logs["word_loss"] = float(loss.detach()), float(words.detach())
            loss = loss + self.word_loss * words
        return loss

    def exported_state(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(WORD_HEAD + ".")}


def _word_head(model, tokenizer, word_boost) -> CaptionWords:
    special = sorted(set(int(t) for t in tokenizer([""])[0]))  # padding, start, end
    dim = getattr(model.visual, "output_dim", None) or int(model.text_projection.shape[-1])
    head = CaptionWords(int(dim), ignore_ids=special,
                        boost={_one_token(tokenizer, w, special): f for w, f in (word_boost or {}).items()})
    return head.to(next(model.parameters()).device)


def _one_token(tokenizer, word: str, special) -> int:
    """The token id of a word the tokenizer keeps whole (for --word-boost); `special` are the ids
    of padding, start and end."""
    special = set(special)
    row = [int(t) for t in tokenizer([word])[0] if int(t) not in special]
    if len(row) != 1:
        raise ValueError(f"--word-boost {word!r}: not a single token of the tokenizer ({len(row)} tokens)")
    return row[0]


def build_stage(stage: str, *, lock_text_steps: int = 0, hard_negatives: bool = False, mirror_pairs: float = 0.0,
                word_loss: float = 0.0, word_boost: dict | None = None, **options):
    """train.build.build_stage (options: its arguments) with stage rgb built as a TeacherStage. The
    teacher options given to stage 1 or 2 are refused with the messages `gsv train` always gave."""
    stage = check_stage(stage, options.get("cache_teacher", False), options.get("hflip", 0.0))
    if stage != "rgb":
        _refuse_outside_rgb(lock_text_steps, hard_negatives, mirror_pairs, word_loss, word_boost)
    teacher = functools.partial(TeacherStage, lock_text_steps=lock_text_steps, hard_negatives=hard_negatives,
                                mirror_pairs=mirror_pairs, word_loss=word_loss, word_boost=word_boost)
    return build_library_stage(stage, rgb_stage=teacher, **options)


def _refuse_outside_rgb(lock_text_steps, hard_negatives, mirror_pairs, word_loss, word_boost) -> None:
    if word_loss or word_boost:
        raise ValueError("--word-loss and --word-boost apply to --stage rgb")
    if hard_negatives:
        raise ValueError("--hard-negatives applies to --stage rgb")
    if mirror_pairs:
        raise ValueError("--mirror-pairs applies to --stage rgb")
    if lock_text_steps:
        raise ValueError("--lock-text-steps applies to --stage rgb (stages 1 and 2 keep the text tower frozen)")
