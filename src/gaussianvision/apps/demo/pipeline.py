"""The steps of `gsv demo`, each a plain function over the library (no subprocesses), and the
step cache that lets a rerun reuse every step whose inputs and settings are unchanged.

Settings live in SETTINGS (full, quick, and tiny for tests); see docs/demo.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path


from gaussianvision.apps.demo.world.scenes import RELATIONS  # the world's direction phrases
from gaussianvision.train import recipe

__all__ = ["SETTINGS", "StepCache", "settings_for", "with_recipe", "step_world", "step_photos", "step_convert", "step_train",
           "step_eval", "load_samples", "register_bases", "cpu_time", "budget_bytes", "PIXEL_BYTES_PER_GAUSSIAN"]

PIXEL_BYTES_PER_GAUSSIAN = 16  # 8 float16 numbers: mean (2), Cholesky factor (3), color (3)

# the demo teacher weighs the word that names each direction (left, right, above, below) x4
_DIRECTION_BOOST = {rel.split()[0]: 4.0 for rel in RELATIONS}

# Every number that determines a result. The full demo targets <= 10 minutes on an idle 2-core
# machine, --quick <= 2 minutes; tiny is for the tests (seconds, meaningless accuracy).
SETTINGS: dict[str, dict] = {
    "full": {
        "world": {"n_train": 4000, "n_test": 100, "n_task": 160, "seed": 0, "cells": 8, "workers": 2},
        "photos": {"size": 224, "n": [100, 400], "iters": 120, "init": "content", "names": None},
        # converted and trained at N=76 (10.1x); the same encoder is also evaluated at N=48 (16x)
        "convert": {"budgets": [76], "iters": 50, "init": "content", "n_images": 2000, "batch": 64,
                    "workers": 2, "fit": {"relocate_every": 10, "relocate_fraction": 0.15}},
        # hard negatives: shape / count 73.0 / 60.0% (200 images per task) against 71.2 / 60.6% (160)
        # without, no clear gain, for 288 s of training instead of 224 s: over 10 minutes in all
        # caption-word loss with the direction words x4, direction captions x3 (same 744 steps):
        # relation 36% / 53% over two seeds against 22-30% without (trials, section 5)
        "teacher": {"base": "gsv-tiny", "epochs": 24, "batch": 128, "lr": 2e-3, "warmup": 30, "weight_decay": 0.1,
                    "lock_text": 0.4, "hard_negatives": False, "word_loss": 1.0, "word_boost": _DIRECTION_BOOST,
                    "relation_oversample": 3},
        # stages 1 and 2: `gsv train`'s data-scaled defaults (train/recipe.py; with_recipe): for the
        # 2,000 converted scenes, stage 1 76.8 epochs (153,600 samples) at lr 2e-3, batch 64, and
        # stage 2 two epochs at 1e-4, batch 128, warmup 5% of each run
        "stage1": {"config": "gs-tiny", "cache_teacher": True, "hflip": 0.5},
        "stage2": {},
        "eval": {"batch": 160, "budgets": [76, 48]},
        "seed": 0,
    },
    "quick": {
        "world": {"n_train": 800, "n_test": 50, "n_task": 60, "seed": 0, "cells": 8, "workers": 2},
        "photos": {"size": 128, "n": [100, 400], "iters": 100, "init": "content",
                   "names": ["astronaut", "chelsea", "coffee", "rocket"]},
        "convert": {"budgets": [64], "iters": 40, "init": "content", "n_images": 640, "batch": 64,
                    "fit": {"relocate_every": 10, "relocate_fraction": 0.15}},
        "teacher": {"base": "gsv-tiny", "epochs": 8, "batch": 64, "lr": 2e-3, "warmup": 10, "weight_decay": 0.1,
                    "lock_text": 0.6, "hard_negatives": False, "word_loss": 1.0, "word_boost": _DIRECTION_BOOST,
                    "relation_oversample": 3},
        "stage1": {"config": "gs-tiny", "epochs": 12, "batch": 64, "lr": 3e-3, "warmup": 10, "cache_teacher": True,
                   "hflip": 0.5},
        "stage2": {"epochs": 2, "batch": 64, "lr": 1e-4, "warmup": 5},
        "eval": {"batch": 120, "budgets": [64, 48]},
        "seed": 0,
    },
    "tiny": {
        "world": {"n_train": 48, "n_test": 8, "n_task": 12, "seed": 0, "cells": 8},
        "photos": {"size": 32, "n": [16, 32], "iters": 5, "init": "grid", "names": ["astronaut", "coffee"]},
        "convert": {"budgets": [16, 32], "iters": 5, "init": "grid", "n_images": 48, "batch": 48},
        "teacher": {"base": "gsv-tiny", "epochs": 2, "batch": 16, "lr": 1e-3, "warmup": 1, "weight_decay": 0.1,
                    "lock_text": 0.5, "hard_negatives": True, "word_loss": 1.0, "word_boost": _DIRECTION_BOOST,
                    "relation_oversample": 3},
        "stage1": {"config": "gs-tiny", "epochs": 2, "batch": 16, "lr": 1e-3, "warmup": 1, "cache_teacher": True,
                   "hflip": 0.5},
        "stage2": {"epochs": 1, "batch": 16, "lr": 5e-4, "warmup": 1},
        "eval": {"batch": 16, "budgets": [16, 32, 24]},  # 24 is read by the N=16 encoder (nearest)
        "seed": 0,
    },
}

# Extra OpenCLIP bases the demo can use (registered in-process, like models' gsv-tiny).
def settings_for(mode: str) -> dict:
    return json.loads(json.dumps(SETTINGS[mode]))


def register_bases() -> None:
    from gaussianvision.models import register_open_clip_configs
    register_open_clip_configs()  # through open_clip's public add_model_config


def budget_bytes(n: int, size: int = 64) -> tuple[int, int]:
    """(payload bytes of N Gaussians, bytes of the size x size RGB image they stand for)."""
    return PIXEL_BYTES_PER_GAUSSIAN * n, 3 * size * size


def cpu_time() -> float:
    """CPU seconds of this process and of its finished children (the conversion's workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class StepCache:
    """Runs named steps; a step's result is stored in DIR/steps/NAME.json with the hash of its key
    (its settings and the hashes of the steps it reads), and reused when the key is unchanged."""

    def __init__(self, out: Path, force: bool = False, total: int = 0):
        self.out = Path(out)
        self.dir = self.out / "steps"
        self.force = force
        self.timings: dict[str, dict] = {}
        self.total, self.index = total, 0

    def run(self, name: str, key: dict, fn, label: str | None = None, check=None) -> tuple[dict, str]:
        """-> (result, hash). fn() returns a JSON-able dict; check(result) False (outputs gone) reruns."""
        self.index += 1
        h = _hash({"step": name, **key})
        path = self.dir / f"{name}.json"
        tag = f"[{self.index}/{self.total}] {label or name}"
        if not self.force and path.is_file():
            try:
                rec = json.loads(path.read_text())
            except ValueError:
                rec = {}
            if rec.get("hash") == h and "result" in rec and (check is None or check(rec["result"])):
                self.timings[name] = {"seconds": 0.0, "cpu_seconds": 0.0, "cached": True,
                                      "first_seconds": rec.get("seconds"), "first_cpu_seconds": rec.get("cpu_seconds")}
                _log(f"{tag}: cached (first run took {rec.get('seconds', 0):.1f} s, cpu {rec.get('cpu_seconds', 0):.1f} s)")
                return rec["result"], h
        _log(f"{tag} ...")
        t0, c0 = time.perf_counter(), cpu_time()
        result = fn()
        secs, cpu = time.perf_counter() - t0, cpu_time() - c0
        self.timings[name] = {"seconds": round(secs, 2), "cpu_seconds": round(cpu, 2), "cached": False}
        from gaussianvision.apps.cli.command import write_json
        write_json(path, {"hash": h, "key": key, "seconds": round(secs, 2), "cpu_seconds": round(cpu, 2),
                          "result": result})
        _log(f"{tag}: done in {secs:.1f} s (cpu {cpu:.1f} s)")
        return result, h


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------- world

def step_world(out: Path, s: dict, force: bool) -> dict:
    from gaussianvision.apps.demo.world import make_world
    w = make_world(out / "world", n_train=s["n_train"], n_test=s["n_test"], n_task=s["n_task"], seed=s["seed"],
                   cells=s.get("cells", 8), force=force, workers=int(s.get("workers", 1)))
    return {"out_dir": str(w["out_dir"]), "param_hash": w["param_hash"], "n_images": w["n_images"],
            "splits": {k: {"n": v["n"], "dir": str(v["dir"])} for k, v in w["splits"].items()},
            "tasks": {k: {"root": str(v["root"]), "dataset": v["dataset"], "n": v["n"], "n_classes": v["n_classes"],
                          "classes": v["classes"], "chance": v["chance"]} for k, v in w["tasks"].items()},
            "seconds_world": w.get("seconds")}


# ---------------------------------------------------------------- photos

def step_photos(out: Path, s: dict, progress: bool) -> dict:
    from gaussianvision.data.photos import PHOTO_NAMES, bundled_photos
    from gaussianvision.fit import FitConfig, FitStream
    from gaussianvision.raster import render
    from gaussianvision.splats import Splats, encode, save
    from gaussianvision.data.images import save_png
    d = _fresh(out / "photos")
    names = tuple(s["names"] or PHOTO_NAMES)
    photos = bundled_photos(s["size"], names=names)
    for (name, im) in photos:
        save_png(im, d / f"{name}_original.png")
    rows = []
    for n in s["n"]:
        t0 = time.perf_counter()  # every photo in one batch, through the library's FitStream
        stream = FitStream(n, FitConfig(iters=s["iters"], init=s["init"]), batch_size=len(photos),
                           retry=False, progress=progress)
        items = list(stream(photos))
        secs = time.perf_counter() - t0
        for it in items:
            if not it.ok:
                raise it.exception or RuntimeError(it.error)
        metrics = [it.metrics for it in items]
        splats = Splats.stack([it.splats for it in items])
        save(d / f"photos_n{n}.gsv", splats)
        rendered = render(splats).clamp(0, 1)
        for b, (name, _) in enumerate(photos):
            save_png(rendered[b], d / f"{name}_n{n}.png")
        file_bytes = len(encode(items[0].splats))
        pixel = 3 * s["size"] * s["size"]
        payload = PIXEL_BYTES_PER_GAUSSIAN * n
        rows.append({"n_gaussians": n, "size": s["size"], "iters": s["iters"], "init": s["init"],
                     "psnr": sum(m["psnr"] for m in metrics) / len(metrics),
                     "ssim": sum(m["ssim"] for m in metrics) / len(metrics),
                     "psnr_per_photo": {name: metrics[b]["psnr"] for b, (name, _) in enumerate(photos)},
                     "pixel_bytes": pixel, "payload_bytes": payload, "file_bytes": file_bytes,
                     "compression": pixel / payload, "seconds_per_image": secs / len(photos)})
    return {"dir": str(d), "names": list(names), "rows": rows}


# ---------------------------------------------------------------- conversion of the world

def step_convert(out: Path, world: dict, n: int, s: dict, progress: bool) -> dict:
    """The world's train shards -> splat shards with N Gaussians, the images kept for stage 1.

    Only the first `n_images` train images are converted: the world's shards are cut to that
    many samples first (shard boundaries need not match)."""
    from gaussianvision.data.conversion import ConvertConfig, convert_dataset
    d = _fresh(out / f"splats_n{n}")
    src = _subset_shards(world, s["n_images"], out / "world_subset")
    fit = {"iters": s["iters"], "init": s["init"], **s.get("fit", {})}
    cfg = ConvertConfig(n_gaussians=n, size=64, fit_options=fit,
                        keep_image=True, batch_size=s["batch"], shard_size=1000, workers=s.get("workers", 0),
                        progress=progress)
    summ = convert_dataset(src, d, cfg)
    if not summ.get("complete") or summ["converted"] == 0:
        raise RuntimeError(f"conversion to {d} incomplete: {summ}")
    payload, pixel = budget_bytes(n)
    return {"dir": str(d), "n_gaussians": n, "iters": s["iters"], "init": s["init"], "converted": summ["converted"],
            "failed": summ["failed"], "psnr": summ.get("psnr_mean"), "pixel_bytes": pixel, "payload_bytes": payload,
            "compression": pixel / payload}


def _subset_shards(world: dict, n_images: int, dest: Path) -> list[str]:
    """The train split's shards if they hold <= n_images samples, else a copy of the first n_images
    samples as new shards of 1000 under dest (same keys, same bytes per member)."""
    from itertools import islice
    from gaussianvision.data.shards import ShardWriter, read_samples
    from gaussianvision.data.inputs import expand_urls
    shards = expand_urls(world["splits"]["train"]["dir"])
    if world["splits"]["train"]["n"] <= n_images:
        return shards
    marker = dest / f"subset-{world['param_hash']}-{n_images}.done"
    if marker.is_file():
        return sorted(str(p) for p in dest.glob("subset-*.tar"))
    _fresh(dest)
    written: list[str] = []
    writer = None
    samples = islice((x for url in shards for x in read_samples(url)), n_images)
    for i, x in enumerate(samples):
        if i % 1000 == 0:
            if writer is not None:
                writer.close()
            writer = ShardWriter(dest / f"subset-{len(written):06d}.tar")
            written.append(str(writer.path))
        writer.write(x["__key__"], {k: v for k, v in x.items() if not k.startswith("__")})
    if writer is not None:
        writer.close()
    marker.write_text(json.dumps({"n": n_images}))
    return written


# ---------------------------------------------------------------- training

def load_samples(spec, need: tuple[str, ...], image_size: int | None = None) -> list[dict]:
    """All samples of tar shards, decoded as the trainer does (gsv train --in-memory)."""
    from gaussianvision.train.batches import build_source
    src = build_source(spec, need, 1, image_size=image_size)
    return [x for u in src.shards for x in src.read_shard(u)]


_DIRECTION = re.compile(r"\b(" + "|".join(map(re.escape, RELATIONS)) + r")\b")


def oversample_relations(samples: list[dict], k: int) -> list[dict]:
    """The samples, with those whose caption states a direction (left of / right of / above /
    below) k times in all: the teacher's relation words get k times the batches."""
    if k < 1:
        raise ValueError(f"relation_oversample must be >= 1, got {k}")
    if k == 1:
        return samples
    rel = [x for x in samples if _DIRECTION.search(x.get("text", ""))]
    return samples + rel * (k - 1)


def with_recipe(stage: str, s: dict, n_data: int) -> dict:
    """The stage's settings with batch, epochs and lr that are not given taken from `gsv train`'s
    data-scaled recipe (train/recipe.py) for n_data samples, as the command line does; warmup,
    when not given, is the recipe's fraction of the steps (set by step_train)."""
    r = recipe.recipe_for(stage)
    out = dict(s)
    out.setdefault("batch", r.batch_size)
    out.setdefault("epochs", recipe.epochs_for(stage, n_data))
    out.setdefault("lr", recipe.lr_for(stage, n_data))
    return out


def step_train(out_dir: Path, stage: str, samples: list[dict], s: dict, *, base=None, pretrained=None,
               model_config=None, init_from=None, seed: int = 0, progress: bool = False) -> dict:
    """One `gsv train` run in-process (the functions cli/train.py calls), on samples held in memory."""
    from gaussianvision.train.batches import build_memory_source
    from gaussianvision.train.distributed import DistInfo
    from gaussianvision.train.loop import TrainConfig, train
    from gaussianvision.apps.demo.teacher import build_stage
    out_dir = _fresh(Path(out_dir))
    info = DistInfo()
    n_data = len(samples)
    samples = oversample_relations(samples, int(s.get("relation_oversample", 1)))
    s = with_recipe(stage, s, n_data)
    source = build_memory_source(samples, s["batch"], seed=seed)
    # epochs count passes over the data as given: oversampling changes what a step holds, not how many
    steps = max(1, math.ceil(s["epochs"] * len(source) * n_data / len(samples)))
    if s.get("warmup") is None:
        s["warmup"] = recipe.warmup_steps(steps, recipe.recipe_for(stage).warmup_fraction)
    lock = int(round(s.get("lock_text", 0.0) * steps))  # stage rgb: a fraction of the steps
    built = build_stage(stage, base=base, pretrained=pretrained, model_config=model_config,
                        init_from=str(init_from) if init_from else None, info=info, seed=seed,
                        lock_text_steps=lock, hard_negatives=bool(s.get("hard_negatives", False)),
                        mirror_pairs=float(s.get("mirror_pairs", 0.0)),
                        cache_teacher=bool(s.get("cache_teacher", False)), hflip=float(s.get("hflip", 0.0)),
                        word_loss=float(s.get("word_loss", 0.0)), word_boost=s.get("word_boost"))
    cfg = TrainConfig(out=str(out_dir), steps=steps, batch_size=s["batch"], lr=s["lr"], warmup=s.get("warmup", 0),
                      weight_decay=s.get("weight_decay", 0.1), precision="fp32", seed=seed,
                      log_every=max(1, steps // 60), progress=progress,
                      extra={"data": "in-memory (gsv demo)", "stage": stage})
    summary = train(built, source, cfg, info)
    losses = summary.pop("losses")
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in built.model.parameters())
    return {"out": str(out_dir), "stage": stage, "steps": summary["steps"], "samples": len(samples),
            "epochs": s["epochs"], "lr": s["lr"], "batch": s["batch"], "warmup": s["warmup"],
            "lock_text_steps": lock, "hard_negatives": bool(s.get("hard_negatives", False)),
            "first_loss": losses[0] if losses else None, "final_loss": summary["final_loss"],
            "trainable_parameters": trainable, "parameters": total, "log": str(out_dir / "log.jsonl")}


# ---------------------------------------------------------------- zero-shot evaluation

def step_eval(spec: str, world: dict, out_dir: Path, batch: int, splats=None, progress: bool = False) -> dict:
    """One model (load_eval_model spec) on the world's four tasks -> per task acc1 / balanced acc."""
    if progress:
        return _eval(spec, world, out_dir, batch, splats)
    # clip_benchmark draws its own bars on stderr (tqdm reads TQDM_DISABLE only at import): the
    # quiet demo sends them to a buffer instead of patching the package, and keeps what else came
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):
            return _eval(spec, world, out_dir, batch, splats)
    finally:
        kept = [ln for ln in quiet.getvalue().replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln
                and "s/it]" not in ln and "?it/s" not in ln]
        if kept:
            print("\n".join(kept), file=sys.stderr)


def _eval(spec: str, world: dict, out_dir: Path, batch: int, splats=None) -> dict:
    from gaussianvision.eval import evaluate_one, load_eval_model
    from gaussianvision.eval.report import write_result
    register_bases()
    em = load_eval_model(spec, "cpu")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {}
    for task, t in world["tasks"].items():
        rec = evaluate_one(em, t["dataset"], t["root"], batch_size=batch, device="cpu", splats=splats,
                           cache_dir=str(out_dir / "splat_cache") if splats is not None else None)
        write_result(out_dir, rec)
        m = rec["metrics"]
        res[task] = {"acc1": m["acc1"], "mean_per_class_recall": m.get("mean_per_class_recall"),
                     "seconds": rec.get("seconds"),
                     **({"fitted": rec["gsv"]["fitted"], "psnr": rec["gsv"]["psnr"]} if "gsv" in rec else {})}
    out = {"model": spec, "tasks": res, "mean_acc1": sum(r["acc1"] for r in res.values()) / len(res)}
    if splats is not None:  # the splats the model read: mean over the tasks of each task's mean PSNR
        out["psnr"] = sum(r["psnr"] for r in res.values()) / len(res)
    return out
