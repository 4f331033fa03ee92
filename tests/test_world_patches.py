"""The patches world (apps/worlds/patches): byte determinism, captions true of what is drawn
(attributes re-derived from pixels, captions parsed with patterns written here), balanced tasks
whose labels match the drawn scene, and files read by the project's readers (the trainer's shard
source, the demo world's reader, clip_benchmark)."""
import colorsys
import json
import re
import warnings

import numpy as np
import pytest

from gaussianvision.apps.demo.world import iter_samples, iter_task
from gaussianvision.apps.worlds.patches import TASKS, make_world, render_scene, sample_scene, train_sample
from gaussianvision.apps.worlds.patches.world import task_labels

TINY = dict(n_train=24, n_test=6, n_task=10, shard_size=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("patches") / "w", **TINY)


def _files(w):
    return json.loads(open(w["manifest"]).read())["files"]


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    again = make_world(tmp_path / "again", **TINY)
    assert _files(again) == _files(world) and again["param_hash"] == world["param_hash"]
    other = make_world(tmp_path / "other", seed=1, **TINY)
    assert all(other_f["sha256"] != f["sha256"] for (rel, f), other_f in zip(sorted(_files(world).items()),
               [v for _, v in sorted(_files(other).items())]) if rel.endswith(".tar") and f["bytes"] > 1024)


def test_cached_world_is_reused_and_changed_parameters_rebuild(world, tmp_path):
    assert make_world(world["out_dir"], **TINY)["cached"]
    out = tmp_path / "w"
    make_world(out, **TINY)
    bigger = make_world(out, **{**TINY, "n_train": 30})
    assert not bigger["cached"] and bigger["splits"]["train"]["n"] == 30
    assert sum(1 for _ in iter_samples(out, "train")) == 30


