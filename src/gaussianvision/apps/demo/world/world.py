"""make_world: the offline world on disk (image-text shards + zero-shot tasks), cached by a manifest.

Layout under out_dir::

    train/shard-000000.tar ...   img2dataset layout: KEY.png, KEY.txt (caption), KEY.json,
                                 KEY.neg.txt (hard-negative caption: one fact false, negatives.py)
    test/shard-000000.tar ...    (KEY = 9-digit sample index within the split)
    tasks/<task>/                clip_benchmark's local wds layout (dataset "wds/<task>",
        classnames.txt               dataset_root out_dir/tasks/<task>):
        zeroshot_classification_templates.txt
        dataset_type.txt             "classification"
        task.json                    chance level, class counts, description
        test/nshards.txt, test/0.tar ...   KEY.png, KEY.cls (class index), KEY.json (scene)
    manifest.json                written last: parameters, their hash, every file's size and sha256

Every sample is drawn from its own generator seeded by (seed, stream, index), so a sample does
not depend on sharding, worker count or the other splits' sizes. Streams have fixed ids (train
1, test 2, tasks 101...), never ids derived from an ordering that could change.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gaussianvision.apps.demo.world.negatives import caption_pair
from gaussianvision.apps.demo.world.scenes import render_scene, sample_scene
from gaussianvision.apps.demo.world.tasks import TASK_NAMES, TASKS
from gaussianvision.apps.demo.world.writer import TarShardWriter, dumps_json, file_sha256, write_text_atomic

__all__ = ["GENERATOR_VERSION", "CELLS", "MIN_SIZE", "MAX_SIZE", "DEFAULT_HOLDOUT", "DEFAULTS", "QUICK", "make_world",
           "load_world", "resolve_params", "check_layouts", "param_hash", "train_sample", "task_sample", "STREAMS"]

GENERATOR_VERSION = 5  # bump when drawing or wording changes: invalidates cached worlds

# Objects sit on a layout grid of CELLS x CELLS cells (scenes.place_objects): at 64 px, one cell is
# one 8-px patch of the demo teacher (gsv-tiny). 0 places objects anywhere.
CELLS = 8

# Image side in pixels. At the largest a striped background (drawn 4x supersampled) takes about 0.7 s and 0.2 GB
# per image and worker process; 100,000 px asked numpy for 37 GiB (new-user trial).
MIN_SIZE, MAX_SIZE = 16, 1024
# Redraws of one sample whose pixels repeat an earlier split's (_produce) before giving up.
MAX_REDRAWS = 100

# (color, shape) pairs never drawn in the train split; test split and tasks draw all pairs.
DEFAULT_HOLDOUT = (("green", "star"), ("purple", "triangle"))

DEFAULTS = {"n_train": 4000, "n_test": 400, "n_task": 400}
QUICK = {"n_train": 800, "n_test": 100, "n_task": 100}

STREAMS = {"train": 1, "test": 2, "task:shape": 101, "task:color": 102, "task:count": 103,
           "task:relation": 104}


def resolve_params(n_train=None, n_test=None, n_task=None, size=64, seed=0, quick=False,
                   shard_size=1000, holdout=DEFAULT_HOLDOUT, tasks=TASK_NAMES, cells=CELLS) -> dict:
    base = QUICK if quick else DEFAULTS
    p = {
        "n_train": int(base["n_train"] if n_train is None else n_train),
        "n_test": int(base["n_test"] if n_test is None else n_test),
        "n_task": int(base["n_task"] if n_task is None else n_task),
        "size": int(size), "seed": int(seed), "shard_size": int(shard_size),
        "holdout": sorted([list(h) for h in holdout]),
        "tasks": list(tasks), "image_ext": "png", "version": GENERATOR_VERSION, "cells": int(cells),
    }
    if not MIN_SIZE <= p["size"] <= MAX_SIZE:
        raise ValueError(f"size must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {size}")
    if p["cells"] == 1:  # regression: the relation task's pair never fitted one cell, and the generator hung
        raise ValueError("cells must be 0 (free placement) or at least 2 cells (the relation task puts its two objects "
                         "in different cells), got 1")
    if p["cells"] < 0 or (p["cells"] and p["size"] / p["cells"] < 4):
        raise ValueError(f"cells must be 0 (free placement) or leave cells of at least 4 pixels, got {cells} at size {size}")
    if p["shard_size"] < 1 or min(p["n_train"], p["n_test"], p["n_task"]) < 0:
        raise ValueError("shard_size must be >= 1 and sample counts >= 0")
    unknown = [t for t in p["tasks"] if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
    return p


def check_layouts(p: dict) -> None:
    """ValueError now, before any image is drawn, when a scene the world needs (each task's every class, a
    training scene) has no layout at p's size and cells: one draw of each, bounded by scenes.MAX_DRAWS (the
    same bound then holds every sample's draws)."""
    rng = np.random.default_rng([p["seed"], 0])  # its own generator: every sample's stays as it was
    if p["n_task"]:
        for name in p["tasks"]:
            for label in range(len(TASKS[name].classes)):
                TASKS[name].sample(rng, p["size"], label, p["cells"])
    if p["n_train"] or p["n_test"]:
        sample_scene(rng, p["size"], holdout=tuple(tuple(h) for h in p["holdout"]), cells=p["cells"])


