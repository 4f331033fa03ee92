"""make_world on disk: byte determinism, caching by manifest, readers, and clip_benchmark loading."""
import hashlib
import json
import os
import tarfile
import warnings

import numpy as np
import pytest
import torch

from gaussianvision.apps.demo.world import (TASK_NAMES, iter_samples, iter_task, load_world, make_world,
                                           render_scene)

TINY = dict(n_train=12, n_test=6, n_task=8, size=32, shard_size=5)


def _digests(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            if rel != "manifest.json":
                out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("w") / "world", seed=0, **TINY)


def test_layout_and_counts(world):
    root = world["out_dir"]
    assert not world["cached"]
    assert [os.path.basename(p) for p in world["splits"]["train"]["shards"]] == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert world["splits"]["test"]["n"] == 6
    with tarfile.open(world["splits"]["train"]["shards"][0]) as t:
        names = t.getnames()
    # img2dataset layout: consecutive KEY.png, KEY.txt, KEY.neg.txt (hard negative), KEY.json
    # with 9-digit keys.
    assert names[:4] == ["000000000.png", "000000000.txt", "000000000.neg.txt", "000000000.json"]
    assert len(names) == 20
    assert set(world["tasks"]) == set(TASK_NAMES)
    for name, t in world["tasks"].items():
        d = os.path.join(root, "tasks", name)
        assert t["root"] == d
        assert open(os.path.join(d, "test", "nshards.txt")).read().strip() == "2"
        classes = open(os.path.join(d, "classnames.txt")).read().splitlines()
        assert classes == t["classes"] and t["chance"] == pytest.approx(1 / len(classes))
        templates = open(os.path.join(d, "zeroshot_classification_templates.txt")).read().splitlines()
        assert templates and all("{c}" in s for s in templates)
        assert sum(t["class_counts"]) == 8 and max(t["class_counts"]) - min(t["class_counts"]) <= 1
    assert world["n_images"] == 12 + 6 + 8 * len(TASK_NAMES)


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = make_world(tmp_path / "again", seed=0, **TINY)
    assert _digests(world["out_dir"]) == _digests(again["out_dir"])
    other = make_world(tmp_path / "other", seed=1, **TINY)
    a, b = _digests(world["out_dir"]), _digests(other["out_dir"])
    assert a.keys() == b.keys()
    tars = [k for k in a if k.endswith(".tar")]
    assert all(a[k] != b[k] for k in tars)


def test_worker_processes_write_the_same_bytes(world, tmp_path):
    two = make_world(tmp_path / "two", seed=0, workers=2, **TINY)
    assert _digests(world["out_dir"]) == _digests(two["out_dir"])


