"""Zero-shot classification through clip_benchmark's own code: its classifier built from the
dataset's class names and templates, its classification run, accuracy and balanced accuracy."""
from __future__ import annotations

import contextlib
import functools

import torch

from .models import EvalError, EvalModel

__all__ = ["zeroshot_classification", "bars"]


@contextlib.contextmanager
def bars(module, show: bool):
    """clip_benchmark's progress bars (its metric modules call tqdm themselves) off while inside when
    not `show` (regression: gsv eval --no-progress still printed them); the module's tqdm is put back."""
    if show or not hasattr(module, "tqdm"):
        yield
        return
    original = module.tqdm
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


def zeroshot_classification(em: EvalModel, loader, device: str = "cpu", progress: bool = True) -> dict:
    """-> {"acc1", "acc5", "mean_per_class_recall"} (or {"mean_average_precision"} for multi-label).

    loader yields (inputs, target): pixel batches for an RGB model, Splats for a GS model
    (datasets.SplatBatches), and has .dataset.classes / .dataset.templates.
    """
    from clip_benchmark.metrics import zeroshot_classification as zc
    classes = getattr(loader.dataset, "classes", None)
    templates = getattr(loader.dataset, "templates", None)
    if not classes or not templates:
        raise EvalError("the dataset has no class names or templates: not a zero-shot classification dataset")
    dev = torch.device(device)
    amp = dev.type == "cuda"  # CPU autocast would mean bfloat16 here: keep float32
    with torch.no_grad(), bars(zc, progress):
        metrics = zc.evaluate(em.model, loader, em.tokenizer, classes, templates, dev.type, amp=amp)
    return {k: float(v) for k, v in metrics.items()}