def param_hash(params: dict) -> str:
    return hashlib.sha256(dumps_json(params)).hexdigest()[:16]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)  # level 6 costs ~2x the time for 10% fewer bytes
    return buf.getvalue()


def _rng(seed: int, stream: str, index: int, attempt: int = 0) -> np.random.Generator:
    key = [seed, STREAMS[stream], index] + ([attempt] if attempt else [])
    return np.random.default_rng(key)


def _has_heldout(scene: dict, holdout) -> bool:
    held = {tuple(h) for h in holdout}
    return any((g["color"], g["shape"]) in held for g in scene["groups"])


def train_sample(seed: int, split: str, index: int, size: int, holdout, attempt: int = 0, cells: int = CELLS):
    """(PIL image, caption, scene, negative) of one image-text sample; the train split avoids
    `holdout`. negative = {"caption": the caption with one fact false, "kind": which fact}."""
    rng = _rng(seed, split, index, attempt)
    scene = sample_scene(rng, size, holdout=holdout if split == "train" else (), cells=cells)
    caption, negative, kind = caption_pair(rng, scene)
    return render_scene(scene), caption, scene, {"caption": negative, "kind": kind}


def task_sample(seed: int, task: str, index: int, size: int, label: int, attempt: int = 0, cells: int = CELLS):
    """(PIL image, scene) of one task sample of class `label`."""
    rng = _rng(seed, f"task:{task}", index, attempt)
    scene = TASKS[task].sample(rng, size, label, cells)
    return render_scene(scene), scene


def _task_labels(seed: int, task: str, n: int) -> np.ndarray:
    """Balanced classes (counts differ by at most one) in a seeded order."""
    c = len(TASKS[task].classes)
    labels = np.arange(n) % c
    return np.random.default_rng([seed, STREAMS[f"task:{task}"], 2**31 - 1]).permutation(labels)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=False)


def _render_job(job: tuple):
    """One sample from its job tuple: (png bytes, (caption, negative) or None, scene, pixel
    digest). A top-level function of plain arguments, so worker processes can run it."""
    kind, seed, name, i, size, extra, cells, attempt = job
    if kind == "split":
        img, caption, scene, negative = train_sample(seed, name, i, size, extra, attempt, cells)
        text = (caption, negative)
    else:
        img, scene = task_sample(seed, name, i, size, extra, attempt, cells)
        text = None
    return _png(img), text, scene, hashlib.sha1(img.tobytes()).digest()


def _produce(jobs: list[tuple], mapper, seen: set, dedupe: bool):
    """Yield (job index, attempt, result) in job order. A sample whose pixels repeat an earlier
    split's is redrawn in this process with the next attempt number (deterministic whatever the
    worker count)."""
    for k, res in enumerate(mapper(_render_job, jobs)):
        attempt = 0
        while dedupe and res[3] in seen:
            if attempt == MAX_REDRAWS:
                kind, _, name, i = jobs[k][:4]
                raise ValueError(f"{kind} {name} sample {i}: its pixels repeat an earlier image's in {MAX_REDRAWS} "
                                 "redraws; choose a larger size or other cells")
            attempt += 1
            job = jobs[k][:-1] + (attempt,)
            res = _render_job(job)
        seen.add(res[3])
        yield k, attempt, res


