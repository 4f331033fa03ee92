"""The three training tasks: RGB CLIP from scratch, stage 1 (distillation), stage 2 (CLIP loss).

Batches are dicts from the loaders: "image" [B, 3, H, W] in [0, 1], "splats" (Splats with counts),
"text" list[str].
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .losses import distill_loss, make_clip_loss, make_negclip_loss, token_distill_loss
from .tokens import CachedTokenizer
from .words import WORD_HEAD, CaptionWords

__all__ = ["RGBClipTask", "Stage1Task", "Stage2Task", "freeze_for_stage", "is_text_param", "pixel_input",
           "OPEN_CLIP_EXPORT"]

OPEN_CLIP_EXPORT = "open_clip_model.safetensors"
_TEXT_KEYS = {"text", "transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection",
              "text_model", "text_tower"}
_MAX_LOGIT_SCALE = 4.6052  # ln(100), open_clip's clamp


def is_text_param(name: str) -> bool:
    """True for parameters of the text tower (open_clip names), never for the image side."""
    parts = name.split(".")
    if any(p in ("visual", "stem", "resampler", "gs_visual", "image_tower") for p in parts):
        return False
    return any(p in _TEXT_KEYS for p in parts)


def freeze_for_stage(model: torch.nn.Module, stage: str, unfreeze: list[str] | tuple = ()) -> list[str]:
    """Apply the stage's freezing on top of the model's own (its frozen backbone stays frozen).

    stage "1": only image-side trainable parts train (text tower and logit scale frozen: they do not
    enter the distillation loss). stage "2": the text tower is frozen, the logit scale trains.
    unfreeze: parameter-name prefixes to train in addition (e.g. "ln_final", "text_projection",
    "transformer.resblocks.11"). Returns the names of the trainable parameters.
    """
    for name, p in model.named_parameters():
        if is_text_param(name) or (stage == "1" and name.split(".")[-1] in ("logit_scale", "logit_bias")):
            p.requires_grad_(False)
    names = dict(model.named_parameters())
    for prefix in unfreeze:
        hit = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hit:
            raise ValueError(f"--unfreeze {prefix!r} matches no parameter (examples: {', '.join(list(names)[:5])})")
        for n in hit:
            names[n].requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def pixel_input(images: torch.Tensor, visual) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> resized to the tower's input size and normalized with its mean/std."""
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    size = getattr(visual, "image_size", None) or cfg.get("size")
    if isinstance(size, int):
        size = (size, size)
    if size is not None and tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    return (images - m) / s


class _Base:
    stage = ""

    def __init__(self, model, info=None, meta: dict | None = None):
        self.model = model
        self.rank = getattr(info, "rank", 0)
        self.world_size = getattr(info, "world_size", 1)
        self.meta = dict(meta or {})

    def describe(self) -> dict:
        return {"stage": self.stage, **self.meta}

    def after_step(self):
        ls = getattr(self.model, "logit_scale", None)
        if isinstance(ls, torch.nn.Parameter) and ls.requires_grad:
            with torch.no_grad():
                ls.clamp_(0, _MAX_LOGIT_SCALE)


