"""The three training stages: RGB CLIP from scratch (RGBClipStage), stage 1 (Stage1: distillation),
stage 2 (Stage2: CLIP loss). A stage is what train.loop.train runs: the model, its loss and what it
exports. Applications extend them by subclassing (the demo's teacher: apps/demo/teacher.py).

Batches are dicts from the loaders: "image" [B, 3, H, W] in [0, 1] (a list of B [3, H, W] where samples of
several sizes meet: data.loader.collate), "splats" (Splats with counts), "text" list[str].
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import write_atomic
from .losses import distill_loss, make_clip_loss, token_distill_loss
from .tokens import CachedTokenizer

__all__ = ["RGBClipStage", "Stage1", "Stage2", "freeze_for_stage", "is_text_param", "pixel_input",
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


def pixel_input(images, visual) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> resized to the tower's input size and normalized with its mean/std. Also a
    list of [3, H, W] images of several sizes (data.loader.collate's batch of mixed sizes), each resized
    straight to the input size, as it would be in a batch of its own size."""
    if isinstance(images, (list, tuple)):
        return torch.cat([pixel_input(im[None], visual) for im in images])
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

    def resume_keys(self) -> dict:
        """The describe() keys a resumed run must share with the original one, each with the value
        that means "not used" (compared when one side lacks the key). The loop saves them in
        state.json and compares them on --resume (the stage itself is compared first, by
        resume.check_resume). Every stage: the model's base and its pretrained weights, the teacher
        of stage 1 (regression (new-user trial): a resume without --pretrained went on from a random one)."""
        return {"base": None, "pretrained": None}

    def after_step(self):
        ls = getattr(self.model, "logit_scale", None)
        if isinstance(ls, torch.nn.Parameter) and ls.requires_grad:
            with torch.no_grad():
                ls.clamp_(0, _MAX_LOGIT_SCALE)


class RGBClipStage(_Base):
    """Plain CLIP training of an open_clip model on (image, caption) pairs, all parameters trained,
    with open_clip's ClipLoss: what a DataComp user runs to train a CLIP from scratch.

    The export is open_clip's full state dict, so open_clip.create_model(base, pretrained=PATH)
    loads it as it loads a pretrained checkpoint.

    Subclasses change one part of the step by overriding a hook (the demo's teacher recipe,
    apps.demo.teacher.TeacherStage, is one); loss() calls them in this order:
      prepare(batch) -> (images, texts, extra_texts)   the batch as encoded; extra texts are
                                                        tokenized and encoded after the captions
      encode_texts(tokens) -> [B + E, D]               normalized text embeddings
      pair_loss(img, txt, scale) -> loss               the contrastive loss (img [B, D])
      extra_loss(loss, logs, features, tokens) -> loss further terms (features: the image
                                                        embeddings before normalization, tokens:
                                                        the captions' [B, L])
      exported_state() -> dict                         what export() writes
    """
    stage = "rgb"

    def __init__(self, model, tokenizer, info=None, meta=None):
        super().__init__(model, info, meta)
        self.tokenizer = CachedTokenizer(tokenizer)
        self.clip_loss = make_clip_loss(self.rank, self.world_size)

    def prepare(self, batch) -> tuple[torch.Tensor, list[str], list[str]]:
        if "image" not in batch or "text" not in batch:
            raise ValueError("stage rgb needs batches with 'image' and 'text'")
        return batch["image"], list(batch["text"]), []

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True)

    def pair_loss(self, img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.clip_loss(img, txt, scale)

    def extra_loss(self, loss: torch.Tensor, logs: dict, features: torch.Tensor, tokens: torch.Tensor):
        return loss

    def loss(self, batch):
        images, texts, extra = self.prepare(batch)
        x = pixel_input(images, self.model.visual)
        tokens = self.tokenizer(texts + extra).to(images.device)
        feat = self.model.encode_image(x)
        img = F.normalize(feat, dim=-1)
        txt = self.encode_texts(tokens)
        loss = self.pair_loss(img, txt, self.model.logit_scale.exp())
        logs = {"logit_scale": float(self.model.logit_scale.detach().exp())}
        return self.extra_loss(loss, logs, feat, tokens[:img.shape[0]]), logs

    def exported_state(self) -> dict:
        return self.model.state_dict()

    def export(self, out_dir):
        from gaussianvision.models.weights import save_safetensors
        sd = {k: v.detach().cpu().contiguous() for k, v in self.exported_state().items()}
        write_atomic(Path(out_dir) / OPEN_CLIP_EXPORT, lambda tmp: save_safetensors(sd, tmp))


class Stage1(_Base):
    """Align the GS encoder to the frozen RGB teacher on (image, splats of that image) pairs.

    Two options stay here although the demo uses them, because they hold for any data set:
    hflip (a left-right mirror of image and splats together, the usual CLIP augmentation done on
    both sides of the pair) and cache_teacher (the frozen teacher's embedding of each sample kept
    by key: a pure speed-up that gives the same training, for data sets whose embeddings fit in
    memory). Neither knows anything of captions or of the demo's world.
    """
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

    def resume_keys(self) -> dict:
        # a mirrored run has other targets and teacher-cache entries; the loss is the run's (regression:
        # --distill mse resumed a cosine run)
        return {**super().resume_keys(), "hflip": 0.0, "distill": "cosine", "token_weight": 0.0}

    def loss(self, batch):
        if "image" not in batch or "splats" not in batch:
            raise ValueError("stage 1 needs batches with 'splats' and their source 'image' (load with images)")
        if self.hflip > 0 and torch.is_grad_enabled():
            batch = mirror_some(batch, torch.rand(len(batch["image"])) < self.hflip)
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
        images = batch["image"]
        sums = (images.detach().flatten(1).double().sum(1).tolist() if isinstance(images, torch.Tensor)
                else [float(im.detach().double().sum()) for im in images])  # a list: images of several sizes
        todo = [i for i, (k, c) in enumerate(zip(keys, sums)) if k not in cache or cache[k][0] != c]
        if todo:
            fresh = self.model.encode_rgb(pixels[todo])
            for j, i in enumerate(todo):
                cache[keys[i]] = (sums[i], fresh[j].detach())
        return torch.stack([cache[k][1] for k in keys])


def mirror_some(batch: dict, which: torch.Tensor) -> dict:
    """A copy of a stage-1 batch with the samples `which` [B] bool mirrored left-right: their
    images flipped along the width and their splats by Splats.hflip. Adds batch["mirrored"]."""
    which = which.to(torch.bool)
    out = dict(batch)
    if bool(which.any()):
        img = batch["image"]
        if isinstance(img, torch.Tensor):
            out["image"] = torch.where(which.to(img.device)[:, None, None, None], img.flip(-1), img)
        else:  # a list: images of several sizes
            out["image"] = [im.flip(-1) if m else im for im, m in zip(img, which.tolist())]
        out["splats"] = batch["splats"].hflip(which)
    out["mirrored"] = which.tolist()
    return out


class Stage2(_Base):
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
