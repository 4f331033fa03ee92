"""apps/bench/render.py: the rasterizer timings (the rows of docs/gpu.md and docs/cpu-backend.md)."""
from __future__ import annotations

from gaussianvision.apps.bench.render import cpu_table_rows, grid_scene, main


def test_cpu_table_rows_count_the_pairs_of_a_grid_scene():
    rows = cpu_table_rows(ns=(64,), batch=1, size=64, reps=1, inner=1)
    assert [r["N"] for r in rows] == [64]
    r = rows[0]
    assert r["cpu_ms"] > 0 and r["wall_ms"] > 0 and r["threads"] >= 1
    # grid-like Gaussians whose 3-sigma footprints cover each pixel about 12 times (fewer at borders)
    assert 6 < r["pairs_per_image"] / (64 * 64) < 13


def test_grid_scene_is_a_jittered_lattice():
    s = grid_scene(100, batch=2, size=40)
    assert s.means.shape == (2, 100, 2) and bool((s.chol[..., 0] > 0).all())
    step = 40 / 10
    cells = (s.means / step).floor()
    assert cells.min() >= -1 and cells.max() <= 10


def test_cpu_table_is_printed_as_markdown(capsys, monkeypatch):
    import gaussianvision.apps.bench.render as r
    monkeypatch.setattr(r, "cpu_table_rows", lambda: [{"N": 4, "cpu_ms": 1.0, "wall_ms": 2.0, "pairs_per_image": 10.0,
                                                        "pairs_per_cpu_s": 1e4, "threads": 2, "load": 0.5}])
    assert main(["--cpu-table"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| N | CPU ms") and out[2] == "| 4 | 1.00 | 2.00 | 10 | 1e+04 | 2 | 0.5 |"
