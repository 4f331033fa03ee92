"""make_world: the patches world on disk, in the demo world's formats (docs/world.md, "The patches
world"): image-text shards for `gsv train --stage rgb` and `gsv convert`, task folders in
clip_benchmark's wds layout for `gsv eval zeroshot`, a manifest written last.

    out_dir/train/shard-000000.tar ...  KEY.png, KEY.txt (caption), KEY.json (key, caption, scene)
    out_dir/test/shard-000000.tar ...
    out_dir/tasks/<task>/               classnames.txt, zeroshot_classification_templates.txt,
                                        dataset_type.txt, task.json, test/nshards.txt, test/0.tar ...
                                        (KEY.png, KEY.cls, KEY.json)
    out_dir/manifest.json               parameters, their hash, every file's size and sha256

Tars come from the project's one tar writer (data/shards.py, through the demo world's writer
module), text files from the one atomic write, the manifest last; every sample is drawn from its own generator
seeded by (seed, stream, index), so the bytes depend only on the parameters.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

# the demo world's manifest check and hash are generic over the parameters: one copy of each
from gaussianvision.apps.demo.world.world import _manifest_ok, param_hash
from gaussianvision.apps.demo.world.writer import TarShardWriter, dumps_json, file_sha256, write_text_atomic
from gaussianvision.apps.worlds.patches.captions import caption
from gaussianvision.apps.worlds.patches.scene import render_scene, sample_scene
from gaussianvision.apps.worlds.patches.tasks import TASK_NAMES, TASKS

__all__ = ["GENERATOR", "VERSION", "DEFAULTS", "STREAMS", "make_world", "resolve_params", "train_sample",
           "task_sample", "task_labels"]

GENERATOR = "gaussianvision.apps.worlds.patches"
VERSION = 1  # bump when drawing or wording changes: invalidates cached worlds
DEFAULTS = {"n_train": 2400, "n_test": 200, "n_task": 240, "size": 64, "seed": 0, "shard_size": 1000}
STREAMS = {"train": 1, "test": 2, **{f"task:{t}": 101 + i for i, t in enumerate(TASK_NAMES)}}


def resolve_params(**given) -> dict:
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    p = {k: int(DEFAULTS[k] if given.get(k) is None else given[k]) for k in DEFAULTS}
    if p["size"] < 32:
        raise ValueError(f"size must be at least 32 pixels, got {p['size']}")
    if p["shard_size"] < 1 or min(p["n_train"], p["n_test"], p["n_task"]) < 0:
        raise ValueError("shard_size must be >= 1 and sample counts >= 0")
    return {**p, "generator": GENERATOR, "version": VERSION, "tasks": list(TASK_NAMES)}


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index])


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def train_sample(seed: int, split: str, index: int, size: int = 64) -> tuple[np.ndarray, str, dict]:
    """(image [size, size, 3] uint8, caption, scene) of one image-text sample."""
    rng = _rng(seed, split, index)
    scene = sample_scene(rng, size)
    return render_scene(scene), caption(rng, scene), scene


def task_labels(seed: int, task: str, n: int) -> np.ndarray:
    """Balanced classes (counts differ by at most one) in a seeded order."""
    labels = np.arange(n) % len(TASKS[task].classes)
    return np.random.default_rng([seed, STREAMS[f"task:{task}"], 2**31 - 1]).permutation(labels)


def task_sample(seed: int, task: str, index: int, label: int, size: int = 64) -> tuple[np.ndarray, dict]:
    scene = sample_scene(_rng(seed, f"task:{task}", index), size, **TASKS[task].fixed(label))
    return render_scene(scene), scene


def _shards(out: Path, folder: str, n: int, per: int, name, items, bar) -> list[str]:
    """Write items (key -> members) into ceil(n / per) tars out/folder/name(k); -> relative paths.
    At least one tar, empty when n is 0 (clip_benchmark needs test/0.tar)."""
    paths = [f"{folder}/{name(k)}" for k in range(max(1, -(-n // per)))]
    with contextlib.ExitStack() as stack:  # each writer closes on success, drops its file on an error
        writers = [stack.enter_context(TarShardWriter(out / p)) for p in paths]
        for i, (key, members) in enumerate(items):
            writers[i // per].write(key, members)
            if bar is not None:
                bar.update(1)
    return paths


def _split_items(p: dict, split: str):
    for i in range(p[f"n_{split}"]):
        img, text, scene = train_sample(p["seed"], split, i, p["size"])
        key = f"{i:09d}"
        meta = {"key": key, "caption": text, "status": "success", "width": p["size"], "height": p["size"],
                "split": split, "scene": scene}
        yield key, {"png": _png(img), "txt": text.encode(), "json": dumps_json(meta)}


def _task_items(p: dict, task: str, labels: np.ndarray):
    for i, label in enumerate(labels.tolist()):
        img, scene = task_sample(p["seed"], task, i, label, p["size"])
        key = f"{i:09d}"
        meta = {"key": key, "task": task, "label": label, "class": TASKS[task].classes[label], "scene": scene}
        yield key, {"png": _png(img), "cls": str(label).encode(), "json": dumps_json(meta)}


def _write_task(out: Path, p: dict, task: str, bar) -> dict:
    t, n = TASKS[task], p["n_task"]
    labels = task_labels(p["seed"], task, n)
    root = out / "tasks" / task
    shards = _shards(out, f"tasks/{task}/test", n, p["shard_size"], lambda k: f"{k}.tar",
                     _task_items(p, task, labels), bar)
    info = {"task": task, "dataset": f"wds/{task}", "n": n, "n_classes": len(t.classes), "classes": list(t.classes),
            "chance": t.chance, "class_counts": np.bincount(labels, minlength=len(t.classes)).tolist(),
            "description": t.description, "n_templates": len(t.templates)}
    texts = {"test/nshards.txt": f"{len(shards)}\n", "classnames.txt": "".join(c + "\n" for c in t.classes),
             "zeroshot_classification_templates.txt": "".join(s + "\n" for s in t.templates),
             "dataset_type.txt": "classification\n", "task.json": json.dumps(info, indent=2) + "\n"}
    for rel, text in texts.items():
        write_text_atomic(root / rel, text)
    return info


def _result(out: Path, m: dict, cached: bool) -> dict:
    return {"out_dir": str(out), "cached": cached, "param_hash": m["param_hash"], "params": m["params"],
            "seconds": m["seconds"], "n_images": m["n_images"], "manifest": str(out / "manifest.json"),
            "splits": {s: {"dir": str(out / s), "n": v["n"], "shards": [str(out / r) for r in v["shards"]]}
                       for s, v in m["splits"].items()},
            "tasks": {name: dict(t, root=str(out / "tasks" / name)) for name, t in m["tasks"].items()}}


def make_world(out_dir: str | os.PathLike, force: bool = False, verify: bool = False, progress: bool = False,
               **params) -> dict:
    """Generate (or reuse, when out_dir/manifest.json has the same parameters and its files are
    present) the patches world; params: n_train, n_test, n_task, size, seed, shard_size (DEFAULTS).
    The old world's manifest and folders are removed first and the manifest is written last."""
    out = Path(out_dir)
    p = resolve_params(**params)
    if not force:
        m = _manifest_ok(out, p, verify)
        if m is not None:
            return _result(out, m, cached=True)
    # An old world is retired first (manifest, then its folders): an interrupted run leaves no
    # manifest, so it is never taken for complete, and no shard of a larger earlier world lingers.
    (out / "manifest.json").unlink(missing_ok=True)
    for sub in ("train", "test", "tasks"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    total = p["n_train"] + p["n_test"] + p["n_task"] * len(TASK_NAMES)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="patches world", unit="img", leave=False)
    t0 = time.perf_counter()
    try:
        splits = {s: {"n": p[f"n_{s}"], "shards": _shards(out, s, p[f"n_{s}"], p["shard_size"],
                                                            lambda k: f"shard-{k:06d}.tar", _split_items(p, s), bar)}
                  for s in ("train", "test")}
        tasks = {t: _write_task(out, p, t, bar) for t in TASK_NAMES}
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    files = {q.relative_to(out).as_posix(): {"bytes": q.stat().st_size, "sha256": file_sha256(q)}
             for sub in ("train", "test", "tasks") for q in sorted((out / sub).rglob("*")) if q.is_file()}
    m = {"generator": GENERATOR, "version": VERSION, "param_hash": param_hash(p), "params": p,
         "seconds": round(seconds, 3), "n_images": total, "splits": splits, "tasks": tasks, "files": files}
    write_text_atomic(out / "manifest.json", json.dumps(m, indent=1) + "\n")
    return _result(out, m, cached=False)
