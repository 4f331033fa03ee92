"""gsv bench wire: byte matching at each budget, the demo's evaluation on a tiny demo folder (a tiny
world, an untrained teacher and GS model), the table, the reading and the plot written."""
import json
import re

import numpy as np
import pytest
import torch

from conftest import random_splats
from gaussianvision.apps.bench import wire


def test_pixel_codecs_stay_within_the_budget():
    rng = np.random.default_rng(0)
    arr = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    for fmt in ("JPEG", "WEBP"):
        for budget in (700, 1248, 3000):
            dec, n, ok = wire._through_codec(arr, fmt, budget)
            assert dec.shape == arr.shape and (0 < n <= budget if ok else n == 0)
        dec, n, ok = wire._through_codec(arr, fmt, 40)  # no file is that small: nothing is sent
        assert (ok, n) == (False, 0) and (dec == 128).all()


def test_splat_budgets_are_exact_file_sizes():
    from gaussianvision.splats.format import encode, encode_quantized, quantized_size
    for b in wire.budgets([19, 38, 76]):
        s = random_splats(b=1, n=b["n"], h=64, w=64)
        assert len(encode(s)) == b["bytes"] == 32 + 16 * b["n"]
        nq = b["n_quantized"]
        assert len(encode_quantized(random_splats(b=1, n=nq, h=64, w=64))) == quantized_size(nq) <= b["bytes"]
        assert quantized_size(nq + 1) > b["bytes"] and nq > b["n"]


def _row(budget, codec, acc, psnr, fits=100):
    return {"budget": budget, "n": 19, "codec": codec, "n_gaussians": None,
            "world": {"acc": acc, "psnr": psnr, "fits": fits, "images": 100, "bytes_mean": budget, "bytes_max": budget},
            "photos": {"psnr": psnr - 5, "bytes": budget}}


def test_the_reading_follows_the_numbers():
    res = {"budgets": [{"bytes": 336}, {"bytes": 1248}],
           "reference": {"world": {"acc": 0.7, "bytes_mean": 1500}},
           "rows": [_row(336, "JPEG", 0.2, 10, fits=0), _row(336, "WEBP", 0.3, 20), _row(336, "splats float16", 0.6, 25),
                    _row(1248, "JPEG", 0.9, 35), _row(1248, "WEBP", 0.8, 34), _row(1248, "splats float16", 0.5, 28)]}
    text = wire.verdict(res)
    assert text.startswith("Splats win on accuracy at 336 B, lose at 1,248 B")
    assert "JPEG fits 0/100" in text and "splats lose on accuracy, splats float16 50.0% vs JPEG 90.0%" in text


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """A demo folder with what the bench reads: a tiny world, a teacher checkpoint, a stage-2 model."""
    from safetensors.torch import save_file
    from gaussianvision.apps.demo.pipeline import SETTINGS
    from gaussianvision.apps.demo.world import make_world
    from gaussianvision.models import create_gsclip, register_open_clip_configs, save_weights
    from gaussianvision.models.gsclip import create_base
    d = tmp_path_factory.mktemp("demo")
    w = make_world(d / "world", **{k: v for k, v in SETTINGS["tiny"]["world"].items()})
    register_open_clip_configs()
    torch.manual_seed(0)
    (d / "teacher").mkdir()
    save_file(create_base("gsv-tiny").state_dict(), str(d / "teacher" / "open_clip_model.safetensors"))
    (d / "stage2_n16").mkdir()
    save_weights(create_gsclip(pretrained=d / "teacher" / "open_clip_model.safetensors", config="gs-tiny"),
                 d / "stage2_n16" / "gsclip.safetensors")
    settings = {"teacher": {"base": "gsv-tiny"}, "convert": {"iters": 3, "init": "grid", "fit": {}}, "eval": {"batch": 16}}
    (d / "results.json").write_text(json.dumps({"settings": settings, "world": {
        "param_hash": w["param_hash"], "tasks": {t: {k: str(v) if k == "root" else v for k, v in i.items()}
                                                 for t, i in w["tasks"].items()}}}))
    return d