def test_an_interrupted_build_leaves_no_manifest_and_is_rebuilt(world, tmp_path, monkeypatch):
    import gaussianvision.apps.worlds.patches.world as wmod
    out = tmp_path / "w"
    make_world(out, **TINY)
    calls = {"n": 0}
    real = wmod.render_scene

    def failing(scene, noise=True):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(scene, noise)
    monkeypatch.setattr(wmod, "render_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        make_world(out, **{**TINY, "n_train": 30})
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp*"))
    monkeypatch.setattr(wmod, "render_scene", real)
    again = make_world(out, **TINY)
    assert not again["cached"] and _files(again) == _files(world)


def _derive(img: np.ndarray, gray: float) -> dict:
    """Attributes from a noise-free drawing: the patch is every pixel not equal to the gray."""
    g = round(gray * 255)
    mask = np.any(img != g, axis=-1)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    n = img.shape[0]
    patch = img[y0:y1, x0:x1].astype(float) / 255
    lum = patch.sum(-1)
    bright = lum >= (lum.max() + lum.min()) / 2
    side = x1 - x0
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    if bright.all():
        texture = "plain"
    elif (bright == bright[:1]).all() or (bright == bright[:, :1]).all():
        texture = "striped"  # every row (or column) repeats the first: stripes
    elif (~bright).all(1).any() and (~bright).all(0).any():
        texture = "dotted"  # dark rows and dark columns between the dots
    else:
        texture = "checkered"  # every row and column half bright
    r, gg, b = patch[bright].mean(0)
    hue = colorsys.rgb_to_hsv(r, gg, b)[0] * 360
    names = ["red", "yellow", "green", "cyan", "blue", "magenta"]
    fraction = side / n
    return {"texture": texture, "hue": names[int(((hue + 30) % 360) // 60)],
            "position": ("top" if cy < n / 2 else "bottom") + " " + ("left" if cx < n / 2 else "right"),
            "size": "small" if fraction < 0.26 else "medium" if fraction < 0.38 else "large",
            "square": y1 - y0 == side}


_SYN = {"solid": "plain", "lined": "striped", "chequered": "checkered", "spotted": "dotted", "turquoise": "cyan",
        "pink": "magenta", "little": "small", "mid-sized": "medium", "big": "large", "upper": "top", "lower": "bottom"}
_W = r"([a-z-]+)"
_P = r"([a-z]+ [a-z]+)"
_PATTERNS = [  # written from the frames' prose, not from captions.FRAMES
    (re.compile(rf"^a {_W} {_W} {_W} patch in the {_P}$"), "shtp"),
    (re.compile(rf"^{_W} {_W} square, {_W}, {_P} corner, on gray noise$"), "thsp"),
    (re.compile(rf"^noise with a {_W} {_W} patch of {_W} at the {_P}$"), "sthp"),
    (re.compile(rf"^in the {_P}: a {_W} patch, {_W} and {_W}$"), "phts"),
]


def _parse(text: str) -> dict:
    for pat, order in _PATTERNS:
        m = pat.match(text)
        if m:
            words = [" ".join(_SYN.get(w, w) for w in g.split()) for g in m.groups()]
            keys = {"s": "size", "h": "hue", "t": "texture", "p": "position"}
            return {keys[k]: w for k, w in zip(order, words)}
    raise AssertionError(f"caption matches no frame: {text!r}")


def test_captions_state_what_the_pixels_show():
    seen = {k: set() for k in ("texture", "hue", "position", "size")}
    frames = set()
    for i in range(300):
        _, text, scene = train_sample(0, "train", i)
        truth = _derive(render_scene(scene, noise=False), scene["gray"])
        assert truth.pop("square")
        stated = _parse(text)
        assert stated == truth == {k: scene[k] for k in truth}, (i, text)
        for k, v in truth.items():
            seen[k].add(v)
        frames.add(next(j for j, (p, _) in enumerate(_PATTERNS) if p.match(text)))
    assert {k: len(v) for k, v in seen.items()} == {"texture": 4, "hue": 6, "position": 4, "size": 3}
    assert frames == {0, 1, 2, 3}


def test_noise_is_drawn_and_changes_only_the_background():
    scene = sample_scene(np.random.default_rng(5))
    noisy, clean = render_scene(scene), render_scene(scene, noise=False)
    x0, y0, s = scene["x0"], scene["y0"], scene["side"]
    inside = np.zeros(noisy.shape[:2], bool)
    inside[y0:y0 + s, x0:x0 + s] = True
    assert (noisy[inside] == clean[inside]).all()
    assert 0.04 < (noisy[~inside].astype(float) - clean[~inside]).std() / 255 < 0.12


def test_tasks_are_balanced_and_labels_match_the_drawn_scene(world):
    for name, t in world["tasks"].items():
        counts = t["class_counts"]
        assert sum(counts) == TINY["n_task"] and max(counts) - min(counts) <= 1, (name, counts)
        items = list(iter_task(t["root"]))
        assert [y for _, y, _ in items] == task_labels(0, name, TINY["n_task"]).tolist()
        for img, y, meta in items:
            scene = meta["scene"]
            truth = _derive(render_scene(scene, noise=False), scene["gray"])
            assert truth[name] == scene[name] == TASKS[name].classes[y]
            assert (img.mul(255).round().byte().permute(1, 2, 0).numpy() == render_scene(scene)).all()
    big = np.bincount(task_labels(3, "hue", 1000), minlength=6)
    assert big.max() - big.min() <= 1


def test_prompts_use_only_caption_words():
    vocab = set()
    for i in range(400):
        vocab |= set(re.findall(r"[a-z-]+", train_sample(0, "train", i)[1]))
    vocab |= {"photo", "of"}
    for t in TASKS.values():
        for c in t.classes:
            for tpl in t.templates:
                words = set(re.findall(r"[a-z-]+", tpl.format(c=c)))
                assert words <= vocab, (t.name, words - vocab)


def test_the_trainer_and_clip_benchmark_read_the_world(world):
    from gaussianvision.train.batches import build_source
    src = build_source(world["splits"]["train"]["dir"], ("image", "text"), 4, image_size=64)
    samples = [x for u in src.shards for x in src.read_shard(u)]
    assert len(samples) == TINY["n_train"]
    own = list(iter_samples(world["out_dir"], "train"))
    assert [x["text"] for x in samples] == [c for _, c, _ in own]
    assert tuple(samples[0]["image"].shape) == (3, 64, 64)
    builder = pytest.importorskip("clip_benchmark.datasets.builder")
    for name, t in world["tasks"].items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = builder.build_dataset(f"wds/{name}", root=t["root"], transform=lambda im: np.asarray(im),
                                       split="test")
            items = list(ds)
        assert ds.classes == t["classes"] and len(ds.templates) == t["n_templates"]
        assert [y for _, y in items] == [y for _, y, _ in iter_task(t["root"])]


def test_cli_makes_a_world_and_refuses_bad_parameters(tmp_path, capsys):
    from gaussianvision.apps.worlds.patches.__main__ import main
    assert main(["--out", str(tmp_path / "w"), "--n-train", "3", "--n-test", "1", "--n-task", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["n"] == 3
    assert main(["--out", str(tmp_path / "x"), "--size", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size must be at least 32" in err[0]
