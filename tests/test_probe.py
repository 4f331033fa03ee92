"""gsv probe: linear probes per attribute on the layers of GS and RGB towers (eval/probe.py,
eval/linear_probe.py, eval/probe_table.py, apps/cli/probe.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_splats
from test_train_fixtures import COLORS, png_bytes  # tests/ is on sys.path (pytest rootdir conftest)

from gaussianvision.eval.linear_probe import probe, stratified_split

# ---------------------------------------------------------------- the logistic probe


def test_stratified_split_is_seeded_disjoint_and_per_class():
    y = torch.arange(90) % 3
    a, b = stratified_split(y, 0.5, seed=1), stratified_split(y, 0.5, seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, stratified_split(y, 0.5, seed=2).test)
    assert sorted(torch.cat([a.train, a.test]).tolist()) == list(range(90))
    assert torch.bincount(y[a.test]).tolist() == [15, 15, 15]
    lone = stratified_split(torch.tensor([0, 0, 1]), 0.5)  # a class of one stays in train
    assert 2 in lone.train.tolist() and 2 not in lone.test.tolist()


def test_probe_separable_features_reach_100_percent_held_out():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 4
    centres = torch.randn(4, 16, generator=g) * 3
    x = centres[y] + 0.3 * torch.randn(120, 16, generator=g)
    split = stratified_split(y, 0.5, seed=0)
    res = probe(x, y, split, 4)  # L2 chosen by cross-validation
    assert res["acc"] == 1.0 and res["train_acc"] == 1.0
    assert res["chance"] == pytest.approx(0.25) and (res["n_train"], res["n_test"], res["dim"]) == (60, 60, 16)
    # a class given by the sign of one feature among 50 noise features: found; without it: chance
    x = torch.randn(800, 51, generator=g)
    y = (x[:, 7] > 0).long()
    split = stratified_split(y, 0.5)
    assert probe(x, y, split, 2, l2=1e-3)["acc"] > 0.9
    assert abs(probe(torch.cat([x[:, :7], x[:, 8:]], 1), y, split, 2, l2=1e-3)["acc"] - 0.5) < 0.08


def test_probe_random_labels_stay_at_chance_held_out():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(800, 32, generator=g)
    y = torch.randint(0, 4, (800,), generator=g)
    res = probe(x, y, stratified_split(y, 0.5, seed=0), 4, l2=1e-4)
    assert res["train_acc"] > 0.35  # it fits the noise of the training split...
    assert abs(res["acc"] - 0.25) < 0.07  # ...and learns nothing that holds out (SE about 0.022)


# ---------------------------------------------------------------- features from the towers

@pytest.fixture(scope="module")
def towers():
    pytest.importorskip("open_clip")
    from gaussianvision.models import create_gsclip, create_rgb_clip
    torch.manual_seed(0)
    return create_gsclip(config="gs-tiny").eval(), create_rgb_clip("gsv-tiny").eval()


def _padded(s, extra: int, seed: int = 5):
    """The same splats with `extra` garbage Gaussians appended after each image's valid ones."""
    from gaussianvision.splats import Splats
    junk = random_splats(s.batch_size, extra, s.height, s.width, seed=seed)
    cat = {k: torch.cat([getattr(s, k), getattr(junk, k) * 7], 1) for k in ("means", "chol", "colors")}
    return Splats(cat["means"], cat["chol"], cat["colors"], s.height, s.width,
                  torch.full((s.batch_size,), s.max_gaussians, dtype=torch.long))


