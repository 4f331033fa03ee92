"""Zero-shot image-text retrieval (recall@1/5/10) through clip_benchmark's retrieval evaluation."""
from __future__ import annotations

import torch

from .models import EvalModel
from .zeroshot import bars

__all__ = ["zeroshot_retrieval", "RECALL_K"]

RECALL_K = (1, 5, 10)


def zeroshot_retrieval(em: EvalModel, loader, device: str = "cpu", recall_k=RECALL_K, progress: bool = True) -> dict:
    """loader yields (inputs, list of caption lists); -> image/text retrieval recall@k and
    mean_recall@1 (DataComp's main retrieval metric: the mean of both directions)."""
    from clip_benchmark.metrics import zeroshot_retrieval as zr
    dev = torch.device(device)
    with torch.no_grad(), bars(zr, progress):
        m = zr.evaluate(em.model, loader, em.tokenizer, dev.type, amp=dev.type == "cuda", recall_k_list=list(recall_k))
    m = {k: float(v) for k, v in m.items()}
    if "image_retrieval_recall@1" in m:
        m["mean_recall@1"] = (m["image_retrieval_recall@1"] + m["text_retrieval_recall@1"]) / 2
    return m
