"""Linear probes: multinomial logistic regression on fixed features, scored on held-out data.

    split = stratified_split(labels, test_fraction=0.5, seed=0)      # the same split for every layer
    res = probe(features, labels, split, n_classes)                  # {"acc", "chance", "l2", ...}

Features are standardized with the training split's mean and standard deviation; the classifier
(weights [D, C] and biases) minimizes the mean cross-entropy plus l2 * ||W||^2 with full-batch
L-BFGS in float64 (deterministic on one machine). l2=None picks the L2 weight from L2_GRID by
stratified k-fold cross-validation on the training split only, so the held-out split never
chooses anything.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Split", "stratified_split", "fit_logistic", "probe", "L2_GRID"]

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class Split:
    train: torch.Tensor  # indices [n_train] (long)
    test: torch.Tensor  # indices [n_test]


def stratified_split(labels: torch.Tensor, test_fraction: float = 0.5, seed: int = 0) -> Split:
    """Per class, a seeded permutation of its examples: round(n_c * test_fraction) go to the test
    split (at least one stays in train when the class has two or more), the rest to train."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(int(round(len(idx) * test_fraction)), max(len(idx) - 1, 0))
        test.append(idx[:k])
        train.append(idx[k:])
    return Split(torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values)


def _standardize(x_train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = x_train.mean(0)
    std = x_train.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay 0
    return [(x - mean) / std for x in (x_train, *others)]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 100,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on (already standardized) x [n, D] float64, y [n] long ->
    (W [D, C], b [C]) minimizing mean cross-entropy + l2 * ||W||^2 (L-BFGS, strong Wolfe), from
    zeros or from `init` (a warm start)."""
    w0, b0 = init if init is not None else (x.new_zeros(x.shape[1], n_classes), x.new_zeros(n_classes))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(w, b, x, y) -> float:
    return float(((x @ w + b).argmax(1) == y).double().mean()) if len(y) else float("nan")


def _folds(y: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """A fold id per example, classes dealt round-robin after a seeded permutation."""
    g = torch.Generator().manual_seed(int(seed) + 1)
    fold = torch.empty(len(y), dtype=torch.long)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        fold[idx[torch.randperm(len(idx), generator=g)]] = torch.arange(len(idx)) % k
    return fold


def choose_l2(x: torch.Tensor, y: torch.Tensor, n_classes: int, grid=L2_GRID, k: int = 3, seed: int = 0) -> float:
    """The grid value with the best mean k-fold accuracy on (x, y); ties go to the larger L2."""
    fold = _folds(y, k, seed)
    grid = sorted(grid, reverse=True)
    accs = {l2: [] for l2 in grid}
    for f in range(k):
        tr, va = fold != f, fold == f
        if not va.any() or not tr.any():
            continue
        xt, xv = _standardize(x[tr], x[va])
        wb = None
        for l2 in grid:  # strong to weak L2, each fit warm-started from the previous one
            wb = fit_logistic(xt, y[tr], n_classes, l2, init=wb)
            accs[l2].append(_accuracy(*wb, xv, y[va]))
    scores = [(sum(a) / len(a) if a else 0.0, l2) for l2, a in accs.items()]
    return max(scores, key=lambda s: (s[0], s[1]))[1]


@contextlib.contextmanager
def _one_thread():
    """Torch on one thread meanwhile: the probe's many small matrix products are latency-bound, and
    a thread pool makes each closure about 17x slower on a shared 2-core machine (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe(features: torch.Tensor, labels: torch.Tensor, split: Split, n_classes: int, l2: float | None = None,
          seed: int = 0) -> dict:
    """Train on split.train, score on split.test -> {"acc", "stderr", "chance", "l2", "train_acc",
    "dim", "n_train", "n_test"}; chance is the held-out accuracy of always answering the training
    split's most frequent class."""
    with _one_thread():
        return _probe(features, labels, split, n_classes, l2, seed)


def _probe(features, labels, split, n_classes, l2, seed) -> dict:
    x = features.detach().double().cpu().flatten(1)
    y = labels.detach().long().cpu()
    xtr, ytr, yte = x[split.train], y[split.train], y[split.test]
    if l2 is None:
        l2 = choose_l2(xtr, ytr, n_classes, seed=seed)
    xtr, xte = _standardize(xtr, x[split.test])
    w, b = fit_logistic(xtr, ytr, n_classes, l2)
    acc = _accuracy(w, b, xte, yte)
    majority = int(torch.bincount(ytr, minlength=n_classes).argmax())
    n = len(yte)
    return {"acc": acc, "stderr": math.sqrt(acc * (1 - acc) / n) if n else float("nan"),
            "chance": float((yte == majority).double().mean()) if n else float("nan"), "l2": l2,
            "train_acc": _accuracy(w, b, xtr, ytr), "dim": int(x.shape[1]), "n_train": int(len(ytr)), "n_test": n}