def _write_split(stage: Path, p: dict, split: str, n: int, seen: set, bar, mapper) -> list[str]:
    """Shards of one image-text split; `seen` holds pixel digests of earlier splits (no repeats)."""
    size, ss = p["size"], p["shard_size"]
    holdout = tuple(tuple(h) for h in p["holdout"])
    jobs = [("split", p["seed"], split, i, size, holdout, p["cells"], 0) for i in range(n)]
    paths = [f"{split}/shard-{k:06d}.tar" for k in range(-(-n // ss))]
    writer = None
    try:
        for i, attempt, (png, (caption, negative), scene, _) in _produce(jobs, mapper, seen,
                                                                          dedupe=split != "train"):
            if i % ss == 0:
                if writer is not None:
                    writer.close()
                writer = TarShardWriter(stage / paths[i // ss])
            key = f"{i:09d}"
            meta = {"key": key, "caption": caption, "status": "success", "width": size,
                    "height": size, "split": split, "attempt": attempt,
                    "heldout": _has_heldout(scene, p["holdout"]), "scene": scene, "negative": negative}
            writer.write(key, {"png": png, "txt": caption.encode(), "neg.txt": negative["caption"].encode(),
                               "json": dumps_json(meta)})
            if bar is not None:
                bar.update(1)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    return paths


def _write_task(stage: Path, p: dict, task: str, seen: set, bar, mapper) -> dict:
    t = TASKS[task]
    n, size, ss = p["n_task"], p["size"], p["shard_size"]
    root = Path("tasks") / task
    labels = _task_labels(p["seed"], task, n)
    nshards = max(1, -(-n // ss))
    counts = [0] * len(t.classes)
    n_heldout = 0
    jobs = [("task", p["seed"], task, i, size, int(labels[i]), p["cells"], 0) for i in range(n)]
    writers = [TarShardWriter(stage / root / "test" / f"{k}.tar") for k in range(nshards)]
    try:
        for i, attempt, (png, _, scene, _) in _produce(jobs, mapper, seen, dedupe=True):
            label = int(labels[i])
            held = _has_heldout(scene, p["holdout"])
            n_heldout += held
            counts[label] += 1
            key = f"{i:09d}"
            meta = {"key": key, "task": task, "label": label, "class": t.classes[label],
                    "attempt": attempt, "heldout": held, "scene": scene}
            writers[i // ss].write(key, {"png": png, "cls": str(label).encode(), "json": dumps_json(meta)})
            if bar is not None:
                bar.update(1)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    for w in writers:  # an empty task still gets its one (empty) shard: clip_benchmark needs 0.tar
        w.close()
    write_text_atomic(stage / root / "test" / "nshards.txt", f"{nshards}\n")
    write_text_atomic(stage / root / "classnames.txt", "".join(c + "\n" for c in t.classes))
    write_text_atomic(stage / root / "zeroshot_classification_templates.txt",
                      "".join(s + "\n" for s in t.templates))
    write_text_atomic(stage / root / "dataset_type.txt", "classification\n")
    info = {"task": task, "dataset": f"wds/{task}", "n": n, "n_classes": len(t.classes),
            "classes": list(t.classes), "chance": t.chance, "class_counts": counts,
            "n_heldout_combo": int(n_heldout), "description": t.description,
            "n_templates": len(t.templates)}
    write_text_atomic(stage / root / "task.json", json.dumps(info, indent=2) + "\n")
    return info


def _manifest_ok(out: Path, p: dict, verify: bool) -> dict | None:
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if m.get("param_hash") != param_hash(p) or m.get("params") != p:
        return None
    for rel, f in m.get("files", {}).items():
        path = out / rel
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            return None
        if verify and file_sha256(path) != f["sha256"]:
            return None
    return m


def _result(out: Path, m: dict, cached: bool) -> dict:
    res = {"out_dir": str(out), "cached": cached, "param_hash": m["param_hash"], "params": m["params"],
           "seconds": m["seconds"], "images_per_s": m["images_per_s"], "n_images": m["n_images"],
           "manifest": str(out / "manifest.json"), "splits": {}, "tasks": {}}
    for split, s in m["splits"].items():
        res["splits"][split] = {"dir": str(out / split), "n": s["n"],
                                "shards": [str(out / r) for r in s["shards"]]}
    for name, t in m["tasks"].items():
        res["tasks"][name] = dict(t, root=str(out / "tasks" / name))
    return res


def load_world(out_dir: str | os.PathLike) -> dict:
    """The make_world result of an existing world (from its manifest); FileNotFoundError if none."""
    out = Path(out_dir)
    mpath = out / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{out}: no manifest.json (not a generated world, or incomplete)")
    return _result(out, json.loads(mpath.read_text()), cached=True)


def _worker_signals() -> None:
    """A pool worker's signals as the operating system's: SIGTERM (pool.terminate) ends it at once, Ctrl-C is the
    parent's. Regression (make demo hung for good at its first step): forked from `gsv`, a worker inherited its
    Python-level SIGTERM handler; where the kernel gave the signal to a thread of torch's, the main thread stayed
    in its wait on the task queue, the handler never ran, and pool.join() waited for ever."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_world(out_dir: str | os.PathLike, n_train: int | None = None, n_test: int | None = None,
               size: int = 64, seed: int = 0, quick: bool = False, shard_size: int = 1000,
               n_task: int | None = None, holdout=DEFAULT_HOLDOUT, tasks=TASK_NAMES,
               progress: bool = False, verify: bool = False, force: bool = False,
               workers: int = 1, cells: int = CELLS) -> dict:
    """Generate (or reuse) the offline world in out_dir; returns paths, counts and task info.

    n_train / n_test / n_task default to DEFAULTS, or QUICK when quick=True (explicit values
    win). An existing world with the same parameters and all its files present (sizes match;
    with verify=True also sha256) is reused and returned with cached=True. Otherwise the world
    is built in a staging directory and moved into place; manifest.json is written last, so an
    interrupted run never looks complete. workers > 1 (0: one per CPU) draws samples in that
    many processes; the bytes written do not depend on it.
    """
    out = Path(out_dir)
    p = resolve_params(n_train, n_test, n_task, size, seed, quick, shard_size, holdout, tasks, cells)
    if not force:
        m = _manifest_ok(out, p, verify)
        if m is not None:
            return _result(out, m, cached=True)
    check_layouts(p)

    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".staging-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    total = p["n_train"] + p["n_test"] + p["n_task"] * len(p["tasks"])
    bar = _progress(total, "world", progress)
    t0 = time.perf_counter()
    pool = None
    if workers != 1:
        import multiprocessing as mp
        n_proc = (os.cpu_count() or 1) if workers <= 0 else workers
        # fork starts in milliseconds; workers only use numpy and PIL, never the parent's torch.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(n_proc, initializer=_worker_signals) if n_proc > 1 else None

    def mapper(fn, jobs):
        return pool.imap(fn, jobs, chunksize=16) if pool is not None else map(fn, jobs)

    try:
        seen: set = set()
        splits = {s: {"n": p[f"n_{s}"], "shards": _write_split(stage, p, s, p[f"n_{s}"], seen, bar, mapper)}
                  for s in ("train", "test")}
        task_info = {t: _write_task(stage, p, t, seen, bar, mapper) for t in p["tasks"]}
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    files = {}
    for path in sorted(q for q in stage.rglob("*") if q.is_file()):
        rel = path.relative_to(stage).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    # Retire the old world before moving the new one in: no manifest may describe mixed files.
    (out / "manifest.json").unlink(missing_ok=True)
    for sub in ("train", "test", "tasks"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        if (stage / sub).exists():
            # not write_atomic: a whole directory (built in the stage folder) is moved in, not a file
            os.replace(stage / sub, out / sub)
    shutil.rmtree(stage, ignore_errors=True)
    m = {"generator": "gaussianvision.apps.demo.world", "version": GENERATOR_VERSION,
         "param_hash": param_hash(p), "params": p, "seconds": round(seconds, 3),
         "n_images": total, "images_per_s": round(total / max(seconds, 1e-9), 1),
         "splits": splits, "tasks": task_info, "files": files}
    write_text_atomic(out / "manifest.json", json.dumps(m, indent=1) + "\n")
    return _result(out, m, cached=False)
