"""The model on its device: embeddings of any mix of images, and zero-shot classifiers.

`embed` is what one batched forward does: images of any sizes are padded to one Splats batch
(data.loader.stack_in_frame: each expressed in the batch's largest frame, which the stem, reading
normalized coordinates, cannot tell apart; counts, which the encoder masks) and encoded together, in
forwards of at most `max_batch` images of similar Gaussian counts (forward_groups; before 2026-12-07
each size had a forward of its own). It runs on the batcher's worker thread, never on the event loop."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

from gaussianvision.data.loader import stack_in_frame
from gaussianvision.splats.types import Splats

from .labels import LabelSet

__all__ = ["Engine", "class_weights", "forward_groups", "pick_device", "top_k"]

_CLASSIFIERS_KEPT = 64  # zero-shot classifiers cached (custom label lists come and go)


def pick_device(name: str) -> torch.device:
    """auto -> cuda when there is one, else cpu; cuda without CUDA is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name}: CUDA is not available on this machine")
    return dev


class Engine:
    def __init__(self, model, tokenizer: Callable, device: torch.device, name: str = "gs"):
        self.model = model.to(device).eval()
        self.tokenizer, self.device, self.name = tokenizer, device, name
        self._classifiers: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def embed(self, images: list[Splats], max_batch: int, forwards: list | None = None) -> torch.Tensor:
        """[len(images), D] float32 on the CPU, L2-normalized, in the order given, in the forwards that
        forward_groups makes (each group's indices appended to `forwards` when given)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        with torch.inference_mode():
            for group in forward_groups([s.max_gaussians for s in images], max_batch):
                batch = stack_in_frame([images[i] for i in group]).to(self.device)
                for i, e in zip(group, self.model.encode_image(batch, normalize=True).float().cpu()):
                    out[i] = e
                if forwards is not None:
                    forwards.append(group)
        return torch.stack(out)

    def classifier(self, labels: LabelSet) -> torch.Tensor:
        """[D, C] zero-shot weights of a label set (class_weights), computed once per set (LRU)."""
        key = (labels.classes, labels.templates)
        if key in self._classifiers:
            self._classifiers.move_to_end(key)
            return self._classifiers[key]
        weights = class_weights(self.model, self.tokenizer, labels.classes, labels.templates, self.device)
        self._classifiers[key] = weights
        while len(self._classifiers) > _CLASSIFIERS_KEPT:
            self._classifiers.popitem(last=False)
        return weights

    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0))


TEXT_BATCH = 256  # prompts per forward of the text tower (class_weights)
PAD_FACTOR = 2  # a forward's padding: at most this many times the Gaussians its images hold (forward_groups)


def forward_groups(counts: list[int], max_batch: int) -> list[list[int]]:
    """The images (by index) of each forward: in order of their Gaussian counts, at most max_batch a forward, a
    new one begun where padding every image to the next one's count would pass PAD_FACTOR times the Gaussians
    the forward holds (review finding: one image near --max-gaussians beside 63 of N=400 padded all 64 to it)."""
    groups: list[list[int]] = []
    held = 0
    for i in sorted(range(len(counts)), key=lambda i: (counts[i], i)):
        n = max(int(counts[i]), 1)
        if groups and len(groups[-1]) < max_batch and (len(groups[-1]) + 1) * n <= PAD_FACTOR * (held + n):
            groups[-1].append(i)
            held += n
        else:
            groups.append([i])
            held = n
    return groups


def class_weights(model, tokenizer, classes, templates, device: torch.device, batch: int = TEXT_BATCH) -> torch.Tensor:
    """[D, C] float32 on the CPU: clip_benchmark's zero-shot classifier (zero_shot_classifier: each class's
    prompts, the templates with {c} filled in, embedded, normalized, averaged, normalized; autocast on a GPU
    as gaussianvision.eval.zeroshot), its prompts embedded `batch` at a time over all classes where it makes
    one forward per class, with no progress bar. Regression (new-user trial): imagenet1k's 1000 x 80 prompts
    took 24 s and wrote 12 KB of tqdm updates into the server's log."""
    texts = [t.format(c=c) for c in classes for t in templates]
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        emb = torch.cat([model.encode_text(tokenizer(texts[i: i + batch]).to(device)).float()
                         for i in range(0, len(texts), batch)])
    per_class = torch.nn.functional.normalize(emb, dim=-1).view(len(classes), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(per_class, dim=-1).T.contiguous().cpu()


def top_k(embeddings: torch.Tensor, weights: torch.Tensor, labels: LabelSet, k: int, scale: float) -> list[dict]:
    """Per image: the k best classes, their cosine scores and softmax probabilities (over all classes)."""
    scores = embeddings @ weights
    probs = (scale * scores).softmax(-1)
    k = min(k, len(labels.classes))
    best = scores.topk(k, dim=-1)
    return [{"labels": [labels.classes[j] for j in idx.tolist()], "indices": idx.tolist(),
             "scores": [round(float(v), 6) for v in vals], "probs": [round(float(probs[i, j]), 6) for j in idx]}
            for i, (vals, idx) in enumerate(zip(best.values, best.indices))]
