"""gsv bench serve: a tiny model for about a second per batching window with 2 clients."""
import json

import pytest
import torch

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from safetensors.torch import save_file
    from gaussianvision.models import create_gsclip, save_weights
    from gaussianvision.models.gsclip import create_base
    d = tmp_path_factory.mktemp("serve-bench-model")
    torch.manual_seed(0)
    save_file(create_base("gsv-tiny").state_dict(), str(d / "base.safetensors"))
    return save_weights(create_gsclip(pretrained=d / "base.safetensors", config="gs-tiny"), d / "gsclip.safetensors")


def test_load_test_reports_throughput_latency_and_batches(tiny_model, tmp_path, capsys):
    from gaussianvision.apps.cli.main import main
    out = tmp_path / "res"
    rc = main(["bench", "serve", "--model", str(tiny_model), "--out", str(out), "--clients", "2", "--seconds", "1",
               "--windows", "0,5", "--size", "32", "--gaussians", "16", "--device", "cpu", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["batch_window_ms"] for r in res["rows"]] == [0.0, 5.0]
    assert res["payload_bytes"] and all(b == 32 + 16 * 16 for b in res["payload_bytes"])
    for r in res["rows"]:
        assert r["errors"] == 0 and r["requests"] > 0 and r["requests_per_s"] > 0 and r["clients"] == 2
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        b = r["batches"]
        assert b["forwards"] > 0 and 1 <= b["mean_images"] <= b["max"] <= 2  # 2 clients, one image each
        assert r["server_latency_ms"]["count"] > 0 and r["rejects"] == {}
    assert res["rows"][0]["requests_per_s_vs_first"] == 1.0
    assert {"load_average_1_5_15", "cpus", "platform"} <= set(res["env"])
    md = (out / "serve.md").read_text()
    assert "| batch window | requests/s |" in md and "| 0 ms |" in md and "| 5 ms |" in md


def test_missing_model_is_one_line(tmp_path, capsys):
    from gaussianvision.apps.cli.main import main
    assert main(["bench", "serve", "--demo", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run gsv demo first" in err


def _rc(argv) -> int:
    from gaussianvision.apps.cli.main import main
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors
        return e.code


@pytest.mark.parametrize("argv,message", [
    (["--clients", "0"], "argument --clients: must be >= 1, got 0"),  # trial 7: 0 was taken as not given
    (["--seconds", "0"], "argument --seconds: must be a positive number, got 0"),
    (["--seconds", "inf"], "argument --seconds: must be a positive number, got inf"),  # accepted, never ended
    (["--seconds", "nan"], "argument --seconds: must be a positive number, got nan"),
    (["--seconds", "1", "--device", "foo"], "--device foo: expected cpu, cuda or cuda:N"),  # a traceback
    (["--seconds", "1", "--windows", "100000"], "--windows must be milliseconds from 0 to 10000, got '100000'"),
    (["--seconds", "1", "--windows", "0,nan"], "--windows must be milliseconds from 0 to 10000, got '0,nan'"),
    (["--seconds", "1", "--gaussians", "1025"], "--gaussians 1025 is more than the 32x32 images' 1024 pixels"),
    (["--seconds", "1", "--size", "8"], "argument --size: must be from 11 to 2048, got 8"),
    (["--seconds", "1", "--max-batch", "0"], "argument --max-batch: must be >= 1, got 0"),
])
def test_bad_options_are_one_line_before_any_work(tiny_model, tmp_path, capsys, monkeypatch, argv, message):
    """Regression (new-user trial): --seconds inf ran for ever; a bad --device or --windows was a traceback."""
    from gaussianvision.apps.bench import serve

    def never(*a, **k):
        raise AssertionError("the load test ran")
    monkeypatch.setattr(serve, "fit_payloads", never)
    out = tmp_path / "out"
    assert _rc(["bench", "serve", "--model", str(tiny_model), "--out", str(out), "--size", "32", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--sections", "bogus"], "--sections: unknown bogus; choose from ttq"),
    (["--sections", "curves", "--inits", "bogus"], "--inits: unknown bogus; choose from grid"),
    (["--sections", "pruning", "--prune-fractions", "1.5"], "--prune-fractions: expected numbers from 0 to 1"),
])
def test_bench_fit_refuses_bad_sections_inits_and_fractions_up_front(tmp_path, capsys, argv, message):
    """Regression (trial 7): --sections bogus ran nothing and exited 0 saying it wrote results; a bad --inits or
    --prune-fractions was a traceback at its section, after the sections before it had run."""
    from gaussianvision.apps.cli.main import main
    assert main(["bench", "fit", "--quick", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "o").exists()


def test_payloads_take_the_demo_model_s_gaussians(tmp_path):
    """Regression (trial 7): a `gsv demo --quick` model (stage2_n64) was load-tested with N=76 payloads; the
    largest N is picked by number, not by name."""
    from gaussianvision.apps.cli.bench_serve import _gaussians, _model
    assert _gaussians(None, str(tmp_path / "stage2_n64")) == 64 and _gaussians(16, str(tmp_path / "stage2_n64")) == 16
    assert _gaussians(None, str(tmp_path / "gsclip.safetensors")) == 76
    for n in (76, 100):
        (tmp_path / f"stage2_n{n}").mkdir()
        (tmp_path / f"stage2_n{n}" / "gsclip.safetensors").write_bytes(b"")
    assert _model(None, tmp_path) == str(tmp_path / "stage2_n100")
