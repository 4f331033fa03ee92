import json

from gaussianvision.apps.bench.fit import FitBenchConfig, pairs_per_image_iter, run_fit_bench, to_markdown
from gaussianvision.apps.bench.naive import render_dense
from gaussianvision.raster import render
from conftest import random_splats


def test_naive_dense_render_matches_reference_inside_the_cut():
    s = random_splats(1, 6, 12, 14, dtype=__import__("torch").float64)
    s.chol = s.chol * 0.3  # small Gaussians: the 3-sigma cut removes only ~1e-2 of their weight
    dense = render_dense(s.means[0], s.chol[0], s.colors[0], 12, 14)
    ref = render(s, backend="reference")[0]
    assert (dense - ref).abs().max() < 0.02 and dense.shape == (3, 12, 14)


def test_pairs_estimate_is_the_ellipse_area():
    s = random_splats(1, 2, 100, 100)
    s.chol[0, :, 0], s.chol[0, :, 1], s.chol[0, :, 2] = 2.0, 0.5, 1.0
    assert abs(pairs_per_image_iter(s) - 2 * 9 * 3.14159265 * 2.0) < 1e-3


def test_bench_runs_end_to_end_tiny(tmp_path):
    cfg = FitBenchConfig(ns=(16,), inits=("grid", "random", "content"), checkpoints=(0, 4), photos=2, size=24,
                         speed_images=3, speed_iters=2, naive_iters=1, prune_n=16, prune_iters=4, prune_finetune=1,
                         prune_fractions=(0.25,), kodak_dir=str(tmp_path / "absent"), backend="reference",
                         ttq_ns=(16,), ttq_batches=(2,), ttq_iters=(10,))
    said = []
    res = run_fit_bench(cfg, log=said.append)
    json.dumps(res)
    assert any(m.startswith("ttq: the held-out Kodak photos are left out") for m in said)  # no longer silently
    assert [c["init"] for c in res["curves"]] == ["grid", "random", "content"]
    assert set(res["curves"][0]["psnr"]) == {"0", "4"} and res["curves"][0]["fp16_loss_db"] < 0.1
    assert res["speed"]["images"] == 3 and res["naive"][0]["speedup_equal_n"] > 0
    rows = {r["rule"]: r for r in res["pruning"]["sweep"]}
    assert abs(rows["energy lowest 25%"]["pruned"] - 0.25) < 1e-9
    assert "skipped" in res["kodak"]
    ttq = res["ttq"]["sets"]["bundled photos"]["16"]
    assert [r["method"] for r in ttq] == ["adam", "adam+colors", "c2f+colors", "random", "fast", "balanced",
                                         "fast+learned", "balanced+learned"]
    # the run's iterations, except for the presets, which run their own
    assert [r["curve"][-1][2] for r in ttq] == [10, 10, 10, 10, 150, 500, 150, 500] == [r["iters"] for r in ttq]
    assert all(r["seconds_per_image"] > 0 for r in ttq)
    assert res["ttq"]["naive"]["bundled photos:16"]["naive_seconds"] > 0
    md = to_markdown(res)
    assert "Time to quality" in md and "| c2f+colors |" in md
    assert "| 16 grid |" in md and "Naive dense baseline" in md and "Skipped" in md


def test_read_curve_interpolates_times_and_psnrs():
    from gaussianvision.apps.bench.ttq import naive_row, read_curve
    curve = [(0.0, 10.0, 0), (1.0, 20.0, 10), (3.0, 30.0, 30)]
    assert read_curve(curve, target=15.0) == 0.5 and read_curve(curve, target=25.0) == 2.0
    assert read_curve(curve, target=31.0) is None and read_curve(curve, target=5.0) == 0.0
    assert read_curve(curve, at=2.0) == 25.0 and read_curve(curve, at=9.0) == 30.0
    assert read_curve([(0.5, 10.0, 0)], at=0.1) is None
    # the naive fitter: the random curve's iterations at its own time per iteration
    rnd = {"n": 4, "curve": [(0.0, 8.0, 0), (0.1, 18.0, 10), (0.2, 20.0, 20)]}
    fast = {"method": "fast", "curve": [(0.0, 15.0, 0), (0.01, 21.0, 5)]}
    slow = {"method": "slow", "curve": [(0.0, 15.0, 0), (0.5, 21.0, 5)]}
    row = naive_row(rnd, 2.0, [slow, fast])
    assert row["equal_psnr_db"] == 20.0 and row["naive_seconds"] == 40.0 and row["ours_method"] == "fast"
    assert abs(row["speedup_equal_psnr"] - 40.0 / (0.01 * 5 / 6)) < 1e-6
    # with a start-up per image, both times carry it, as the tables print them (regression: only ours did)
    up = naive_row(rnd, 2.0, [slow, fast], startup_s=0.06)
    assert abs(up["speedup_equal_psnr"] - 40.06 / (0.01 * 5 / 6 + 0.06)) < 1e-6


def test_full_size_kodak_section(tmp_path):
    """ttq_kodak: the full-size photos of a Kodak-like folder at kodak_n, time to 30 / 32.05 dB read
    from each method's curve; skipped, saying so, without the folder."""
    import torch
    from gaussianvision.data.images import save_png
    d = tmp_path / "kodak"
    d.mkdir()
    save_png(torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1)), d / "kodim01.png")
    cfg = FitBenchConfig(sections=("ttq_kodak",), kodak_dir=str(d), kodak_n=9000, ttq_kodak_iters=2,
                         backend="reference", size=24)
    cfg.kodak_n = 12  # small for the test; the targets are looked up for the real N=9000 below
    res = run_fit_bench(cfg, log=lambda *_: None)
    k = res["ttq_kodak"]
    assert k["images"] == ["kodim01.png"] and k["size"] == [20, 30]
    assert [r["method"] for r in k["rows"]] == ["adam", "adam+colors", "c2f+colors"]
    from gaussianvision.apps.bench.ttq import TARGETS, ttq_kodak_markdown
    assert TARGETS[9000] == (30.0, 32.05)
    assert "Kodak full size (30x20, N=12" in "\n".join(ttq_kodak_markdown(k))
    skipped = run_fit_bench(FitBenchConfig(sections=("ttq_kodak",), kodak_dir=str(tmp_path / "no")), log=lambda *_: None)
    assert "skipped" in skipped["ttq_kodak"] and "Skipped" in to_markdown(skipped)
