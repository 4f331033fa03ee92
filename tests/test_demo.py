"""gsv demo end to end in its test size (--tiny: tens of images, a few steps): results.json's
schema and numbers, the report and its figures in headless Chromium, and the step cache."""
import json
import time
from pathlib import Path

import pytest

from gaussianvision.apps.cli.main import main as gsv
from gaussianvision.apps.report import check_in_browser, find_chromium

TASKS = {"shape": 0.2, "color": 1 / 6, "count": 0.25, "relation": 0.25}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--tiny", "--out", str(out), "--json", "--no-progress", "--threads", "1"]
    t0 = time.perf_counter()
    assert gsv(argv) == 0
    first = time.perf_counter() - t0
    results = json.loads((out / "results.json").read_text())
    return out, argv, results, first


def test_results_schema_and_numbers(demo):
    out, _, r, _ = demo
    zs = r["zeroshot"]
    assert r["mode"] == "tiny"
    for k in ("rgb_mean_top1", "gs_mean_top1", "ratio", "compression", "main_budget", "tasks", "budgets"):
        assert k in zs
    budgets = r["settings"]["convert"]["budgets"]  # converted and trained
    evaluated = r["settings"]["eval"]["budgets"]  # tiny: [16, 32, 24]; 24 was never trained
    assert sorted(zs["budgets"]) == sorted(str(b) for b in evaluated)
    assert {b: zs["budgets"][str(b)]["trained_at"] for b in evaluated} == {16: 16, 32: 32, 24: 16}
    assert zs["budgets"]["24"]["psnr"] is None  # no conversion at 24; the task images' fits have a PSNR
    assert all(zs["budgets"][str(b)]["psnr"] > 5 for b in budgets)
    assert all(zs["budgets"][str(b)]["task_psnr"] > 5 for b in evaluated)
    assert set(zs["tasks"]) == set(TASKS)
    for t, v in zs["tasks"].items():
        assert v["chance"] == pytest.approx(TASKS[t], abs=1e-3)
        assert 0 <= v["rgb"] <= 1 and set(v["gs"]) == set(zs["budgets"])
    for b, v in zs["budgets"].items():
        assert v["payload_bytes"] == 16 * int(b) and v["pixel_bytes"] == 64 * 64 * 3
        assert v["compression"] == pytest.approx(12288 / (16 * int(b)))
        assert v["gs_mean_top1"] == pytest.approx(sum(zs["tasks"][t]["gs"][b] for t in TASKS) / 4)
        assert v["ratio"] == pytest.approx(v["gs_mean_top1"] / zs["rgb_mean_top1"])
    main = zs["budgets"][str(zs["main_budget"])]
    assert zs["rgb_mean_top1"] == pytest.approx(sum(v["rgb"] for v in zs["tasks"].values()) / 4)
    assert zs["gs_mean_top1"] == main["gs_mean_top1"] and zs["ratio"] == pytest.approx(main["ratio"])
    assert zs["compression"] == pytest.approx(12288 / main["payload_bytes"]) and zs["compression"] >= 10
    # photos: PSNR / bytes / compression rows, one per N
    rows = r["photos"]["rows"]
    assert [x["n_gaussians"] for x in rows] == r["settings"]["photos"]["n"]
    for x in rows:
        assert x["compression"] == pytest.approx(x["pixel_bytes"] / x["payload_bytes"]) and x["psnr"] > 10
    # every step timed (wall and CPU)
    names = ({"world", "photos", "teacher", "eval_rgb", "report"} | {f"eval_gs_n{b}" for b in evaluated}
             | {f"{p}_n{b}" for b in budgets for p in ("convert", "stage1", "stage2")})
    assert names <= set(r["timings"])
    assert all(v["seconds"] >= 0 and v["cpu_seconds"] >= 0 for v in r["timings"].values())
    # the teacher is an open_clip checkpoint, the GS runs wrote their trainable checkpoints
    assert (out / "teacher" / "open_clip_model.safetensors").is_file()
    teacher = r["training"]["teacher"]
    assert teacher["lock_text_steps"] == round(r["settings"]["teacher"]["lock_text"] * teacher["steps"]) > 0
    assert teacher["hard_negatives"] is True  # trained on the world's KEY.neg.txt captions
    assert json.loads((out / "world" / "manifest.json").read_text())["params"]["cells"] == 8
    assert all((out / f"stage2_n{b}" / "gsclip.safetensors").is_file() for b in budgets)


def test_photo_step_files_are_fit_images_of_all_photos_in_one_batch(demo):
    """The photo step runs FitStream with every photo in one batch: photos_nN.gsv is the encoding
    of fit_images on the stacked photos, and its PSNRs are that fit's."""
    import torch
    from gaussianvision.apps.demo.pipeline import SETTINGS
    from gaussianvision.data.photos import bundled_photos
    from gaussianvision.fit import fit_images
    from gaussianvision.splats import encode
    out, _, r, _ = demo
    s = SETTINGS["tiny"]["photos"]
    photos = bundled_photos(s["size"], names=tuple(s["names"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo ran (--threads 1)
    try:
        for n, row in zip(s["n"], r["photos"]["rows"]):
            res = fit_images(torch.stack([im for _, im in photos]), n, iters=s["iters"], init=s["init"])
            assert (out / "photos" / f"photos_n{n}.gsv").read_bytes() == encode(res.splats)
            assert row["psnr_per_photo"] == {name: m["psnr"] for (name, _), m in zip(photos, res.metrics)}
    finally:
        torch.set_num_threads(threads)


def test_report_files_and_browser(demo):
    out, _, r, _ = demo
    page = out / "report" / "index.html"
    assert page.is_file() and Path(r["report"]) == page
    html = page.read_text()
    figs = [Path(p) for p in r["figures"]]
    assert len(figs) >= 4 and all(p.is_file() and p.stat().st_size > 1000 for p in figs)
    assert all(p.name in html for p in figs)
    for word in ("Zero-shot", "chance", "compression", "PSNR", "Training"):
        assert word in html
    if find_chromium() is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium)")
    loaded, total = check_in_browser(page)
    assert loaded == total == len(figs)


def test_rerun_reuses_every_step(demo, capsys):
    out, argv, r1, first = demo
    capsys.readouterr()
    t0 = time.perf_counter()
    assert gsv(argv) == 0
    second = time.perf_counter() - t0
    captured = capsys.readouterr()
    r2 = json.loads(captured.out)
    steps = [k for k in r2["timings"] if k != "report"]
    assert all(r2["timings"][k]["cached"] for k in steps), r2["timings"]
    assert second < first / 2
    assert r2["zeroshot"]["tasks"] == r1["zeroshot"]["tasks"]
    assert r2["zeroshot"]["budgets"] == r1["zeroshot"]["budgets"]
    assert "cached" in captured.err


def test_changed_setting_reruns_only_downstream(demo, tmp_path):
    """A changed stage-2 setting redoes stage 2 and its evaluation, nothing upstream."""
    from gaussianvision.apps.demo.run import run_demo
    out, _, _, _ = demo
    r = run_demo(out, mode="tiny", threads=1, overrides={"stage2": {"lr": 1e-4}})
    t = r["timings"]
    budgets = r["settings"]["convert"]["budgets"]
    for k in ("world", "photos", "teacher", "eval_rgb", *(f"convert_n{b}" for b in budgets),
              *(f"stage1_n{b}" for b in budgets)):
        assert t[k]["cached"], k
    for b in budgets:
        assert not t[f"stage2_n{b}"]["cached"]
    for b in r["settings"]["eval"]["budgets"]:
        assert not t[f"eval_gs_n{b}"]["cached"]
