"""Zero-shot evaluation: known-answer classification and retrieval through clip_benchmark's code,
for a pixel model and for a splat model (images fitted on the fly, cached), reports and the CLI."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train_fixtures import COLORS, png_bytes  # tests/ is on sys.path (pytest rootdir conftest)

pytest.importorskip("clip_benchmark")
pytest.importorskip("webdataset")

NAMES = list(COLORS)
RGB = torch.tensor([COLORS[n] for n in NAMES], dtype=torch.float32) / 255


def write_wds_classification(root: Path, n: int = 16, size: int = 24) -> None:
    """Solid-colour images; the first half labelled with their colour, the second half with the
    next colour's label: a model that sees colours perfectly scores exactly 50 %."""
    from gaussianvision.data.shards import ShardWriter
    (root / "test").mkdir(parents=True)
    with ShardWriter(root / "test" / "0.tar") as w:
        for i in range(n):
            c = i % len(NAMES)
            label = c if i < n // 2 else (c + 1) % len(NAMES)
            arr = np.empty((size, size, 3), np.uint8)
            arr[:] = COLORS[NAMES[c]]
            w.write(f"s{i:04d}", {"png": png_bytes(arr), "cls": str(label).encode()})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c} thing.\na {c} object.\n")


def write_wds_retrieval(root: Path, n: int = 12, size: int = 16) -> None:
    """Grey level i <-> caption "item i"; captions of images 0..5 are swapped in pairs (0<->1, ...),
    so exactly half of the recall@1 hits are correct in both directions."""
    from gaussianvision.data.shards import ShardWriter
    (root / "test").mkdir(parents=True)
    with ShardWriter(root / "test" / "0.tar") as w:
        for i in range(n):
            arr = np.full((size, size, 3), 10 + 20 * i, np.uint8)
            j = (i ^ 1) if i < n // 2 else i
            w.write(f"r{i:04d}", {"png": png_bytes(arr), "txt": f"item {j}".encode()})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("retrieval\n")


class StubTokenizer:
    """Text -> the index of the colour (or of "item k") it names."""

    def __call__(self, texts):
        ids = []
        for t in ([texts] if isinstance(texts, str) else texts):
            if "item" in t:
                ids.append(100 + int(t.split("item")[1].split()[0]))
            else:
                ids.append(next(k for k, name in enumerate(NAMES) if name in t))
        return torch.tensor(ids)


class StubModel(torch.nn.Module):
    """One-hot embeddings: image -> its colour class (or grey level), text -> the class it names."""
    D = 16

    def __init__(self, kind, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)):
        super().__init__()
        self.kind = kind
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def _onehot(self, idx):
        return torch.nn.functional.one_hot(idx, self.D).float()

    def encode_image(self, x, normalize=False):
        if self.kind == "gs":
            assert type(x).__name__ == "Splats", type(x)
            m = x.mask().float()[..., None]
            rgb = (x.colors * m).sum(1) / m.sum(1)  # the Gaussians' mean colour
        else:
            rgb = (x * self.std + self.mean).mean((2, 3))
        grey = rgb.std(-1) < 0.02
        cls = torch.cdist(rgb, RGB).argmin(-1)
        level = 4 + ((rgb.mean(-1) * 255 - 10) / 20).round().long()  # grey i -> slot 4 + i
        return self._onehot(torch.where(grey, level, cls))

    def encode_text(self, tokens, normalize=False):
        return self._onehot(torch.where(tokens >= 100, tokens - 100 + 4, tokens))


