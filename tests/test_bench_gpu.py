"""`gsv bench gpu` (make gpu-check): the --tiny run of every step, time limits, failures, reports.

The tiny run is what keeps the GPU script from rotting between the rare GPU sessions: every
step runs on CPU with small images (the CUDA parity tests report themselves skipped).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gaussianvision.apps.bench import gpu_check, gpu_report, gpu_steps
from gaussianvision.apps.bench.gpu_check import GpuCheckConfig, run_gpu_check, summarize
from gaussianvision.apps.cli import bench_gpu

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One `gsv bench gpu --tiny` run through the CLI, with $OUT set: (result, out dir, $OUT dir)."""
    out = tmp_path_factory.mktemp("gpu")
    copy = out / "device-out"
    mp = pytest.MonkeyPatch()
    mp.setenv("OUT", str(copy))
    try:
        assert bench_gpu.main(["--tiny", "--out", str(out), "--json"]) == 0
    finally:
        mp.undo()
    return json.loads((out / "gpu_tiny.json").read_text()), out, copy


def test_tiny_runs_every_step(tiny):
    res, out, copy = tiny
    steps = res["steps"]
    assert list(steps) == ["parity", "kernels", "ttq", "fit", "baseline", "tower"]
    cuda = torch.cuda.is_available()
    assert all(s["status"] == "ok" for k, s in steps.items() if cuda or k != "parity"), \
        {k: s["status"] for k, s in steps.items()}
    par = steps["parity"]["result"]
    assert par["failed"] == 0 and par["passed"] + par["skipped"] >= 10
    if not cuda:  # regression: "ok" with no test run
        assert par["passed"] == 0 and par["skipped_note"] == "no CUDA device"
        assert steps["parity"]["status"] == "skipped: no CUDA device"
    fit = steps["fit"]["rows"]
    assert [(r["batch"], r["n"]) for r in fit] == [(1, 16), (1, 64), (2, 16), (2, 64)]
    for r in fit:
        assert r["iters_run"] == 5 and r["images_per_s"] > 0 and 8 < r["mean_psnr"] < 40
    # more Gaussians fit the same two photos better
    assert fit[3]["mean_psnr"] > fit[2]["mean_psnr"]
    kern = steps["kernels"]
    assert [(r["batch"], r["n"], r["setting"]) for r in kern["rows"]] == [(2, 16, "tile (2026-12-04)"),
                                                                         (2, 16, "chunked (default)")]
    for r in kern["rows"]:  # the interpreter on CPU: both backwards agree with the reference
        assert r["ok"] and r["max_rel_error"] <= 1e-4 and r["forward_ms"] > 0 and r["backward_ms"] > 0
    assert kern["best"]["name"] in ("tile (2026-12-04)", "chunked (default)")
    assert res["config"]["raster"] == kern["best"]  # what the later steps ran with
    ttq = steps["ttq"]["rows"]
    assert [(r["batch"], r["n"], r["method"]) for r in ttq] == [(2, 16, m) for m in ("fast", "balanced", "c2f+colors", "adam")]
    for r in ttq:  # a curve to the last iteration (the presets': their own), its time growing
        assert r["curve"][-1][0] > r["curve"][0][0] > 0
    assert [r["curve"][-1][2] for r in ttq] == [150, 500, 5, 5]
    assert ttq[1]["curve"][0][1] > ttq[3]["curve"][0][1]  # the colour solve starts higher
    base = steps["baseline"]["rows"]
    assert [(r["n"], r["images_done"]) for r in base] == [(16, 2), (64, 2)]
    sp = res["summary"]["speedup_vs_lig"]
    assert set(sp) == {"16", "64"} and all(v["ratio"] > 0 for v in sp.values())
    tower = steps["tower"]["rows"]
    assert [(r["tower"], r["n"]) for r in tower] == [("RGB gsv-tiny", None), ("GS gs-tiny", 16), ("GS gs-tiny", 64)]
    assert all(r["forward_images_per_s"] > 0 and r["train_images_per_s"] > 0 for r in tower)
    assert res["machine"]["torch"] == torch.__version__
    # files: the JSON and the markdown, and copies into $OUT
    assert sorted(p.name for p in copy.iterdir()) == ["gpu_tiny.json", "gpu_tiny.md"]
    assert json.loads((copy / "gpu_tiny.json").read_text()) == res
    md = (out / "gpu_tiny.md").read_text()
    assert "| 2 | 64 |" in md and "RGB gsv-tiny" in md and "| 2 | 16 | c2f+colors |" in md and "tiny" in md.splitlines()[0]
    assert "tile (2026-12-04)" in md and "chunked (default)" in md and "(chosen)" in md and "The later steps ran with" in md