class RGBClipTask(_Base):
    """Plain CLIP training of an open_clip model on (image, caption) pairs, all parameters trained.

    The export is open_clip's full state dict, so open_clip.create_model(base, pretrained=PATH)
    loads it as it loads a pretrained checkpoint.

    lock_text_steps > 0 holds the text tower at its (random) initialization for that many optimizer
    steps, then trains it with the rest. The image tower first learns to match a fixed, random
    text embedding of the captions, in which every word moves the embedding; otherwise both towers
    settle on the attribute that is easiest to see (colour) and suppress the others together
    (shape: see docs/training.md and benchmarks/results/demo_teacher_trials.md).

    hard_negatives: batches carry "negative" (one false caption per image, KEY.neg.txt) and the
    loss is make_negclip_loss's: each image must also beat its own near-identical false caption.

    mirror_pairs: the fraction of each batch given to mirror twins made by mirror_fn(images, texts, k,
    negatives) (the demo's world supplies one for its caption grammar: apps.demo.world.mirror): samples
    whose captions state a direction are joined by their image flipped and caption's directions
    swapped, so relations are contrasted on both sides; the batch keeps its size.
    """
    stage = "rgb"

    def __init__(self, model, tokenizer, info=None, meta=None, lock_text_steps: int = 0,
                 hard_negatives: bool = False, mirror_pairs: float = 0.0, mirror_fn=None, word_loss: float = 0.0,
                 word_boost: dict[str, float] | None = None):
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
        if mirror_pairs and mirror_fn is None:
            raise ValueError("--mirror-pairs needs a mirror function (the caption grammar's: the app supplies it)")
        super().__init__(model, info, {**(meta or {}), "lock_text_steps": int(lock_text_steps),
                                       "hard_negatives": bool(hard_negatives), "mirror_pairs": float(mirror_pairs),
                                       "word_loss": float(word_loss), "word_boost": dict(word_boost or {})})
        self.word_loss = float(word_loss)
        if self.word_loss > 0:  # the head trains with the model (named WORD_HEAD), is left out of the export
            special = sorted(set(int(t) for t in tokenizer([""])[0]))  # padding, start, end
            dim = getattr(model.visual, "output_dim", None) or int(model.text_projection.shape[-1])
            head = CaptionWords(int(dim), ignore_ids=special,
                                boost={_one_token(tokenizer, w, special): f for w, f in (word_boost or {}).items()})
            model.add_module(WORD_HEAD, head.to(next(model.parameters()).device))
        self.mirror_pairs = float(mirror_pairs)
        self.mirror_fn = mirror_fn
        self.tokenizer = CachedTokenizer(tokenizer)
        self.hard_negatives = bool(hard_negatives)
        self.clip_loss = make_clip_loss(self.rank, self.world_size)
        self.negclip_loss = make_negclip_loss(self.rank, self.world_size)
        self.lock_text_steps = int(lock_text_steps)
        self._text_params = [p for n, p in model.named_parameters() if is_text_param(n)]
        self._text_locked = False

    def begin_step(self, step: int) -> list:
        """Called by the loop before each optimizer step: the parameters to hold fixed in it."""
        self._text_locked = step < self.lock_text_steps
        return self._text_params if self._text_locked else []

    def loss(self, batch):
        if "image" not in batch or "text" not in batch:
            raise ValueError("stage rgb needs batches with 'image' and 'text'")
        if self.hard_negatives and "negative" not in batch:
            raise ValueError("stage rgb with hard negatives needs batches with 'negative' (KEY.neg.txt captions)")
        device = batch["image"].device
        images, texts = batch["image"], list(batch["text"])
        negatives = list(batch["negative"]) if self.hard_negatives else None
        if self.mirror_pairs > 0:
            images, texts, negatives = self.mirror_fn(images, texts, round(self.mirror_pairs * len(texts) / 2),
                                                         negatives)
        x = pixel_input(images, self.model.visual)
        texts = texts + (negatives or [])
        tokens = self.tokenizer(texts).to(device)
        feat = self.model.encode_image(x)
        img = F.normalize(feat, dim=-1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._text_locked):
            txt = self.model.encode_text(tokens, normalize=True)
        scale = self.model.logit_scale.exp()
        b = img.shape[0]
        if self.hard_negatives:
            loss = self.negclip_loss(img, txt[:b], txt[b:], scale)
        else:
            loss = self.clip_loss(img, txt, scale)
        logs = {"logit_scale": float(self.model.logit_scale.detach().exp()), "text_locked": float(self._text_locked)}
        if self.word_loss > 0:
            words = getattr(self.model, WORD_HEAD)(feat, tokens[:b])
            logs["clip_loss"], logs["word_loss"] = float(loss.detach()), float(words.detach())
            loss = loss + self.word_loss * words
        return loss, logs

    def export(self, out_dir):
        from safetensors.torch import save_file
        out = Path(out_dir)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
              if not k.startswith(WORD_HEAD + ".")}
        tmp = out / f".{OPEN_CLIP_EXPORT}.tmp{os.getpid()}"
        save_file(sd, str(tmp))
        os.replace(tmp, out / OPEN_CLIP_EXPORT)