def stub(kind):
    from gaussianvision.eval.models import EvalModel
    return EvalModel(kind, StubModel(kind).eval(), StubTokenizer(), f"stub-{kind}", "none", image_size=16,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    write_wds_classification(root / "colors")
    write_wds_retrieval(root / "greys")
    return root


def test_known_answer_classification_rgb_and_gs(wds, tmp_path):
    from gaussianvision.eval.datasets import SplatSettings
    from gaussianvision.eval.run import evaluate_all
    settings = SplatSettings(n_gaussians=4, iters=3, init="grid", size=12)
    res = evaluate_all([stub("rgb"), stub("gs")], ["wds/colors"], str(tmp_path / "out"),
                       root=str(wds / "{dataset}"), batch_size=5, splats=settings, progress=False)
    assert not res["errors"], res["errors"]
    recs = {r["label"]: r for r in res["records"]}
    for label, r in recs.items():
        assert r["metrics"]["acc1"] == pytest.approx(0.5), label
        assert r["metrics"]["mean_per_class_recall"] == pytest.approx(0.5), label
        assert r["metrics"]["acc5"] is None  # clip_benchmark: top-5 undefined for < 5 classes
        saved = json.loads(Path(r["file"]).read_text())
        assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(saved)
        assert saved["task"] == "zeroshot_classification" and saved["dataset"] == "wds/colors"
    gs = recs["gs:stub-gs:none"]
    assert gs["gsv"]["fitted"] == 4 and gs["gsv"]["cached"] == 12  # 4 distinct images, each fitted once
    # the table: both models side by side and the GS / RGB ratio
    rows = list(csv.reader(io.StringIO(Path(res["csv"]).read_text())))
    assert rows[0] == ["dataset", "metric", "rgb:stub-rgb:none", "gs:stub-gs:none", "gs:stub-gs:none / rgb:stub-rgb:none"]
    assert rows[1][:2] == ["wds/colors", "acc1"] and float(rows[1][4]) == pytest.approx(1.0)
    assert "| wds/colors | acc1 | 0.5000 | 0.5000 | 1.0000 |" in Path(res["markdown"]).read_text()

    # second run: every splat comes from the cache, same numbers
    res2 = evaluate_all([stub("gs")], ["wds/colors"], str(tmp_path / "out"), root=str(wds / "{dataset}"),
                        batch_size=7, splats=settings, progress=False)
    r2 = res2["records"][0]
    assert r2["gsv"]["cached"] == 16 and r2["gsv"]["fitted"] == 0
    assert r2["metrics"] == gs["metrics"]


def test_a_pair_that_fails_on_a_rerun_leaves_no_stale_result_file(wds, tmp_path):
    """Regression (new-user trial): a rerun into the same --out where a (model, dataset) failed kept the earlier
    run's result file, whose metrics then read as this run's. Now that file holds this run's error."""
    import shutil
    from gaussianvision.eval.run import evaluate_all
    root = tmp_path / "data"
    shutil.copytree(wds / "colors", root / "colors")
    first = evaluate_all([stub("rgb")], ["wds/colors"], str(tmp_path / "out"), root=str(root / "{dataset}"),
                         batch_size=5, progress=False)
    path = Path(first["records"][0]["file"])
    assert json.loads(path.read_text())["metrics"]["acc1"] == pytest.approx(0.5)
    shutil.rmtree(root / "colors")
    again = evaluate_all([stub("rgb")], ["wds/colors"], str(tmp_path / "out"), root=str(root / "{dataset}"),
                         batch_size=5, progress=False)
    (err,) = again["errors"]
    saved = json.loads(path.read_text())
    assert saved["error"] == err and saved["metrics"] == {} and saved["label"] == "rgb:stub-rgb:none"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == [path.name]


def test_a_fit_that_fails_ends_its_pair_only(wds, tmp_path, monkeypatch):
    """Review finding: a failed fit (--fit-init learned without its weights) raised out of evaluate_all, so the
    other pairs, the error records and the tables were lost. Now that pair's error, the rest as before."""
    from gaussianvision.eval.datasets import SplatSettings
    from gaussianvision.eval.run import evaluate_all
    from gaussianvision.fit import init as init_module

    def broken(*args, **kwargs):
        raise FileNotFoundError("learned initializer: no weights at /nowhere")
    monkeypatch.setitem(init_module.INITIALIZERS, "grid", broken)
    res = evaluate_all([stub("rgb"), stub("gs")], ["wds/colors"], str(tmp_path / "out"), root=str(wds / "{dataset}"),
                       batch_size=5, splats=SplatSettings(n_gaussians=4, iters=3, init="grid", size=12), progress=False)
    (err,) = res["errors"]
    assert err == ("wds/colors (gs:stub-gs:none): fitting the splats of an image failed (FileNotFoundError: "
                   "learned initializer: no weights at /nowhere)"), err
    rgb = next(r for r in res["records"] if r["label"] == "rgb:stub-rgb:none")
    assert rgb["metrics"]["acc1"] == pytest.approx(0.5) and Path(res["markdown"]).is_file()


def test_known_answer_label_noise_is_measured():
    """Sanity of the stub itself: with the labels of every image correct it scores 100 %."""
    from clip_benchmark.metrics.zeroshot_classification import accuracy
    m = StubModel("rgb")
    x = ((RGB.view(4, 3, 1, 1).expand(4, 3, 8, 8)) - 0.5) / 0.25
    logits = m.encode_image(x) @ m.encode_text(torch.arange(4)).T
    assert accuracy(logits, torch.arange(4), topk=(1,)) == [1.0]


def test_known_answer_retrieval(wds, tmp_path):
    from gaussianvision.eval.run import evaluate_all
    res = evaluate_all([stub("rgb")], ["wds/greys"], str(tmp_path), root=str(wds / "{dataset}"), batch_size=5,
                       progress=False)
    assert not res["errors"], res["errors"]
    m = res["records"][0]["metrics"]
    assert res["records"][0]["task"] == "zeroshot_retrieval"
    assert m["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert m["text_retrieval_recall@1"] == pytest.approx(0.5)
    assert m["mean_recall@1"] == pytest.approx(0.5)
    assert m["image_retrieval_recall@1"] <= m["image_retrieval_recall@5"] <= m["image_retrieval_recall@10"]
    assert res["rows"][0][1] == "mean_recall@1"


def test_missing_and_offline_datasets_fail_clearly(tmp_path, monkeypatch):
    from gaussianvision.eval import run as run_mod
    from gaussianvision.eval.models import EvalError
    from gaussianvision.eval.suites import DATACOMP38, suite_datasets, suite_root
    assert len(suite_datasets("datacomp38")) == 38 == len(DATACOMP38)
    assert suite_root("wds/vtab/dtd") == "https://huggingface.co/datasets/djghosh/wds_vtab-dtd_test/tree/main"
    with pytest.raises(EvalError, match="nshards.txt"):
        run_mod.evaluate_one(stub("rgb"), "wds/nothing", str(tmp_path / "nothing"))

    def unreachable(address, timeout=None):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    res = run_mod.evaluate_all([stub("rgb")], ["wds/cifar10"], str(tmp_path / "o"), progress=False)
    assert len(res["errors"]) == 1 and "huggingface.co is not reachable" in res["errors"][0]
    assert res["rows"][0][2] is None


def test_report_ratio_and_mean():
    from gaussianvision.eval.report import comparison_table
    recs = [{"dataset": d, "label": l, "metrics": {"acc1": v}} for d, l, v in
            [("a", "R", 0.8), ("a", "G", 0.6), ("b", "R", 0.4), ("b", "G", 0.4)]]
    header, rows = comparison_table(recs, ["R", "G"], {"R": "rgb", "G": "gs"})
    assert header == ["dataset", "metric", "R", "G", "G / R"]
    assert rows[0] == ["a", "acc1", 0.8, 0.6, pytest.approx(0.75)]
    assert rows[2][0].startswith("mean (2") and rows[2][4] == pytest.approx(0.5 / 0.6)


def test_cli_eval_rgb_and_gs_models(wds, tmp_path, capsys, monkeypatch):
    pytest.importorskip("open_clip")
    from gaussianvision.apps.cli.eval import main
    from gaussianvision.models import create_gsclip, save_weights
    ckpt = save_weights(create_gsclip(config="gs-tiny"), tmp_path / "gsclip.safetensors")
    out = tmp_path / "ev"
    rc = main(["zeroshot", "--model", "rgb:gsv-tiny", "--model", f"gs:{ckpt}", "--dataset", "wds/colors",
               "--dataset-root", str(wds / "{dataset}"), "--out", str(out), "--batch-size", "8",
               "--n-gaussians", "6", "--fit-iters", "2", "--fit-size", "16", "--json"])
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert rc == 0, res["errors"]
    assert "it/s" not in cap.err and "0it" not in cap.err  # regression (trial 7): clip_benchmark's bars under --json
    assert res["models"] == ["rgb:gsv-tiny:random", "gs:gsclip.safetensors"]
    assert len(res["results"]) == 2 and all(r["task"] == "zeroshot_classification" for r in res["results"])
    for r in res["results"]:
        assert 0.0 <= r["metrics"]["acc1"] <= 1.0 and Path(r["file"]).is_file()
    assert res["table"]["header"][-1] == "gs:gsclip.safetensors / rgb:gsv-tiny:random"
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert any((out / "splat_cache").rglob("*.gsv"))

    # the suite offline: one clear line per dataset, exit code 2, fast
    from gaussianvision.eval import run as run_mod

    def unreachable(address, timeout=None):
        raise OSError("Network is unreachable")
    monkeypatch.setattr(socket, "create_connection", unreachable)
    rc = main(["zeroshot", "--model", "rgb:gsv-tiny", "--suite", "datacomp38", "--out", str(tmp_path / "suite")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("huggingface.co is not reachable") == 37 and "WinoGAViL" in err

    assert main(["zeroshot", "--model", "bogus", "--dataset", "cifar10"]) == 2
    assert "expected rgb:BASE" in capsys.readouterr().err


def test_splat_settings_fit_options_reach_the_fitter(capsys):
    """Evaluation must fit task images as the conversion did: extra fit options go to fit_images,
    change the cache key (an empty dict keeps the key of settings made before the field), and
    unknown ones are refused up front."""
    from gaussianvision.eval.datasets import SplatCache, SplatSettings
    from gaussianvision.fit import fit_images
    from gaussianvision.splats import decode, encode
    plain = SplatSettings(n_gaussians=6, iters=12, init="grid", size=16)
    opts = SplatSettings(n_gaussians=6, iters=12, init="grid", size=16,
                         fit_options={"relocate_every": 3, "relocate_fraction": 0.5})
    assert json.loads(plain.key()) == {"n_gaussians": 6, "iters": 12, "init": "grid", "size": 16}
    assert plain.key() != opts.key()
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 16, 16, generator=g).mul(255).round().div(255)
    got = SplatCache(None, opts)(imgs)
    want = fit_images(imgs, 6, iters=12, init="grid", relocate_every=3, relocate_fraction=0.5)
    assert torch.equal(got.means, decode(encode(want.splats)).means)
    assert not torch.equal(got.means, SplatCache(None, plain)(imgs).means)
    with pytest.raises(ValueError, match=r"\['lr_mean'\]: not fit_images options \(lr_mean: did you mean lr_means\?\)"):
        SplatSettings(fit_options={"lr_mean": 1.0})
    with pytest.raises(ValueError, match=r"\['zzz'\]: not fit_images options; the options: backend"):  # nothing near
        SplatSettings(fit_options={"zzz": 1.0})
    with pytest.raises(ValueError, match="relocate_every must be >= 0"):
        SplatSettings(fit_options={"relocate_every": -1})
    from gaussianvision.apps.cli.eval import main
    assert main(["zeroshot", "--model", "rgb:gsv-tiny", "--dataset", "cifar10", "--fit-option", "iters=3"]) == 2
    assert "--fit-option iters=...: give it as --fit-iters" in capsys.readouterr().err


def test_splat_cache_files_are_the_bytes_of_fit_images_in_fit_batch_chunks(tmp_path, monkeypatch):
    """SplatCache fits its misses through FitStream in chunks of fit_batch (a repeated image once):
    each cache file is the encoding of fit_images on that chunk; a failed fit is the pair's EvalError, its cause named."""
    from gaussianvision.eval.datasets import SplatCache, SplatSettings
    from gaussianvision.fit import fit_images
    from gaussianvision.splats import encode
    settings = SplatSettings(n_gaussians=5, iters=3, init="grid", size=12, fit_batch=2,
                             fit_options={"backend": "reference"})
    imgs = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(2)).mul(255).round().div(255)
    imgs[2] = imgs[0]
    cache = SplatCache(tmp_path / "c", settings)
    got = cache(imgs)
    assert (cache.fits, cache.hits) == (3, 1) and got.batch_size == 4
    want = []
    for chunk in ([0, 1], [3]):
        res = fit_images(imgs[chunk], 5, iters=3, init="grid", backend="reference")
        want += [encode(res.splats[j]) for j in range(len(chunk))]
    files = {p.read_bytes() for p in (tmp_path / "c").rglob("*.gsv")}
    assert files == set(want) and len(files) == 3

    import gaussianvision.fit.stream as stream_mod

    def boom(*a, **k):
        raise RuntimeError("out of memory")
    monkeypatch.setattr(stream_mod, "fit_images", boom)
    from gaussianvision.eval.models import EvalError
    with pytest.raises(EvalError, match=r"fitting the splats of an image failed \(RuntimeError: out of memory\)"):
        SplatCache(None, settings)(imgs)  # the pair's error: the evaluation goes on with the others


def test_cli_eval_offline_hub_model_is_one_line_without_retries(tmp_path, capsys, monkeypatch):
    """Issue 18: offline, rgb:ViT-B-16:openai fails at once with one clear line (no hub retries)."""
    import huggingface_hub
    import open_clip.pretrained
    from gaussianvision.apps.cli.eval import main
    from gaussianvision.models import gsclip
    downloads = []
    monkeypatch.setattr(gsclip, "unreachable", lambda url, **k: ("huggingface.co", "offline"))
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", lambda *a, **k: downloads.append(a))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rc = main(["zeroshot", "--model", "rgb:ViT-B-16:openai", "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and downloads == [] and "\n" not in err
    assert err.startswith("gsv eval: --model rgb:ViT-B-16:openai: pretrained 'openai'")
    assert "not reachable" in err and "local checkpoint file" in err


def _failing_download(monkeypatch):
    """clip_benchmark's builder as offline: it makes the root folder, then the download fails."""
    import urllib.error

    import clip_benchmark.datasets.builder as cb

    def build(dataset_name, root, **k):
        Path(root).mkdir(parents=True, exist_ok=True)
        raise urllib.error.URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(cb, "build_dataset", build)


def test_failed_dataset_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    """Issue 18: a failed download left an empty data/eval/cifar10/ behind."""
    from gaussianvision.eval.datasets import build_dataset
    from gaussianvision.eval.models import EvalError
    _failing_download(monkeypatch)
    with pytest.raises(EvalError, match="cannot get the data"):
        build_dataset("cifar10", str(tmp_path / "data" / "eval" / "cifar10"), None, "zeroshot_classification")
    assert list(tmp_path.iterdir()) == []


def test_failed_dataset_download_keeps_folders_that_were_there(tmp_path, monkeypatch):
    from gaussianvision.eval.datasets import build_dataset
    from gaussianvision.eval.models import EvalError
    _failing_download(monkeypatch)
    (tmp_path / "data").mkdir()
    kept = tmp_path / "data" / "eval" / "mnist"
    kept.mkdir(parents=True)
    (kept / "part.bin").write_bytes(b"x")
    with pytest.raises(EvalError):
        build_dataset("mnist", str(kept), None, "zeroshot_classification")
    with pytest.raises(EvalError):
        build_dataset("cifar10", str(tmp_path / "data" / "eval" / "cifar10"), None, "zeroshot_classification")
    assert sorted(p.name for p in (tmp_path / "data" / "eval").iterdir()) == ["mnist"]
    assert (kept / "part.bin").is_file()


def test_cli_eval_offline_dataset_leaves_no_data_folder(tmp_path, capsys, monkeypatch):
    from gaussianvision.apps.cli.eval import main
    _failing_download(monkeypatch)
    monkeypatch.chdir(tmp_path)
    rc = main(["zeroshot", "--model", "rgb:gsv-tiny", "--dataset", "cifar10", "--out", "o", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 2 and "cifar10: cannot get the data" in cap.err
    assert not (tmp_path / "data").exists()
    # regression (trial 7): "results in o (results.md, results.csv)" was announced beside only failures
    assert "results in" not in cap.out and "no result: every evaluation failed" in cap.out


@pytest.mark.parametrize("flags, message", [
    (["--fit-iters", "-3"], "--fit-iters: must be a whole number >= 0, got -3"),
    (["--n-gaussians", "0"], "--n-gaussians: must be a whole number >= 1, got 0"),
    (["--fit-size", "3"], "--fit-size: must be from 11"),
    (["--fit-size", "-1"], "--fit-size: must be from 11"),
    (["--fit-batch", "0"], "--fit-batch: must be a whole number >= 1, got 0"),
    (["--fit-budget-ms", "-1"], "--fit-budget-ms must be a finite number above 0"),
    (["--fit-target-psnr", "0"], "--fit-target-psnr must be a number of dB above 0"),
])
def test_cli_eval_bad_splat_settings_are_one_line_naming_the_flag(flags, message, capsys):
    """Regression: these values failed in the first fit with a traceback (exit 1)."""
    from gaussianvision.apps.cli.eval import main
    assert main(["zeroshot", "--model", "rgb:gsv-tiny", "--dataset", "wds/none", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_splat_settings_refuse_values_that_cannot_fit():
    from gaussianvision.eval.datasets import SplatSettings
    for kw, name in (({"n_gaussians": 2.5}, "n_gaussians"), ({"iters": -1}, "iters"), ({"size": 8}, "size"),
                     ({"size": 9000}, "size"), ({"fit_batch": 0}, "fit_batch"), ({"fit_options": []}, "fit_options")):
        with pytest.raises(ValueError, match=rf"^{name} must"):
            SplatSettings(**kw)
    assert SplatSettings(n_gaussians=121, size=11, iters=0).size == 11  # at most one Gaussian per pixel


def _rewrite_member(tar_path: Path, suffix: str, data: bytes) -> None:
    """The first member ending in `suffix` gets `data` (a corrupt image)."""
    import tarfile
    with tarfile.open(tar_path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    done = False
    with tarfile.open(tar_path, "w") as t:
        for m, body in members:
            if not done and m.name.endswith(suffix):
                body, done = data, True
            m.size = len(body)
            t.addfile(m, io.BytesIO(body))


def _eval_colors(root, out):
    from gaussianvision.eval.datasets import SplatSettings
    from gaussianvision.eval.run import evaluate_all
    return [evaluate_all([stub(kind)], ["wds/colors"], str(out / kind), root=str(root), batch_size=5,
                         splats=SplatSettings(n_gaussians=4, iters=1, init="grid", size=12), progress=False)
            for kind in ("rgb", "gs")]


def test_a_corrupt_image_is_recorded_and_the_rest_evaluated(tmp_path):
    """Regression: one corrupt image ended the whole dataset (the batch-job rule: record the bad sample and go
    on). It is left out and named in the result; the metrics are those of the other 15 samples: of the 8
    correctly labelled (the first half), s0000 is gone, so 7 of 15 are right, for RGB and GS alike."""
    root = tmp_path / "colors"
    write_wds_classification(root)
    shard = root / "test" / "0.tar"
    _rewrite_member(shard, ".png", b"garbage\n")
    for res in _eval_colors(root, tmp_path):
        assert not res["errors"], res["errors"]
        (rec,) = res["records"]
        assert rec["metrics"]["acc1"] == pytest.approx(7 / 15)
        bad = rec["unreadable"]
        assert bad["count"] == 1 and bad["read"] == 15, bad
        (first,) = bad["first"]
        assert first == f"{shard}, sample s0000: UnidentifiedImageError: cannot identify image file", first
        assert json.loads(Path(rec["file"]).read_text())["unreadable"] == bad


def test_a_damaged_shard_keeps_its_samples_before_the_damage_and_the_next_shard(tmp_path):
    """A shard cut short: the samples before the cut are read, the cut recorded, the next shard read in full;
    an empty or missing shard is one record too."""
    root = tmp_path / "colors"
    write_wds_classification(root)
    good = (root / "test" / "0.tar").read_bytes()
    (root / "test" / "1.tar").write_bytes(good[:len(good) // 2 + 100])  # 8 samples and a part
    (root / "test" / "2.tar").write_bytes(b"")
    (root / "test" / "nshards.txt").write_text("4\n")  # 3.tar is missing
    for res in _eval_colors(root, tmp_path):
        assert not res["errors"], res["errors"]
        bad = res["records"][0]["unreadable"]
        cut, empty, missing = bad["first"]
        kept = int(re.search(r"read up to the damage: (\d+) sample", cut).group(1))
        assert bad["count"] == 3 and 0 < kept < 16 and bad["read"] == 16 + kept, bad
        assert cut.startswith(f"{root}/test/1.tar: tar ") and "truncated" in cut, cut
        assert empty.startswith(f"{root}/test/2.tar: tar ") and "at byte 0" in empty, empty
        assert missing == f"{root}/test/3.tar: FileNotFoundError: No such file or directory", missing


def test_a_dataset_with_no_readable_sample_is_one_error_naming_the_file(tmp_path):
    """Nothing readable: the dataset ends with one EvalError naming the shard, recorded like any failed dataset
    (regression: a webdataset / tarfile traceback)."""
    root = tmp_path / "colors"
    write_wds_classification(root)
    shard = root / "test" / "0.tar"
    shard.write_bytes(b"")
    for res in _eval_colors(root, tmp_path):
        (err,) = res["errors"]
        assert err.startswith(f"wds/colors: no readable sample: unreadable 1 shard (first: {shard}: tar "), err
        assert "at byte 0" in err and "\n" not in err, err


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise OSError("cannot identify image file 'x.png'")
        return torch.zeros(3), i


@pytest.mark.parametrize("workers", [0, 1])
def test_map_style_datasets_skip_unreadable_samples_also_from_workers(workers):
    """clip_benchmark's own datasets (not wds): a sample that fails to read is recorded and left out, also when
    read by a DataLoader worker (the record travels in the batch); its class names stay reachable."""
    from gaussianvision.eval.datasets import build_loader
    ds = _Unreadable()
    ds.classes = ["a", "b"]
    guard = build_loader("cifar10", ds, batch_size=2, num_workers=workers)
    batches = list(guard)
    assert [b[1].tolist() for b in batches] == [[0, 1], [3]]
    assert [str(u) for u in guard.skipped] == ["sample 2: OSError: cannot identify image file 'x.png'"]
    assert guard.read == 3 and guard.dataset.classes == ["a", "b"]


def test_read_errors_from_loader_workers_are_one_line_with_the_cause():
    """Regression (review): with --num-workers, torch re-raises the worker's error with its whole traceback as
    the message; the error was six lines and the cause was cut off. (A read error outside any sample.)"""
    from torch.utils.data import default_collate
    from gaussianvision.eval.datasets import ReadGuard
    from gaussianvision.eval.models import EvalError
    from gaussianvision.eval.unreadable import Skipping
    for workers in (0, 1):
        guard = ReadGuard(torch.utils.data.DataLoader(_Unreadable(), batch_size=1, num_workers=workers,
                                                      collate_fn=Skipping(default_collate)), "wds/x")
        with pytest.raises(EvalError) as e:
            list(guard)
        msg = str(e.value)
        assert "\n" not in msg and "cannot identify image file 'x.png'" in msg and msg.startswith("wds/x: cannot read"), msg


def test_cli_eval_says_what_it_left_out(tmp_path, capsys):
    """gsv eval past a corrupt image: exit 0, its result, and one note naming the sample on stderr."""
    pytest.importorskip("open_clip")
    from gaussianvision.apps.cli.eval import main
    root = tmp_path / "colors"
    write_wds_classification(root)
    _rewrite_member(root / "test" / "0.tar", ".png", b"garbage\n")
    rc = main(["zeroshot", "--model", "rgb:gsv-tiny", "--dataset", "wds/colors", "--dataset-root", str(root),
               "--out", str(tmp_path / "ev"), "--batch-size", "8", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    (note,) = [line for line in cap.err.splitlines() if line.startswith("gsv eval: note:")]
    assert note.startswith("gsv eval: note: wds/colors (rgb:gsv-tiny:random): unreadable, left out: 1 sample; "
                           "the metrics are over the 15 samples read; first: ") and "sample s0000: UnidentifiedImageError" in note
    # the table people quote says it too (regression: results.md / .csv showed the metric as over every sample)
    md = (tmp_path / "ev" / "results.md").read_text()
    assert md.splitlines()[0].endswith("| left out |") and md.splitlines()[2].endswith("| 1 sample |"), md
    with open(tmp_path / "ev" / "results.csv") as f:
        assert next(csv.DictReader(f))["left out"] == "1 sample"


def test_labels_outside_the_classes_and_images_too_small_to_fit_are_left_out(tmp_path):
    """Regressions (new-user trial): a `cls` of 7 (or -1) among the dataset's classes was scored as a miss without
    a word, and a 1 x 4000 image, which gsv fit and convert refuse, was evaluated. Both are now unreadable samples,
    named, on the RGB and GS sides alike: of the first half's 8 correct samples s0000-s0002 are gone (5 of 13)."""
    root = tmp_path / "colors"
    write_wds_classification(root)
    shard = root / "test" / "0.tar"
    _rewrite_member(shard, ".cls", str(len(NAMES)).encode())
    strip = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (4000, 1), (255, 0, 0)).save(strip, format="PNG")
    _rewrite_member(shard, "s0001.png", strip.getvalue())
    _rewrite_member(shard, "s0002.cls", b"-1")
    for res in _eval_colors(root, tmp_path):
        assert not res["errors"], res["errors"]
        (rec,) = res["records"]
        bad = rec["unreadable"]
        assert (bad["count"], bad["shards"], bad["read"]) == (3, 0, 13), bad
        assert rec["metrics"]["acc1"] == pytest.approx(5 / 13)
        out_of, small, negative = bad["first"]
        assert out_of == f"{shard}, sample s0000: ValueError: cls {len(NAMES)} is outside the {len(NAMES)} classes " \
                         f"(0..{len(NAMES) - 1})", out_of
        assert small == f"{shard}, sample s0001: image: too small (4000x1; at least 8 pixels a side)", small
        assert negative.startswith(f"{shard}, sample s0002: ValueError: cls -1 is outside"), negative


def test_a_missing_shard_is_counted_as_a_shard_not_a_sample(tmp_path):
    """Regression (new-user trial): nshards.txt naming a shard that is not there said "1 unreadable sample(s)";
    a shard's samples are unknown, so the note and the table count it as a shard."""
    from gaussianvision.eval.report import left_out
    root = tmp_path / "colors"
    write_wds_classification(root)
    (root / "test" / "nshards.txt").write_text("2\n")
    rgb, _ = _eval_colors(root, tmp_path)
    (rec,) = rgb["records"]
    assert (rec["unreadable"]["count"], rec["unreadable"]["shards"], rec["unreadable"]["read"]) == (1, 1, 16)
    assert rgb["header"][-1] == "left out" and rgb["rows"][0][-1] == "1 shard"
    assert left_out({"count": 3, "shards": 1}) == "1 shard, 2 samples" and left_out(None) is None


def test_eval_pixels_are_the_pixels_every_other_command_sees():
    """Regression (new-user trial): eval's preprocessing made images RGB with PIL's convert after the crop, so a
    16-bit PNG came out near white, EXIF orientation was ignored and transparency was black: the GS side fitted
    other pixels than `gsv fit` / `gsv convert` would, and the RGB side saw them too. A square image now gives
    exactly load_image's pixels."""
    from PIL import Image
    from gaussianvision.data.images import load_image
    from gaussianvision.eval.datasets import SplatSettings, transform_for
    transform = transform_for(stub("gs"), SplatSettings(n_gaussians=4, size=16))
    ramp = Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16))
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    turned = Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((32, 32), np.uint8))).convert("RGB")
    exif = turned.getexif()
    exif[0x0112] = 6
    for img, kw in ((ramp, {}), (clear, {}), (turned, {"format": "JPEG", "exif": exif, "quality": 95})):
        data = io.BytesIO()
        img.save(data, **{"format": "PNG", **kw})
        got = transform(Image.open(io.BytesIO(data.getvalue())))
        assert torch.equal(got, load_image(data.getvalue(), size=16)), img.mode
    assert abs(float(transform(ramp).mean()) - 0.5) < 0.01  # was 0.99


class _Stream(torch.utils.data.IterableDataset):
    classes = ["a", "b"]

    def __len__(self):
        return 5

    def __iter__(self):
        return iter([(torch.zeros(3), i % 2) for i in range(5)])


def test_iterable_datasets_are_read_as_before():
    """Review finding: clip_benchmark's iterable datasets (vtab/, tfds/) have no ds[i]; the per-sample wrapper
    raised NotImplementedError. They are batched as before (an error in one still ends the dataset)."""
    from gaussianvision.eval.datasets import build_loader
    guard = build_loader("vtab/x", _Stream(), batch_size=2)
    assert [b[1].tolist() for b in guard] == [[0, 1], [0, 1], [0]] and guard.read == 5 and not guard.skipped


def test_wds_labels_follow_the_dataset_type_and_remote_shards_stream(tmp_path):
    """Review findings: a multi-label wds dataset read `cls` where both members were there (clip_benchmark
    reads `npy` by dataset_type.txt); a shard read from a stream that cannot seek (an HTTP download) was
    'cannot read the shard (seek)', so every remote dataset had no readable sample."""
    from gaussianvision.data.shards import ShardWriter
    from gaussianvision.eval.datasets import build_dataset, build_loader
    from gaussianvision.eval import unreadable
    root = tmp_path / "ml"
    (root / "test").mkdir(parents=True)
    labels = [np.array([1, 0, 1]), np.array([0, 1, 1])]
    with ShardWriter(root / "test" / "0.tar") as w:
        for i, y in enumerate(labels):
            buf = io.BytesIO()
            np.save(buf, y)
            w.write(f"m{i}", {"png": png_bytes(np.full((8, 8, 3), 40 * i, np.uint8)), "cls": b"1", "npy": buf.getvalue()})
    (root / "test" / "nshards.txt").write_text("1\n")
    (root / "dataset_type.txt").write_text("multilabel\n")
    (root / "classnames.txt").write_text("a\nb\nc\n")
    (root / "zeroshot_classification_templates.txt").write_text("a {c}.\n")

    class NoSeek(io.RawIOBase):  # what urlopen gives: reads, no seek
        def __init__(self, path):
            self.f = open(path, "rb")

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, b):
            data = self.f.read(len(b))
            b[:len(data)] = data
            return len(data)

        def close(self):
            self.f.close()
            super().close()
    opened = []
    real = unreadable._open_shard

    def remote(url):
        opened.append(url)
        return io.BufferedReader(NoSeek(url)) if url.endswith(".tar") else real(url)
    import pytest as _pytest
    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(unreadable, "_open_shard", remote)
        ds = build_dataset("wds/ml", str(root), lambda im: 0, "zeroshot_classification")
        guard = build_loader("wds/ml", ds, 2, transform=lambda im: 0, root=str(root))
        (batch,) = list(guard)
    assert opened == [str(root / "test" / "0.tar")] and not guard.skipped
    assert torch.equal(torch.as_tensor(np.stack(batch[1])), torch.as_tensor(np.stack(labels)))


def test_models_of_the_same_folder_or_file_name_get_labels_that_tell_them_apart(tmp_path):
    """Regression (new-user trial): runs/a/s2 and runs/b/s2 (or two runs' gsclip.safetensors) could not be
    compared: 'two models resolve to the same name'. Now named by the fewest path parts that differ; the same
    model twice is still refused, by name."""
    from gaussianvision.eval.models import EvalError, distinct_labels

    def gs(path, label=None):
        em = stub("gs")
        em.source, em.label = str(path), label or f"gs:{Path(path).name}"
        return em
    ms = [gs(tmp_path / "runs/a/s2"), gs(tmp_path / "runs/b/s2"), gs(tmp_path / "x/gsclip.safetensors"),
          gs(tmp_path / "y/z/gsclip.safetensors"), gs(tmp_path / "solo")]
    distinct_labels(ms)
    assert [m.label for m in ms] == ["gs:a/s2", "gs:b/s2", "gs:x/gsclip.safetensors", "gs:z/gsclip.safetensors",
                                     "gs:solo"]
    twice = [gs(tmp_path / "runs/a/s2"), gs(tmp_path / "runs/../runs/a/s2")]
    with pytest.raises(EvalError, match="gs:s2: the same model given twice"):
        distinct_labels(twice)
    with pytest.raises(EvalError, match="rgb:stub-rgb:none: the same model given twice"):
        distinct_labels([stub("rgb"), stub("rgb")])
    # regression (new-user trial): one model spelled two ways (a run folder and the checkpoint it loads, a link
    # to a weights file) was evaluated twice under two labels
    step = tmp_path / "runs/a/s2/checkpoints/step-9"
    step.mkdir(parents=True)
    folder, ckpt = gs(tmp_path / "runs/a/s2"), gs(step)
    folder.info = ckpt.info = {"checkpoint": str(step)}
    with pytest.raises(EvalError, match=f"gs:s2 and gs:step-9: the same model given twice \\(both load {step}\\)"):
        distinct_labels([folder, ckpt])
    (tmp_path / "w.safetensors").write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "w.safetensors")
    with pytest.raises(EvalError, match="gs:w.safetensors and gs:link.safetensors: the same model given twice"):
        distinct_labels([gs(tmp_path / "w.safetensors"), gs(tmp_path / "link.safetensors")])
    other = gs(tmp_path / "runs/b/s2")
    other.info = {"checkpoint": str(tmp_path / "runs/b/s2/checkpoints/step-9")}
    distinct_labels([gs(tmp_path / "runs/a/s2"), other])  # two runs: two models
    # review findings: one run on two bases is two models; their result files never share a name
    on_a, on_b = gs(tmp_path / "runs/s2", "gs:s2@openai"), gs(tmp_path / "runs/s2", "gs:s2@laion")
    on_a.variant, on_b.variant = "@openai", "@laion"
    distinct_labels([on_a, on_b])
    assert (on_a.label, on_b.label) == ("gs:s2@openai", "gs:s2@laion")
    from gaussianvision.eval.report import result_filename, result_record
    names = {result_filename(result_record("wds/x", em.name, em.pretrained, "zeroshot_classification", {}, label=em.label))
             for em in ms + [on_a, on_b]}
    assert len(names) == len(ms) + 2


def test_an_out_naming_a_file_is_refused_before_loading(tmp_path, capsys):
    """Regression (new-user trial): gsv eval / probe --out FILE said only 'FILE: File exists'."""
    from gaussianvision.apps.cli.main import main as gsv
    (tmp_path / "f").write_text("x")
    for cmd in (["eval", "zeroshot", "--dataset", "wds/x"], ["probe", "--tasks", str(tmp_path)]):
        assert gsv([*cmd, "--model", "rgb:gsv-tiny", "--out", str(tmp_path / "f")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"--out {tmp_path / 'f'}: is not a folder (a file of that name exists; give a new or "
                            "existing folder)") and "\n" not in err, err
    assert (tmp_path / "f").read_text() == "x"


def test_the_same_model_given_twice_is_refused_before_loading(tmp_path, capsys):
    from gaussianvision.apps.cli.main import main as gsv
    for cmd in (["eval", "zeroshot"], ["probe"]):
        args = [*cmd, "--model", "rgb:gsv-tiny", "--model", "gs:run", "--model", "rgb:gsv-tiny", "--out", str(tmp_path)]
        assert gsv([*args, "--dataset", "wds/x", "--dataset-root", str(tmp_path)] if cmd[0] == "eval" else
                   [*args, "--tasks", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("--model rgb:gsv-tiny: given twice") and "\n" not in err, err


def test_one_root_without_a_dataset_field_for_several_datasets_is_refused_before_loading(tmp_path, capsys):
    """Regression (new-user trial): --dataset wds/color --dataset wds/shape --dataset-root tasks/color read the
    colour folder twice and reported it as the shape task too (exit 0)."""
    from gaussianvision.apps.cli.main import main as gsv
    from gaussianvision.eval.models import EvalError
    from gaussianvision.eval.run import evaluate_all
    argv = ["eval", "zeroshot", "--model", "gs:no/such/run", "--dataset", "wds/a", "--dataset", "wds/b",
            "--dataset-root", str(tmp_path), "--out", str(tmp_path / "o")]
    assert gsv(argv) == 2  # the model is never loaded: its error would name it
    err = capsys.readouterr().err.strip()
    assert err == (f"gsv eval: --dataset-root {tmp_path}: wds/a and wds/b would both read {tmp_path}; put "
                   "{dataset} in it, or give one of them"), err
    with pytest.raises(EvalError, match="wds/a and wds/b would both read"):
        evaluate_all([stub("rgb")], ["wds/a", "wds/b"], str(tmp_path / "o"), root=str(tmp_path), progress=False)
    # review finding: clip_benchmark's own datasets each keep a subfolder of a shared root: not refused
    from gaussianvision.eval.run import check_root
    check_root(["cifar10", "cifar100", "wds/a"], str(tmp_path))
    check_root(["wds/a", "wds/b"], str(tmp_path / "{dataset}"))
    with pytest.raises(EvalError, match="wds/x/a and wds/x-a would both read"):  # one folder by its cleaned name
        check_root(["wds/x/a", "wds/x-a"], str(tmp_path / "{dataset_cleaned}"))


def test_an_rgb_checkpoint_named_by_a_bare_file_name_is_a_file_not_a_tag(tmp_path, monkeypatch):
    """Review finding: rgb:BASE:model.safetensors (a file in the working folder) was taken for a tag, so beside
    another model.safetensors the two were refused as the same model."""
    import gaussianvision.models as models_module
    from gaussianvision.eval.models import distinct_labels, load_eval_model

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Identity()
    monkeypatch.setattr(models_module, "create_rgb_clip", lambda base, pretrained, device="cpu": Stub())
    (tmp_path / "runs/a").mkdir(parents=True)
    for f in (tmp_path / "model.safetensors", tmp_path / "runs/a/model.safetensors"):
        f.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    here, there = load_eval_model("rgb:ViT-B-32:model.safetensors"), load_eval_model("rgb:ViT-B-32:runs/a/model.safetensors")
    distinct_labels([here, there])
    assert here.label != there.label and there.label == "rgb:ViT-B-32:a/model.safetensors"


def test_eval_and_probe_take_every_initializer_and_probe_takes_no_progress():
    """Regression (new-user trial): --fit-init offered grid / content / random only (gsv fit and convert also
    take learned), and gsv probe had no --no-progress (gsv eval has)."""
    from gaussianvision.apps.cli import eval as eval_cli, probe as probe_cli
    from gaussianvision.fit import INITIALIZERS
    for build in (eval_cli.build_parser, probe_cli.build_parser):
        p = build()
        assert set(p._option_string_actions["--fit-init"].choices) == set(INITIALIZERS) >= {"learned"}
        assert p.parse_args(["--model", "rgb:x", "--no-progress"]).no_progress