def test_gs_layer_shapes_known_values_and_padding(towers):
    from gaussianvision.eval.probe import layer_features
    gs, _ = towers
    s = random_splats(3, 7, 64, 64, seed=2)
    feats, skipped = layer_features(gs, "gs", s)
    assert skipped == {} and list(feats) == ["stem", "resampler", "pooled", "embedding"]
    width, dim = gs.visual.width, gs.visual.proj.shape[1]
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stem": (3, gs.visual.stem.token_dim), "resampler": (3, width), "pooled": (3, width), "embedding": (3, dim)}
    with torch.no_grad():
        tokens, _ = gs.visual.stem(s)
        assert torch.allclose(feats["stem"], tokens.mean(1), atol=1e-6)
        assert torch.allclose(feats["resampler"], gs.visual.resampler(tokens).mean(1), atol=1e-5)
        assert torch.allclose(feats["pooled"] @ gs.visual.proj, feats["embedding"], atol=1e-5)
        assert torch.allclose(feats["embedding"], gs.encode_image(s), atol=1e-6)
    # padding Gaussians (masked out by the counts) change no pooled feature
    padded, _ = layer_features(gs, "gs", _padded(s, 5))
    for name in feats:
        assert torch.allclose(feats[name], padded[name], atol=1e-5), name
    # ...while the same Gaussians counted as valid do change the stem's mean
    valid = _padded(s, 5)
    valid.counts = None
    assert not torch.allclose(layer_features(gs, "gs", valid)[0]["stem"], feats["stem"], atol=1e-3)


def test_rgb_layer_shapes_and_pooled_is_before_the_projection(towers):
    from gaussianvision.eval.probe import layer_features
    _, rgb = towers
    images = torch.rand(2, 3, 64, 64)
    feats, skipped = layer_features(rgb, "rgb", images)
    assert skipped == {} and list(feats) == ["patches", "pooled", "embedding"]
    v = rgb.visual
    assert feats["patches"].shape == (2, v.conv1.out_channels) and feats["pooled"].shape == (2, v.proj.shape[0])
    with torch.no_grad():
        assert torch.allclose(feats["patches"], v.conv1(images).mean((2, 3)), atol=1e-6)
        assert torch.allclose(feats["pooled"] @ v.proj, rgb.encode_image(images), atol=1e-5)


def test_missing_or_unused_modules_are_skipped_with_a_reason():
    from gaussianvision.eval.probe import layer_features

    class Bare(torch.nn.Module):  # an image tower with none of the hooked modules but a stem that is never called
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.stem = torch.nn.Linear(3, 3)

        def encode_image(self, x):
            return x.colors.mean(1)

    feats, skipped = layer_features(Bare(), "gs", random_splats(2, 4, 8, 8))
    assert list(feats) == ["embedding"] and feats["embedding"].shape == (2, 3)
    assert skipped["stem"] == "visual.stem did not run in encode_image"
    assert skipped["resampler"] == "Bare has no module visual.resampler"


# ---------------------------------------------------------------- the command, end to end