class Stage1Task(_Base):
    """Align the GS encoder to the frozen RGB teacher on (image, splats of that image) pairs."""
    stage = "1"

    def __init__(self, model, kind="cosine", token_weight: float = 0.0, info=None, meta=None,
                 cache_teacher: bool = False, hflip: float = 0.0):
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"--hflip must be a probability in [0, 1], got {hflip}")
        super().__init__(model, info, {**(meta or {}), "cache_teacher": bool(cache_teacher), "hflip": float(hflip)})
        self.kind, self.token_weight = kind, float(token_weight)
        # Each sample is mirrored left-right with this probability in a training step, image and
        # splats together (Splats.hflip), so the target is the teacher's embedding of the mirrored
        # image: twice the distinct (splats, target) pairs from one conversion.
        self.hflip = float(hflip)
        # key (with the side, when mirrored) -> (image checksum, teacher embedding): the teacher is
        # frozen and the only augmentation is the mirror, so each sample's target is computed once
        # per side (a quarter of a step on the demo's tiny tower). Up to two embeddings per sample
        # stay in memory: for data sets that fit in it.
        self._teacher_cache: dict | None = {} if cache_teacher else None
        if self.token_weight > 0 and not (hasattr(model, "encode_image_with_tokens")
                                          and hasattr(model, "encode_rgb_with_tokens")):
            raise ValueError("--token-weight needs a model with encode_image_with_tokens and encode_rgb_with_tokens")

    def loss(self, batch):
        if "image" not in batch or "splats" not in batch:
            raise ValueError("stage 1 needs batches with 'splats' and their source 'image' (load with images)")
        if self.hflip > 0 and torch.is_grad_enabled():
            batch = mirror_some(batch, torch.rand(batch["image"].shape[0]) < self.hflip)
        pixels = pixel_input(batch["image"], getattr(self.model, "base", self.model).visual)
        if self.token_weight > 0:
            with torch.no_grad():
                teacher, t_tok = self.model.encode_rgb_with_tokens(pixels)
            student, s_tok = self.model.encode_image_with_tokens(batch["splats"])
        else:
            with torch.no_grad():
                teacher = self._teacher(batch, pixels)
            student = self.model.encode_image(batch["splats"])
        loss = distill_loss(student, teacher, self.kind)
        logs = {"cos": float(F.cosine_similarity(student.detach().float(), teacher.float(), dim=-1).mean())}
        if self.token_weight > 0:
            tok = token_distill_loss(s_tok, t_tok, self.kind)
            logs["token_loss"] = float(tok.detach())
            loss = loss + self.token_weight * tok
        return loss, logs


    def _teacher(self, batch, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's embeddings [B, D], from the cache where the same key holds the same image."""
        cache, keys = self._teacher_cache, batch.get("key")
        if cache is None or keys is None:
            return self.model.encode_rgb(pixels)
        if self.hflip > 0:  # a mirrored image has its own target (and the same checksum)
            keys = [(k, bool(m)) for k, m in zip(keys, batch.get("mirrored", [False] * len(keys)))]
        sums = batch["image"].detach().flatten(1).double().sum(1).tolist()
        todo = [i for i, (k, c) in enumerate(zip(keys, sums)) if k not in cache or cache[k][0] != c]
        if todo:
            fresh = self.model.encode_rgb(pixels[todo])
            for j, i in enumerate(todo):
                cache[keys[i]] = (sums[i], fresh[j].detach())
        return torch.stack([cache[k][1] for k in keys])


def _one_token(tokenizer, word: str, special) -> int:
    """The token id of a word the tokenizer keeps whole (for --word-boost); `special` are the ids
    of padding, start and end."""
    special = set(special)
    row = [int(t) for t in tokenizer([word])[0] if int(t) not in special]
    if len(row) != 1:
        raise ValueError(f"--word-boost {word!r}: not a single token of the tokenizer ({len(row)} tokens)")
    return row[0]


def mirror_some(batch: dict, which: torch.Tensor) -> dict:
    """A copy of a stage-1 batch with the samples `which` [B] bool mirrored left-right: their
    images flipped along the width and their splats by Splats.hflip. Adds batch["mirrored"]."""
    which = which.to(torch.bool)
    out = dict(batch)
    if bool(which.any()):
        img = batch["image"]
        out["image"] = torch.where(which.to(img.device)[:, None, None, None], img.flip(-1), img)
        out["splats"] = batch["splats"].hflip(which)
    out["mirrored"] = which.tolist()
    return out


class Stage2Task(_Base):
    """Contrastive training of the GS encoder against captions with open_clip's ClipLoss."""
    stage = "2"

    def __init__(self, model, tokenizer, info=None, meta=None):
        super().__init__(model, info, meta)
        self.tokenizer = CachedTokenizer(tokenizer)
        self.clip_loss = make_clip_loss(self.rank, self.world_size)

    def loss(self, batch):
        if "splats" not in batch or "text" not in batch:
            raise ValueError("stage 2 needs batches with 'splats' and 'text'")
        device = batch["splats"].device
        tokens = self.tokenizer(batch["text"]).to(device)
        img = self.model.encode_image(batch["splats"], normalize=True)
        txt = self.model.encode_text(tokens, normalize=True)
        scale = self.model.logit_scale.exp()
        bias = getattr(self.model, "logit_bias", None)
        loss = self.clip_loss(img, txt, scale, bias) if bias is not None else self.clip_loss(img, txt, scale)
        return loss, {"logit_scale": float(scale.detach())}