def test_quick_run_writes_the_table_the_reading_and_the_plot(tiny_demo, tmp_path, capsys):
    from gaussianvision.apps.cli.main import main
    out = tmp_path / "res"
    rc = main(["bench", "wire", "--demo", str(tiny_demo), "--out", str(out), "--quick", "--n", "8,16", "--json",
               "--columns", "JPEG,WEBP,splats float16,splats quantized,splats progressive", "--work", str(tmp_path / "work")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [b["bytes"] for b in res["budgets"]] == [160, 288]
    for r in res["rows"]:
        w = r["world"]
        assert 0 <= w["acc"] <= 1 and w["images"] == res["reference"]["world"]["images"]
        assert w["bytes_max"] <= r["budget"]
        if r["codec"] == "splats float16":
            assert w["bytes_mean"] == w["bytes_max"] == r["budget"]  # exactly the budget
        if r["codec"] == "splats quantized":
            from gaussianvision.splats.format import quantized_size
            assert w["bytes_max"] == quantized_size(r["n_gaussians"])
        if r["codec"] == "splats progressive":
            assert w["bytes_mean"] == w["bytes_max"] == r["budget"]  # a float16 prefix is exactly the budget
    assert {r["codec"] for r in res["rows"]} == {"JPEG", "WEBP", "splats float16", "splats quantized",
                                                 "splats progressive"}
    _check_prefix_files(wire.load_demo(tiny_demo), tmp_path / "work")
    md = (out / "wire_quick.md").read_text()
    assert "| budget B (N) | codec |" in md and re.search(r"Splats (win|lose|tie) on accuracy", md)
    assert "wire_quick.png" in md
    png = (out / "wire_quick.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) < 200_000


def _check_prefix_files(ctx, work):
    """Each progressive file at budget N=8 is the first 8 Gaussians of the nested fit at N=16 (in
    the nested order), flagged."""
    from gaussianvision.fit.progressive import progressive
    from gaussianvision.splats.format import decode, read_header
    ctx.work = work
    full = ctx.run_dir / "gs_nested_n16" / "eval" / "splat_cache"
    cut = ctx.run_dir / "gs_progressive_n16_k8" / "eval" / "splat_cache"
    files = sorted(full.rglob("*.gsv"))
    assert files and len(files) == len(list(cut.rglob("*.gsv")))
    for f in files[:5]:
        a, b = progressive(decode(f.read_bytes()), method="nested"), (cut / f.relative_to(full)).read_bytes()
        assert read_header(b).progressive and a.max_gaussians == 16
        torch.testing.assert_close(decode(b).means, a.means[:, :8])
        torch.testing.assert_close(decode(b).colors, a.colors[:, :8])


def test_missing_demo_is_one_line(tmp_path, capsys):
    from gaussianvision.apps.cli.main import main
    assert main(["bench", "wire", "--demo", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run gsv demo first" in err


def _res(rows, budgets=(336,)):
    return {"budgets": [{"bytes": b} for b in budgets], "reference": {"world": {"acc": 0.7, "bytes_mean": 1500}},
            "rows": rows}


@pytest.mark.parametrize("codecs,missing", [(("JPEG", "WEBP"), "no splats column was run"),
                                            (("splats float16",), "no JPEG or WebP column was run")])
def test_the_reading_makes_no_comparison_when_one_side_is_missing(codecs, missing):
    """Regression (new-user trial): pixel codecs alone crashed the reading (TypeError), after every
    column had run; splats alone read "Splats win ... no JPEG or WebP file fits" against codecs never run."""
    text = wire.verdict(_res([_row(336, c, 0.4, 20) for c in codecs]))
    assert text.startswith("No accuracy comparison is made") and f"336 B: {missing}, so the comparison is not made" in text
    assert "win" not in text and "no budget" not in text


def test_the_reading_leaves_out_empty_clauses():
    """Regression: "Splats win on accuracy at no budget, lose at no budget, tie ... at 336 B"."""
    text = wire.verdict(_res([_row(336, "WEBP", 0.5, 30), _row(336, "splats float16", 0.5, 25)]))
    assert text.startswith("Splats tie on accuracy (within two standard errors) at 336 B. The world's")
    assert "no budget" not in text


def test_each_figure_belongs_to_the_column_it_is_quoted_for():
    """Regression: "splats progressive 25.0% vs JPEG 20.8%; world PSNR 24.1 vs 36.4 dB" quoted float16's and
    WebP's PSNRs (the best PSNR of each side) beside the accuracy of other columns."""
    rows = [_row(1248, "JPEG", 0.9, 34), _row(1248, "WEBP", 0.2, 36), _row(1248, "splats progressive", 0.95, 22),
            _row(1248, "splats float16", 0.3, 24)]
    rows[2]["photos"] = None  # the progressive column has no photo cells
    text = wire.verdict(_res(rows, budgets=(1248,)))
    assert "splats progressive 95.0% vs JPEG 90.0%" in text and "world PSNR 22.0 vs 34.0 dB" in text
    assert "photos" not in text  # only one of the two compared columns has a photos figure


def _wire(tiny_demo, out, *extra):
    from gaussianvision.apps.cli.main import main
    return main(["bench", "wire", "--demo", str(tiny_demo), "--out", str(out), "--quick", "--no-photos", *extra])


def test_a_pixel_codec_alone_writes_its_table(tiny_demo, tmp_path, capsys):
    """Regression (new-user trial): --columns JPEG measured the column, then crashed in the reading; rc 1, nothing
    written."""
    assert _wire(tiny_demo, tmp_path / "res", "--n", "8", "--columns", "JPEG", "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["codec"] for r in res["rows"]] == ["JPEG"] and "comparison is not made" in res["verdict"]
    md = (tmp_path / "res" / "wire_quick.md").read_text()
    assert "| JPEG |" in md and "fits |\n|---|---|---|---|---|---|---|\n|" in md
    assert "photo" not in md.lower(), md  # regression (trial): --no-photos' heading and columns named the photos


def test_the_numbers_are_written_before_the_reading(tiny_demo, tmp_path, monkeypatch):
    def broken(res):
        raise RuntimeError("the reading failed")
    monkeypatch.setattr(wire, "verdict", broken)
    with pytest.raises(RuntimeError):
        _wire(tiny_demo, tmp_path / "res", "--n", "8", "--columns", "JPEG")
    assert json.loads((tmp_path / "res" / "wire_quick.json").read_text())["rows"][0]["codec"] == "JPEG"


@pytest.mark.parametrize("argv,message", [
    (["--n", "5000", "--columns", "splats float16"], "--n 5000 is more than the 64x64 images' 4096 pixels"),
    (["--n", "3000", "--columns", "splats quantized"], "--n 3000 (its 48,032 B quantized file: 5722 Gaussians) is more"),
])
def test_more_gaussians_than_pixels_is_one_line(tiny_demo, tmp_path, capsys, argv, message):
    """Regression (new-user trial): a ValueError traceback from the fit."""
    assert _wire(tiny_demo, tmp_path / "res", *argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "res").exists()


def test_a_work_folder_reused_for_another_demo_counts_only_this_demo_s_files(tiny_demo, tmp_path, capsys):
    """Regression (new-user trial): --work reused across two demos counted every cached .gsv of the folder
    (288/288 instead of 240/240), the other demo's included."""
    import shutil
    other = tmp_path / "other"
    shutil.copytree(tiny_demo, other)
    r = json.loads((other / "results.json").read_text())
    r["settings"]["convert"]["iters"] = 2  # other fit settings: other splat files of the same images
    (other / "results.json").write_text(json.dumps(r))
    for demo in (tiny_demo, other):
        assert _wire(demo, tmp_path / "res", "--n", "8", "--columns", "splats float16", "--json",
                     "--work", str(tmp_path / "work")) == 0
        res = json.loads(capsys.readouterr().out)
        w = res["rows"][0]["world"]
        assert w["images"] == w["fits"] == res["reference"]["world"]["images"]
