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
                         prune_fractions=(0.25,), kodak_dir=str(tmp_path / "absent"), backend="reference")
    res = run_fit_bench(cfg, log=lambda *_: None)
    json.dumps(res)
    assert [c["init"] for c in res["curves"]] == ["grid", "random", "content"]
    assert set(res["curves"][0]["psnr"]) == {"0", "4"} and res["curves"][0]["fp16_loss_db"] < 0.1
    assert res["speed"]["images"] == 3 and res["naive"][0]["speedup_equal_n"] > 0
    rows = {r["rule"]: r for r in res["pruning"]["sweep"]}
    assert abs(rows["energy lowest 25%"]["pruned"] - 0.25) < 1e-9
    assert "skipped" in res["kodak"]
    md = to_markdown(res)
    assert "| 16 grid |" in md and "Naive dense baseline" in md and "Skipped" in md