def test_render_fills_the_docs_block(tiny, tmp_path, capsys):
    res, out, _ = tiny
    (tmp_path / "docs").mkdir()
    docs = tmp_path / "docs" / "gpu.md"
    shutil.copyfile(REPO / "docs" / "gpu.md", docs)
    before = docs.read_text()
    src = tmp_path / "gpu.json"
    shutil.copyfile(out / "gpu_tiny.json", src)
    assert bench_gpu.main(["--render", str(src), "--docs", str(docs)]) == 2  # a tiny run never fills the docs
    assert "is a --tiny run" in capsys.readouterr().err and docs.read_text() == before
    src.write_text(json.dumps(dict(res, mode="full")))
    if not res["machine"].get("gpu"):  # regression: a run with no GPU replaced the docs' measured table
        assert bench_gpu.main(["--render", str(src), "--docs", str(docs)]) == 2
        assert "was measured on a GPU; the docs' results are kept" in capsys.readouterr().err
        assert docs.read_text() == before
    src.write_text(json.dumps(dict(res, mode="full", machine=dict(res["machine"], gpu="NVIDIA H200"))))
    res = json.loads(src.read_text())
    assert bench_gpu.main(["--render", str(src), "--docs", str(docs)]) == 0
    after = docs.read_text()
    assert after != before and gpu_report.tables(res) in after
    # the text around the block is kept, and a second fill is idempotent
    head, tail = before.split(gpu_report.BEGIN)[0], before.split(gpu_report.END)[1]
    assert after.startswith(head) and after.endswith(tail)
    assert bench_gpu.main(["--render", str(src), "--docs", str(docs)]) == 0
    assert docs.read_text() == after
    assert (tmp_path / "gpu.md").read_text() == gpu_report.to_markdown(res)
    (tmp_path / "gpu.md").unlink()  # regression (new-user trial): --out was ignored, gpu.md written beside the JSON
    assert bench_gpu.main(["--render", str(src), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "gpu.md").read_text() == gpu_report.to_markdown(res)
    assert not (tmp_path / "gpu.md").exists()


def test_render_refuses_bad_input_in_one_line(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    assert bench_gpu.main(["--render", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv bench gpu: --render") and "\n" not in err
    docs = tmp_path / "plain.md"
    docs.write_text("# no block here\n")
    good = tmp_path / "g.json"
    good.write_text(json.dumps(_fake_result()))
    assert bench_gpu.main(["--render", str(good), "--docs", str(docs)]) == 2
    assert "no '<!-- gpu-check:begin" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--tiny", "--limit", "fit=abc"], "'abc' is not a number of seconds"),
    (["--tiny", "--limit", "nope=3"], "unknown step 'nope'"),
    (["--tiny", "--limit", "fit"], "expected STEP=SECONDS"),
    (["--tiny", "--steps", "fit,warp"], "unknown step(s) ['warp']"),
])
def test_bad_options_get_one_line(argv, message, tmp_path, capsys):
    assert bench_gpu.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_a_step_over_its_limit_is_reported_and_the_next_runs(tmp_path):
    cfg = GpuCheckConfig.tiny_preset(steps=("fit", "baseline"),
                                     limits={"parity": 60, "fit": 0.05, "baseline": 60, "tower": 60})
    res = run_gpu_check(cfg, log=lambda *_: None)
    assert res["steps"]["fit"]["status"].startswith("timed out after 0 s")
    assert res["steps"]["baseline"]["status"] == "ok" and len(res["steps"]["baseline"]["rows"]) == 2
    assert res["summary"]["speedup_vs_lig"] == {}  # nothing to compare with


def test_a_failing_step_is_reported_and_the_next_runs():
    cfg = GpuCheckConfig.tiny_preset(steps=("tower", "baseline"), tower_config="no-such-config")
    res = run_gpu_check(cfg, log=lambda *_: None)
    tower = res["steps"]["tower"]
    assert tower["status"].startswith("failed (exit 1): ConfigError") and "no-such-config" in tower["status"]
    assert res["steps"]["baseline"]["status"] == "ok"


def test_full_mode_without_cuda_skips_the_cuda_steps(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = GpuCheckConfig(steps=("fit", "baseline", "tower"))
    res = run_gpu_check(cfg, log=lambda *_: None)
    assert {k: s["status"] for k, s in res["steps"].items()} == {k: "skipped: no CUDA device"
                                                                for k in ("fit", "baseline", "tower")}
    assert "skipped: no CUDA" in gpu_report.to_markdown(res)


def test_runs_on_a_bare_machine_without_the_optional_packages(tmp_path):
    """As on the GPU machine: no open_clip, webdataset, clip_benchmark or zstandard; the library
    from src/ by path, no install. The tower step says it skipped; the rest runs."""
    block = tmp_path / "block"
    block.mkdir()
    for mod in ("open_clip", "webdataset", "clip_benchmark", "zstandard"):
        (block / f"{mod}.py").write_text(f"raise ImportError('{mod} is blocked in this test')\n")
    env = dict(os.environ, PYTHONPATH=str(block))
    out = tmp_path / "res"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--steps", "fit,tower",
           "--limit", "fit=60", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "gpu_tiny.json").read_text())
    assert res["steps"]["fit"]["status"] == "ok"
    assert res["steps"]["tower"]["status"] == ("skipped: open_clip is not installed here: skipped "
                                               "(make gpu-wheels, then carry .whl)")


def test_wheels_install_into_a_temporary_folder(tmp_path, monkeypatch):
    """The .whl folder that `make gpu-wheels` fills is installed offline where open_clip is missing."""
    import importlib.util
    wheel_dir = tmp_path / "whl"
    wheel_dir.mkdir()
    assert gpu_check._install_wheels(wheel_dir, tmp_path / "site") == ([], None)  # no wheels: nothing
    _tiny_wheel(wheel_dir / "gsvprobe-1.0-py3-none-any.whl")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    names, err = gpu_check._install_wheels(wheel_dir, tmp_path / "site")
    assert err is None and names == ["gsvprobe-1.0-py3-none-any.whl"]
    assert (tmp_path / "site" / "gsvprobe" / "__init__.py").read_text() == "VALUE = 7\n"
    (wheel_dir / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    names, err = gpu_check._install_wheels(wheel_dir, tmp_path / "site2")
    assert len(names) == 2 and err.startswith(f"pip install of {wheel_dir} failed")


def _tiny_wheel(path: Path) -> None:
    import base64
    import hashlib
    import zipfile
    files = {"gsvprobe/__init__.py": b"VALUE = 7\n",
             "gsvprobe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gsvprobe\nVersion: 1.0\n",
             "gsvprobe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n"}
    record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},"
                     f"{len(v)}\n" for k, v in files.items()) + "gsvprobe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr("gsvprobe-1.0.dist-info/RECORD", record)