def _write_task(root: Path, classes: list[str], images: list[tuple[np.ndarray, int]]) -> None:
    from gaussianvision.data.shards import ShardWriter
    (root / "test").mkdir(parents=True)
    with ShardWriter(root / "test" / "0.tar") as w:
        for i, (arr, label) in enumerate(images):
            w.write(f"s{i:04d}", {"png": png_bytes(arr), "cls": str(label).encode()})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of {c}.\n")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two attributes of 16x16 images, 24 each: colour (solid colours with noise) and side (a
    grey square on the left or right half)."""
    root = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    names = list(COLORS)
    colour = []
    for i in range(24):
        arr = np.clip(np.array(COLORS[names[i % 4]]) + rng.integers(-12, 13, (16, 16, 3)), 0, 255).astype(np.uint8)
        colour.append((arr, i % 4))
    side = []
    for i in range(24):
        arr = np.full((16, 16, 3), 30, np.uint8)
        x0 = 1 + (i % 2) * 8 + int(rng.integers(0, 2))
        arr[4:11, x0:x0 + 6] = 220
        side.append((arr, i % 2))
    _write_task(root / "colour", names, colour)
    _write_task(root / "side", ["left", "right"], side)
    (root / "notes").mkdir()  # not a task folder: ignored
    return root


def test_cli_probe_end_to_end_writes_the_table(tasks, tmp_path, capsys):
    pytest.importorskip("open_clip")
    pytest.importorskip("clip_benchmark")
    from gaussianvision.apps.cli.main import main as gsv
    from gaussianvision.models import create_gsclip, save_weights
    ckpt = save_weights(create_gsclip(config="gs-tiny"), tmp_path / "gsclip.safetensors")
    out = tmp_path / "probe"
    rc = gsv(["probe", "--model", f"gs:{ckpt}", "--model", "rgb:gsv-tiny", "--tasks", str(tasks), "--out", str(out),
              "--n-gaussians", "6", "--fit-iters", "2", "--fit-size", "16", "--batch-size", "8", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert res["columns"] == ["gs:gsclip.safetensors stem", "gs:gsclip.safetensors resampler",
                              "gs:gsclip.safetensors pooled", "gs:gsclip.safetensors embedding",
                              "rgb:gsv-tiny:random patches", "rgb:gsv-tiny:random pooled",
                              "rgb:gsv-tiny:random embedding"]
    rows = {r["attribute"]: r for r in res["rows"]}
    assert set(rows) == {"colour", "side"}
    assert (rows["colour"]["n_train"], rows["colour"]["n_test"], rows["colour"]["classes"]) == (12, 12, 4)
    assert rows["colour"]["chance"] == pytest.approx(0.25) and rows["side"]["chance"] == pytest.approx(0.5)
    # the mean patch embedding is a linear function of the mean colour: solid colours separate exactly
    assert rows["colour"]["layers"]["rgb:gsv-tiny:random patches"]["acc"] == 1.0
    assert len(res["diagnosis"]) == 2 and res["diagnosis"][0].startswith("colour: gs:gsclip.safetensors: stem ")
    md = (out / "probe.md").read_text()
    assert "| attribute | classes | train / test | chance | gs:gsclip.safetensors stem |" in md
    assert "| colour | 4 | 12 / 12 | 25.0% |" in md and "| mean |" in md and "gsv probe --model" in md
    doc = json.loads((out / "probe.json").read_text())
    assert doc["columns"] == res["columns"] and doc["table"] in md and doc["settings"]["test_fraction"] == 0.5
    assert any((out / "splat_cache").rglob("*.gsv"))  # the GS side read splats fitted on the fly


@pytest.mark.parametrize("argv, message", [
    (["--model", "gs:/no/such/run", "--tasks", "{tasks}"], "gs:/no/such/run: neither a checkpoint file"),
    (["--model", "rgb:gsv-tiny", "--dataset", "bogus", "--dataset-root", "{tmp}/{{dataset}}"], "bogus:"),
    (["--model", "rgb:gsv-tiny", "--tasks", "{tmp}/nothing"], "not a folder"),
    (["--model", "rgb:gsv-tiny"], "give --tasks FOLDER or --dataset NAME"),
    # regression (new-user trial): two datasets read one folder, the second reported under its own name
    (["--model", "rgb:gsv-tiny", "--dataset", "wds/a", "--dataset", "wds/b", "--dataset-root", "{tmp}"],
     "wds/a and wds/b would both read"),
    (["--model", "nonsense", "--tasks", "{tasks}"], "expected rgb:BASE"),
    (["--model", "rgb:gsv-tiny", "--tasks", "{tasks}", "--test-fraction", "1.5"], "--test-fraction 1.5"),
    (["--model", "rgb:gsv-tiny", "--tasks", "{tasks}", "--l2", "nan"], "--l2 nan: must be a finite number >= 0"),
    (["--model", "rgb:gsv-tiny", "--tasks", "{tasks}", "--l2", "inf"], "--l2 inf: must be a finite"),
    (["--model", "rgb:gsv-tiny", "--tasks", "{tasks}", "--device", "tpu"], "--device tpu: expected cpu, cuda or cuda:N"),
])
def test_cli_probe_bad_input_is_one_line_and_exit_2(tasks, tmp_path, capsys, argv, message):
    pytest.importorskip("open_clip")
    from gaussianvision.apps.cli.main import main as gsv
    argv = [a.format(tasks=tasks, tmp=tmp_path) for a in argv]
    assert gsv(["probe", *argv, "--out", str(tmp_path / "o")]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsv probe: ") and message in lines[0], cap.err
    assert "Traceback" not in cap.err and not (tmp_path / "o").exists()
    assert gsv(["probe", *argv, "--out", str(tmp_path / "o"), "--json"]) == 2
    assert message in json.loads(capsys.readouterr().out)["error"]


def test_the_reading_of_a_split_without_held_out_images_says_so():
    """Regression: with no held-out image the accuracies are NaN, read as 'No significant drop'."""
    from gaussianvision.eval.probe_table import diagnose
    nan = {"acc": float("nan"), "stderr": float("nan"), "n_test": 0}
    row = {"attribute": "colour", "n_train": 1, "n_test": 0, "layers": {"gs:m stem": nan, "gs:m embedding": nan}}
    assert diagnose({"models": {"gs:m": "gs"}, "rows": [row]}) == [
        "colour: nothing to read: 1 training and 0 held-out images (too few per class; give more images, or more "
        "of them with --max-images)"]


@pytest.mark.parametrize("n_test, says", [
    (1, "Too few held-out images (1) to tell a drop (only one over 200 points would count)"),
    (4, "Too few held-out images (4) to tell a drop (only one over 50 points would count)"),
    (40, "No significant drop inside the tower"),
])
def test_the_reading_says_when_too_few_held_out_images_can_tell_no_drop(n_test, says):
    """Regression (new-user trial): with one held-out image every layer read 100% or 0%, and the line said
    'No significant drop inside the tower', which no drop could have been with that one image."""
    from gaussianvision.eval.probe_table import diagnose
    acc = lambda a: {"acc": a, "stderr": 0.0, "n_test": n_test}  # noqa: E731
    row = {"attribute": "shape", "n_train": 2, "n_test": n_test,
           "layers": {"gs:m stem": acc(1.0), "gs:m resampler": acc(1.0), "gs:m pooled": acc(0.99)}}
    (line,) = diagnose({"models": {"gs:m": "gs"}, "rows": [row]})
    assert line.startswith("shape: gs:m: stem 100.0% -> resampler 100.0% -> pooled 99.0%. " + says), line


def test_cli_probe_exits_2_when_nothing_could_be_probed(tasks, tmp_path, capsys):
    """Regression (trial 7): with too few images for any held-out split the table was all '-' and the exit 0."""
    pytest.importorskip("open_clip")
    from gaussianvision.apps.cli.main import main as gsv
    rc = gsv(["probe", "--model", "rgb:gsv-tiny", "--tasks", str(tasks), "--max-images", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "gsv probe: nothing was probed" in err, err


def test_cli_probe_goes_on_past_a_corrupt_image(tasks, tmp_path, capsys):
    """Regression: one corrupt image ended the probe (the batch-job rule: record the bad sample and go on).
    The other 23 images of the attribute are probed, the bad one named in probe.json and in one note."""
    pytest.importorskip("open_clip")
    import shutil
    from test_eval import _rewrite_member
    from gaussianvision.apps.cli.main import main as gsv
    root = tmp_path / "tasks"
    shutil.copytree(tasks / "colour", root / "colour")
    shard = root / "colour" / "test" / "0.tar"
    _rewrite_member(shard, ".png", b"not a png")
    out = tmp_path / "probe"
    rc = gsv(["probe", "--model", "rgb:gsv-tiny", "--tasks", str(root), "--out", str(out), "--batch-size", "8",
              "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    (row,) = json.loads(cap.out)["rows"]
    assert row["n_images"] == 23 and row["n_train"] + row["n_test"] == 23
    (bad,) = row["unreadable"]
    assert bad.startswith(f"{shard}, sample ") and "UnidentifiedImageError" in bad, bad
    assert json.loads((out / "probe.json").read_text())["rows"][0]["unreadable"] == [bad]
    assert f"gsv probe: note: colour: 1 unreadable sample(s) met and left out (probe.json names them); first: {bad}" in cap.err
