"""Results: one JSON per (model, dataset) in clip_benchmark's schema, and the combined table
(Markdown + CSV) with every model side by side and each GS model's ratio to the RGB model."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from ..atomic import write_text_atomic
from .suites import main_metric

__all__ = ["result_record", "write_result", "result_filename", "pick_metric", "comparison_table",
           "write_tables", "replace_stale"]

_FALLBACK = ("acc1", "mean_average_precision", "mean_recall@1")


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # strict JSON: clip_benchmark's NaN (acc5 with < 5 classes) becomes null
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def result_record(dataset: str, model: str, pretrained: str, task: str, metrics: dict, **extra) -> dict:
    """clip_benchmark's result schema (dataset, model, pretrained, task, metrics, language) + extras."""
    return _clean({"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
                   "metrics": metrics, "language": "en", **extra})


def result_filename(rec: dict) -> str:
    """clip_benchmark's DATASET_PRETRAINED_MODEL_en_TASK.json, PRETRAINED named by the model's label where the record
    has one (the tables' column: distinct for every model of a run; regression of the review: runs/a/s2 and
    runs/b/s2 both wrote DATASET_s2_..., the second file replacing the first)."""
    slug = lambda s: str(s).replace("/", "_").replace(":", "_").replace("@", "_")  # noqa: E731
    ds = rec["dataset"][4:] if rec["dataset"].startswith("wds/") else rec["dataset"]
    who = rec.get("label") or os.path.basename(str(rec["pretrained"]))
    return f"{slug(ds)}_{slug(who)}_{slug(rec['model'])}_en_{rec['task']}.json"


def _atomic_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n", mkdir=True)


def write_result(out_dir: str | os.PathLike, rec: dict) -> Path:
    path = Path(out_dir) / result_filename(rec)
    _atomic_json(path, rec)
    return path


def replace_stale(out_dir: str | os.PathLike, dataset: str, model: str, pretrained: str, label: str,
                  error: str) -> list[Path]:
    """A (model, dataset) that failed in this run: an earlier run's result file of that pair in OUT (either task's
    name) is rewritten as this run's error record, metrics empty, so no stale metrics read as this run's; returns
    the files rewritten. Regression (new-user trial): a pair that failed on a rerun into the same --out kept the
    earlier run's file, read as a result of the run whose table said the pair failed."""
    rewritten = []
    for task in ("zeroshot_classification", "zeroshot_retrieval"):
        rec = result_record(dataset, model, pretrained, task, {}, label=label, error=error)
        path = Path(out_dir) / result_filename(rec)
        if path.is_file():
            _atomic_json(path, rec)
            rewritten.append(path)
    return rewritten


def pick_metric(dataset: str, metrics: dict) -> tuple[str | None, float | None]:
    name = main_metric(dataset)
    if name in metrics and metrics[name] is not None:
        return name, metrics[name]
    for k in _FALLBACK:
        if metrics.get(k) is not None:
            return k, metrics[k]
    return None, None


def left_out(unreadable: dict | None) -> str | None:
    """What a result's metrics leave out, in words ("2 samples", "1 shard, 2 samples"), or None."""
    if not unreadable:
        return None
    shards = unreadable.get("shards", 0)
    samples = unreadable["count"] - shards
    parts = ([f"{shards} shard{'s' * (shards != 1)}"] if shards else []) + \
        ([f"{samples} sample{'s' * (samples != 1)}"] if samples or not shards else [])
    return ", ".join(parts)


def comparison_table(records: list[dict], labels: list[str], kinds: dict[str, str]) -> tuple[list[str], list[list]]:
    """records carry "label" (model column) besides the schema. -> (header, rows): one row per
    dataset with each model's main metric, then GS/RGB ratios against the first RGB model, and a
    final mean row over the datasets every model has. Where a result left unreadable samples or shards
    out (its "unreadable"), a last column "left out" says so per dataset and model (regression: the table
    people quote showed such metrics as if over the whole dataset)."""
    rgb = next((l for l in labels if kinds[l] == "rgb"), None)
    gs = [l for l in labels if kinds[l] == "gs"]
    header = ["dataset", "metric", *labels] + ([f"{l} / {rgb}" for l in gs] if rgb else [])
    lossy = any(r.get("unreadable") for r in records)
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    by = {(r["dataset"], r["label"]): r for r in records}
    rows, complete = [], []
    for ds in datasets:
        vals, metric = {}, None
        for l in labels:
            r = by.get((ds, l))
            if r is None or "error" in r:
                vals[l] = None
                continue
            m, v = pick_metric(ds, r["metrics"])
            metric = metric or m
            vals[l] = v
        ratios = [(vals[l] / vals[rgb]) if rgb and vals[l] is not None and vals[rgb] else None for l in gs] if rgb else []
        rows.append([ds, metric, *[vals[l] for l in labels], *ratios] + ([_left_out_of(by, ds, labels)] if lossy else []))
        if all(vals[l] is not None for l in labels):
            complete.append(vals)
    if complete and len(datasets) > 1:
        mean = {l: sum(v[l] for v in complete) / len(complete) for l in labels}
        ratios = [(mean[l] / mean[rgb]) if mean[rgb] else None for l in gs] if rgb else []
        rows.append([f"mean ({len(complete)} datasets)", "", *[mean[l] for l in labels], *ratios] + ([None] if lossy else []))
    return header + (["left out"] if lossy else []), rows


def _left_out_of(by: dict, ds: str, labels: list[str]) -> str | None:
    """The "left out" cell of a dataset: one text where every model left out the same, else per model."""
    texts = {l: left_out((by.get((ds, l)) or {}).get("unreadable")) for l in labels}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{l}: {t or 'none'}" for l, t in texts.items())


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def write_tables(out_dir: str | os.PathLike, header: list[str], rows: list[list], stem: str = "results") -> dict:
    """OUT/results.md and OUT/results.csv; returns their paths and the Markdown text."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(md) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    for name, content in ((f"{stem}.md", text), (f"{stem}.csv", buf.getvalue())):
        write_text_atomic(out / name, content)
    return {"markdown": str(out / f"{stem}.md"), "csv": str(out / f"{stem}.csv"), "text": text}
