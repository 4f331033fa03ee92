"""Run zero-shot evaluations of several models on several datasets and write the results."""
from __future__ import annotations

import os
import time
from pathlib import Path

from gaussianvision.net import unreachable
from gaussianvision.eval.datasets import (SplatBatches, SplatCache, SplatSettings, build_dataset, build_loader, dataset_task,
                       resolve_root, transform_for)
from gaussianvision.eval.models import EvalError, EvalModel, distinct_labels
from gaussianvision.eval.report import comparison_table, replace_stale, result_record, write_result, write_tables
from gaussianvision.eval.retrieval import zeroshot_retrieval
from gaussianvision.eval.suites import DATACOMP38, UNSUPPORTED, suite_root
from gaussianvision.eval.zeroshot import zeroshot_classification

__all__ = ["evaluate_one", "evaluate_all", "default_root", "check_reachable"]

DEFAULT_ROOT = "data/eval/{dataset_cleaned}"
UNREADABLE_LISTED = 20  # unreadable samples named in a result (all are counted)


def default_root(dataset: str, root: str | None) -> str:
    if root:
        return resolve_root(root, dataset)
    short = dataset[4:] if dataset.startswith("wds/") else dataset
    if dataset.startswith("wds/") and short in DATACOMP38:
        return suite_root(dataset)
    return resolve_root(DEFAULT_ROOT, dataset)


def check_root(datasets: list[str], root: str | None) -> None:
    """EvalError where two webdataset (wds/) datasets would read one folder: a --dataset-root without {dataset}
    (or its cleaned form) names the same folder for each. Regression (new-user trial): --dataset wds/color
    --dataset wds/shape --dataset-root tasks/color reported the colour task's numbers as the shape task's too.
    clip_benchmark's own datasets (cifar10, ...) each keep a subfolder of a shared root, as it has them."""
    seen: dict[str, str] = {}
    for ds in datasets:
        if not ds.startswith("wds/"):
            continue
        where = default_root(ds, root)
        first = seen.setdefault(where if "://" in where else os.path.realpath(where), ds)
        if first != ds:
            raise EvalError(f"--dataset-root {root}: {first} and {ds} would both read {where}; put {{dataset}} in "
                            "it, or give one of them")


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail fast (and clearly) when a remote dataset's host cannot be reached."""
    host, why = unreachable(url, timeout)
    if why is not None:
        raise EvalError(f"{host} is not reachable ({why}); this dataset is downloaded from {url}. Offline, "
                        "copy it beforehand and give --dataset-root")


def evaluate_one(em: EvalModel, dataset: str, root: str, batch_size: int = 64, device: str = "cpu",
                 splats: SplatSettings | None = None, cache_dir: str | None = None, num_workers: int = 0,
                 progress: bool = False) -> dict:
    """One model on one dataset -> a result record (clip_benchmark schema + "label", "seconds", "gsv")."""
    if dataset in UNSUPPORTED:
        raise EvalError(f"{dataset}: {UNSUPPORTED[dataset]}")
    if "://" in root:
        check_reachable(root)
    t0 = time.perf_counter()
    task = dataset_task(dataset, root)
    splats = splats or SplatSettings()
    transform = transform_for(em, splats)
    ds = build_dataset(dataset, root, transform, task)
    loader = guard = build_loader(dataset, ds, batch_size, num_workers, transform, root)
    extra = {}
    cache = None
    if em.kind == "gs":
        s = SplatSettings(**{**splats.__dict__, "size": splats.size or em.image_size})
        cache = SplatCache(cache_dir, s, progress=progress, device=device)
        loader = SplatBatches(loader, cache, classes_from=ds)
    if task == "zeroshot_classification":
        metrics = zeroshot_classification(em, loader, device, progress=progress)
    elif task == "zeroshot_retrieval":
        metrics = zeroshot_retrieval(em, loader, device, progress=progress)
    else:
        raise EvalError(f"{dataset}: task {task!r} is not supported (zero-shot classification and retrieval are)")
    if cache is not None:
        extra["gsv"] = {"splats": {k: v for k, v in cache.settings.__dict__.items() if k != "fit_batch"},
                        "fitted": cache.fits, "cached": cache.hits, "psnr": cache.psnr_mean}
    if guard.skipped:  # left out, named: the metrics are over the other samples (shards: whole or the rest of one)
        extra["unreadable"] = {**guard.counts(), "read": guard.read,
                               "first": [str(u) for u in guard.skipped[:UNREADABLE_LISTED]]}
    rec = result_record(dataset, em.name, em.pretrained, task, metrics, label=em.label,
                        seconds=round(time.perf_counter() - t0, 3), **extra)
    return rec


def evaluate_all(models: list[EvalModel], datasets: list[str], out_dir: str, root: str | None = None,
                 batch_size: int = 64, device: str = "cpu", splats: SplatSettings | None = None,
                 cache_dir: str | None = None, num_workers: int = 0, progress: bool = True) -> dict:
    """Every model on every dataset; per-dataset JSON files, results.md / results.csv.

    A dataset that fails is recorded with its error and the others still run.
    """
    out = Path(out_dir)
    records, errors = [], []
    check_root(datasets, root)
    distinct_labels(models)
    labels = [m.label for m in models]
    cache_dir = cache_dir if cache_dir is not None else str(out / "splat_cache")
    for dataset in datasets:
        ds_root = default_root(dataset, root)
        for em in models:
            try:
                rec = evaluate_one(em, dataset, ds_root, batch_size, device, splats, cache_dir, num_workers, progress)
            except EvalError as e:  # named by its dataset and model where the message does not say them
                why = str(e) if str(e).startswith(dataset) else f"{dataset} ({em.label}): {e}"
                errors.append(why)
                records.append({"dataset": dataset, "label": em.label, "error": why})
                replace_stale(out, dataset, em.name, em.pretrained, em.label, why)
                continue
            rec["file"] = str(write_result(out, rec))
            records.append(rec)
    header, rows = comparison_table(records, labels, {m.label: m.kind for m in models})
    tables = write_tables(out, header, rows)
    return {"records": records, "errors": errors, "header": header, "rows": rows, **tables}