def test_pool_workers_take_the_operating_systems_signals(tmp_path, monkeypatch):
    """Regression (make demo hung at its first step): forked from `gsv`, the world's pool workers inherited its
    Python-level SIGTERM handler; a SIGTERM from pool.terminate() that the kernel gave to a torch thread never
    reached the worker's main thread, blocked on the task queue, and pool.join() waited for ever. Now each worker
    resets SIGTERM to the default (ends at once, whatever thread takes it) and leaves Ctrl-C to the parent."""
    import multiprocessing as mp
    import signal
    import subprocess
    import sys
    from gaussianvision.apps.demo.world import world as world_module
    made = []
    real = mp.get_context

    def context(method=None):
        ctx = real(method)

        class Spy:
            def Pool(self, n, **kw):  # noqa: N802 (multiprocessing's name)
                made.append(kw.get("initializer"))
                return ctx.Pool(n, **kw)
        return Spy()
    monkeypatch.setattr(mp, "get_context", context)
    make_world(tmp_path / "w", seed=0, workers=2, **TINY)
    assert made == [world_module._worker_signals]
    code = ("import signal; signal.signal(signal.SIGTERM, lambda *a: None); "
            "from gaussianvision.apps.demo.world.world import _worker_signals; _worker_signals(); "
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_samples_do_not_depend_on_sharding(world, tmp_path):
    one = make_world(tmp_path / "one", seed=0, **dict(TINY, shard_size=100))
    assert len(one["splits"]["train"]["shards"]) == 1
    a = list(iter_samples(world["out_dir"], "train"))
    b = list(iter_samples(one["out_dir"], "train"))
    assert len(a) == len(b) == 12
    for (ia, ca, ma), (ib, cb, mb) in zip(a, b):
        assert torch.equal(ia, ib) and ca == cb and ma == mb


def test_read_back_matches_ground_truth(world):
    n = 0
    for img, caption, meta in iter_samples(world["out_dir"], "train"):
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert meta["caption"] == caption and meta["width"] == meta["height"] == 32
        again = torch.from_numpy(np.array(render_scene(meta["scene"]))).permute(2, 0, 1).float() / 255
        assert torch.equal(img, again)  # PNG is lossless and the metadata is the whole scene
        n += 1
    assert n == 12
    labels = [label for _, label, meta in iter_task(world["tasks"]["color"]["root"])]
    assert len(labels) == 8 and all(0 <= x < 6 for x in labels)


def test_no_image_is_shared_between_splits_and_tasks(world):
    def keys(it):
        return {hashlib.sha1(x[0].numpy().tobytes()).hexdigest() for x in it}
    train = keys(iter_samples(world["out_dir"], "train"))
    test = keys(iter_samples(world["out_dir"], "test"))
    tasks = set().union(*(keys(iter_task(t["root"])) for t in world["tasks"].values()))
    assert not (train & test) and not (train & tasks) and not (test & tasks)


def test_clip_benchmark_reads_every_task(world):
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    for name, t in world["tasks"].items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = builder.build_dataset(f"wds/{name}", root=t["root"], transform=lambda im: np.asarray(im),
                                       split="test")
            items = list(ds)
        assert ds.classes == t["classes"] and len(ds.templates) == t["n_templates"]
        assert len(items) == 8
        own = [label for _, label, _ in iter_task(t["root"])]
        assert all(isinstance(y, int) for _, y in items)  # .cls decoded to a class index
        assert [y for _, y in items] == own
        assert all(x.shape == (32, 32, 3) for x, _ in items)


def test_cache_reuse_and_invalidation(tmp_path):
    out = tmp_path / "w"
    first = make_world(out, seed=0, **TINY)
    shard = first["splits"]["train"]["shards"][0]
    mtime = os.stat(shard).st_mtime_ns
    second = make_world(out, seed=0, **TINY)
    assert second["cached"] and second["param_hash"] == first["param_hash"]
    assert os.stat(shard).st_mtime_ns == mtime
    assert load_world(out)["splits"] == first["splits"]

    # Different parameters: rebuilt, and shards of the old world do not linger.
    third = make_world(out, seed=0, **dict(TINY, shard_size=100))
    assert not third["cached"] and third["param_hash"] != first["param_hash"]
    assert sorted(os.listdir(out / "train")) == ["shard-000000.tar"]
    assert not [p for p in os.listdir(out) if p.startswith(".staging")]

    # A missing file is noticed; a same-size corruption only with verify=True.
    os.remove(out / "tasks" / "count" / "classnames.txt")
    assert not make_world(out, seed=0, **dict(TINY, shard_size=100))["cached"]
    path = out / "test" / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    path.write_bytes(bytes(data))
    assert make_world(out, seed=0, **dict(TINY, shard_size=100))["cached"]
    assert not make_world(out, seed=0, verify=True, **dict(TINY, shard_size=100))["cached"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["files"]["test/shard-000000.tar"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_quick_defaults_and_bad_arguments(tmp_path):
    from gaussianvision.apps.demo.world.world import QUICK, resolve_params
    p = resolve_params(quick=True, n_task=3)
    assert p["n_train"] == QUICK["n_train"] and p["n_task"] == 3
    with pytest.raises(ValueError):
        make_world(tmp_path / "x", tasks=("nope",), **TINY)
    with pytest.raises(ValueError):
        make_world(tmp_path / "x", **dict(TINY, size=8))
    with pytest.raises(FileNotFoundError):
        load_world(tmp_path / "nothing")


def test_a_repeated_image_is_redrawn_with_the_next_attempt():
    from gaussianvision.apps.demo.world.world import _produce, _render_job
    jobs = [("task", 0, "color", i, 32, i % 6, 8, 0) for i in range(3)]
    first = _render_job(jobs[1])
    seen = {first[3]}  # pretend an earlier split already holds sample 1's pixels
    out = list(_produce(jobs, map, seen, dedupe=True))
    assert [a for _, a, _ in out] == [0, 1, 0]
    assert out[1][2][3] != first[3] and out[1][2][3] in seen
    assert out[1][2][2]["objects"][0]["color"] == "orange"  # still class 1


def test_cli_reports_bad_parameters_in_one_line(tmp_path, capsys):
    from gaussianvision.apps.demo.world.__main__ import main
    assert main(["--out", str(tmp_path / "w"), "--cells", "40"]) == 2
    err = capsys.readouterr().err
    assert "error: cells must be 0" in err and "Traceback" not in err