# ------------------------------------------------------------------------------ pure functions
def test_kernel_share_counts_only_gpu_kernels():
    from torch.autograd import DeviceType
    ev = lambda key, dev, us: SimpleNamespace(key=key, device_type=dev, self_device_time_total=us)
    events = [ev("splat_fwd_kernel", DeviceType.CUDA, 300.0), ev("splat_bwd_kernel_0d1d", DeviceType.CUDA, 500.0),
              ev("void at::native::elementwise", DeviceType.CUDA, 200.0),
              ev("aten::mul", DeviceType.CPU, 900.0)]  # a CPU op's launched kernels are not counted twice
    s = gpu_steps.kernel_share(events, wall_us=2000.0)
    assert s == {"raster_kernel_share": 0.4, "gpu_busy_share": 0.5, "raster_of_gpu_time": 0.8}
    assert gpu_steps.kernel_share([], 10.0)["raster_of_gpu_time"] is None


def test_parse_junit_counts_and_names(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite>
      <testcase classname="t" name="test_a"/>
      <testcase classname="t" name="test_b"><failure message="assert 1 == 2&#10;more">x</failure></testcase>
      <testcase classname="t" name="test_c"><skipped message="no CUDA device"/></testcase>
      <testcase classname="t" name="test_d"><skipped message="no CUDA device"/></testcase>
      <testcase classname="t" name="test_e"><error message="fixture broke"/></testcase>
    </testsuite></testsuites>""")
    r = gpu_steps.parse_junit(xml)
    assert (r["passed"], r["failed"], r["skipped"]) == (1, 2, 2)
    assert r["failures"] == ["test_b: assert 1 == 2", "test_e: fixture broke"]
    assert r["skip_reasons"] == ["no CUDA device"]


def _fake_result() -> dict:
    fit = [{"batch": 64, "n": 400, "iters": 500, "iters_run": 500, "images_per_s": 120.0, "mean_psnr": 27.0,
            "peak_gib": 1.5, "ms_per_iter": 2.0, "init_s": 0.1, "seconds": 0.5},
           {"batch": 64, "n": 3136, "iters": 500, "iters_run": 100, "images_per_s": 50.0,
            "images_per_s_projected": 10.0, "mean_psnr": 30.0, "peak_gib": 3.0, "ms_per_iter": 9.0,
            "init_s": 0.2, "seconds": 1.0},
           {"batch": 4096, "n": 3136, "error": "OutOfMemoryError: CUDA out of memory"}]
    base = [{"n": 400, "batch": 64, "images_done": 8, "iters": 500, "seconds_per_image": 0.4,
             "images_per_s": 2.5, "mean_psnr": 25.0},
            {"n": 3136, "batch": 64, "images_done": 2, "iters": 500, "seconds_per_image": 2.0,
             "images_per_s": 0.5, "mean_psnr": 28.0}]
    step = lambda rows: dict(status="ok", seconds=1.0, limit_s=10.0, rows=rows)
    res = {"mode": "full", "started_utc": "2026-12-04T00:00:00+00:00", "wall_s": 10.0,
           "config": {"device": "cuda", "size": 224, "iters": 500, "photos": 8, "tower_batch": 256},
           "machine": {"gpu": "NVIDIA H200", "gpu_memory_gib": 139.8, "gpu_capability": "9.0", "driver": "580",
                       "cuda_runtime": "13.0", "torch": "2.11", "triton": "3.6", "python": "3.12",
                       "cpu": "x", "cores": 16, "loadavg_start": None, "loadavg_end": None},
           "steps": {"fit": step(rows=fit), "baseline": step(rows=base)}}
    res["summary"] = summarize(res)
    return res


def test_summary_ratio_uses_the_projected_full_run():
    sp = _fake_result()["summary"]["speedup_vs_lig"]
    assert sp["400"]["ratio"] == pytest.approx(48.0)
    assert sp["3136"]["ratio"] == pytest.approx(20.0)  # 10 projected images/s, not the 50 of 100 iterations


def test_markdown_shows_errors_and_projections():
    md = gpu_report.to_markdown(_fake_result())
    assert "| 4096 | 3136 | OutOfMemoryError: CUDA out of memory |" in md
    assert "10.0 (projected; 50.0 measured)" in md
    assert "| 400 | 8 of 64 | 2.50 | 25.00 | 120.0 | 27.00 | 48x |" in md
    assert "NVIDIA H200 (139.8 GiB, compute 9.0), driver 580" in md


def test_the_parity_step_runs_every_file_with_cuda_tests():
    marked = sorted(p.name for p in (REPO / "tests").glob("test_*.py")
                    if "pytest.mark.requires_cuda" in p.read_text() and p.name != "test_bench_gpu.py")
    assert marked == sorted(gpu_steps.CUDA_TEST_FILES)


def test_render_merges_a_rerun_each_step_from_its_last_run(tmp_path, capsys):
    first = _fake_result()
    first["steps"]["parity"] = dict(status="ok", seconds=1.0, limit_s=10.0, rows=[],
                                    result={"command": "pytest", "passed": 3, "failed": 8, "skipped": 0,
                                            "failures": ["test_x: device mismatch"], "seconds": 1.0})
    rerun = dict(_fake_result(), started_utc="2026-12-04T01:00:00+00:00", wall_s=5.0)
    rerun["steps"] = {"parity": dict(first["steps"]["parity"], result=dict(first["steps"]["parity"]["result"],
                                                                         passed=11, failed=0, failures=[]))}
    paths = []
    for i, r in enumerate((first, rerun)):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(r))
    out = tmp_path / "results"
    assert bench_gpu.main(["--render", *map(str, paths), "--out", str(out)]) == 0
    merged = json.loads((out / "gpu.json").read_text())
    assert list(merged["steps"]) == ["parity", "fit", "baseline"]  # the check's order, not the runs'
    assert merged["steps"]["parity"]["result"]["failed"] == 0 and merged["steps"]["parity"]["run"] == rerun["started_utc"]
    assert merged["steps"]["fit"] == dict(first["steps"]["fit"], run=first["started_utc"])
    assert merged["wall_s"] == 15.0 and [r["steps"] for r in merged["runs"]] == [["fit", "baseline", "parity"], ["parity"]]
    assert merged["summary"] == first["summary"]
    md = (out / "gpu.md").read_text()
    assert "2 runs, each step from the last run that has it" in md and "11 passed, 0 failed" in md
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(dict(rerun, mode="tiny")))
    assert bench_gpu.main(["--render", str(paths[0]), str(tiny), "--out", str(out)]) == 2
    assert "cannot merge runs of different modes" in capsys.readouterr().err


def test_the_kernel_setting_chosen_is_the_fastest_correct_one_at_the_first_shape():
    from gaussianvision.apps.bench import gpu_kernels
    from gaussianvision.raster import gpu_triton
    settings = ({"name": "a"}, {"name": "b", "BLOCK_N_BWD": 16}, {"name": "c", "TILE": 8})
    row = lambda name, b, n, ms, ok=True: {"setting": name, "batch": b, "n": n, "forward_backward_ms": ms, "ok": ok,
                                           "forward_ms": ms / 3, "backward_ms": 2 * ms / 3, "max_rel_error": 1e-6,
                                           "us_per_image_iteration": 1e3 * ms / b}
    step = {"rows": [row("a", 1024, 400, 10.0), row("b", 1024, 400, 8.0), row("c", 1024, 400, 5.0, ok=False),
                     {"setting": "d", "batch": 1024, "n": 400, "error": "CompilationError: x"},
                     row("a", 256, 3136, 1.0), row("b", 256, 3136, 9.0), dict(row("b", 2048, 400, 4.0), size=112)]}
    assert gpu_kernels.best_setting(step, settings) == {"name": "b", "BLOCK_N_BWD": 16}  # c is faster but wrong
    assert gpu_kernels.best_setting({"rows": [row("c", 1, 1, 1.0, ok=False)]}, settings) is None
    before = gpu_kernels.apply_setting({"name": "b", "BLOCK_N_BWD": 16, "BWD_KERNEL": "tile"})
    try:
        assert (gpu_triton.BLOCK_N_BWD, gpu_triton.BWD_KERNEL) == (16, "tile")
    finally:
        gpu_kernels.apply_setting(before)
    assert (gpu_triton.BLOCK_N_BWD, gpu_triton.BWD_KERNEL) == (8, "chunked")
    with pytest.raises(ValueError, match=r"unknown raster setting\(s\) \['WARPS'\]"):
        gpu_kernels.apply_setting({"name": "x", "WARPS": 2})
    md = gpu_report._kernels(dict(step, status="ok", best=settings[1]))
    text = "\n".join(md)
    assert "| 1024 | 400 | - | **b** (chosen) | " in text and "| 256 | 3136 | - | b |" in text  # marked at the first shape only
    assert "| 2048 | 400 | 112 | b |" in text
    assert "(wrong: never chosen)" in text and "CompilationError: x" in text and "1.25x" in text


def test_a_kernels_step_cut_short_still_chooses_and_steps_run_in_the_checks_order(monkeypatch, tmp_path):
    """The choice is kept after every row, so a step stopped by its time limit (or killed) still
    passes one on; steps named out of order run in the check's order (kernels before its users);
    a step's deadline counts from its launch by the parent."""
    import time
    from gaussianvision.apps.bench import gpu_kernels
    rows = iter([3.0, 2.0])
    monkeypatch.setattr(gpu_kernels, "_row", lambda s, b, n, size, cfg, device: {
        "setting": s["name"], "batch": b, "n": n, "size": size, "ok": True, "forward_ms": 1.0, "backward_ms": 1.0,
        "forward_backward_ms": next(rows), "max_rel_error": 0.0, "us_per_image_iteration": 1.0})
    ticks = [0.0, 1.0, 100.0]  # the third setting finds the deadline passed
    clock = lambda: ticks.pop(0) if len(ticks) > 1 else ticks[0]  # noqa: E731
    monkeypatch.setattr(gpu_kernels, "time", SimpleNamespace(monotonic=clock))  # this module's clock only
    monkeypatch.setattr(gpu_steps, "deadline", lambda cfg: 50.0)
    rec = gpu_steps.Recorder(tmp_path / "kernels.json")
    settings = [{"name": "a"}, {"name": "b", "BLOCK_N": 4}, {"name": "c"}]
    cfg = {"device": "cpu", "size": 32, "kernel_rows": [[2, 16]], "kernel_settings": settings}
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gpu_kernels.step_kernels(cfg, rec)
    assert [r["setting"] for r in rec.data["rows"]] == ["a", "b"] and "before c" in rec.data["cut_short"]
    assert rec.data["best"] == {"name": "b", "BLOCK_N": 4}
    cfg = gpu_check.with_steps(GpuCheckConfig(), ("fit", "kernels", "parity", "fit"))
    assert cfg.steps == ("parity", "kernels", "fit")
    monkeypatch.undo()
    started = time.time() - 30.0  # launched 30 s ago with a 100 s limit and a 10 s margin: 60 s left
    left = gpu_steps.deadline({"started_at": started, "limit_s": 100.0, "margin_s": 10.0}) - time.monotonic()
    assert 59.0 < left <= 60.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(capsys):
    """Regression (trial 7): --device cuda was accepted on a CPU machine, every step skipped, exit 0."""
    assert bench_gpu.main(["--tiny", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv bench gpu: --device cuda: CUDA is not available") and "\n" not in err
