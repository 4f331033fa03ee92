"""gsv bench fit's options: nonsense refused up front in one line (exit code 2, nothing written), results only
inside --out, checkpoints in order, signed numbers printed once signed."""
import json

import pytest

from gaussianvision.apps.cli.main import main


def _rc(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors
        return e.code


BAD = [  # regressions (new-user trial): tracebacks, or runs that printed misleading text
    (["--sections", "curves", "--backend", "foo"], "--backend foo: unknown render backend 'foo'"),
    (["--photos", "0"], "argument --photos: must be >= 1, got 0"),
    (["--photos", "100"], "--photos 100: there are 8 bundled photos"),
    (["--sections", "speed", "--speed-images", "0"], "argument --speed-images: must be >= 1, got 0"),
    (["--sections", "speed", "--speed-images", "-1"], "argument --speed-images: must be >= 1, got -1"),
    (["--sections", "naive", "--naive-iters", "0"], "argument --naive-iters: must be >= 1, got 0"),
    (["--sections", "naive", "--naive-iters", "-1"], "argument --naive-iters: must be >= 1, got -1"),
    (["--sections", "pruning", "--prune-n", "0", "--prune-iters", "3"], "argument --prune-n: must be >= 1, got 0"),
    (["--sections", "pruning", "--prune-n", "50", "--prune-iters", "3", "--prune-finetune", "-1"],
     "argument --prune-finetune: must be >= 0, got -1"),
    (["--sections", "kodak", "--kodak-limit", "1", "--kodak-iters", "-2"], "argument --kodak-iters: must be >= 0, got -2"),
    (["--sections", "kodak", "--kodak-limit", "0"], "argument --kodak-limit: must be >= 1, got 0"),
    (["--ns", "60000"], "--ns 60000 is more than the 224x224 images' 50176 pixels"),
    (["--sections", "pruning", "--prune-n", "60000"], "--prune-n 60000 is more than the 224x224 images' 50176 pixels"),
    (["--sections", "curves", "--checkpoints", "0"], "--checkpoints 0: the last must be >= 1"),
    (["--name", "/tmp/x/abs"], "argument --name: expected a plain file name"),
    (["--name", "../esc/rel"], "argument --name: expected a plain file name"),
    (["--name", ".."], "argument --name: expected a plain file name"),
    (["--name", "."], "argument --name: expected a plain file name"),
    (["--name", ".json"], "argument --name: expected a plain file name"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_nonsense_is_one_line_and_nothing_runs(tmp_path, capsys, monkeypatch, argv, message):
    from gaussianvision.apps.cli import bench_fit

    def never(*a, **k):
        raise AssertionError("the benchmark ran")
    monkeypatch.setattr(bench_fit, "run_fit_bench", never)
    out = tmp_path / "o"
    assert _rc(["bench", "fit", "--out", str(out), "--ns", "50", "--photos", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_checkpoints_are_sorted_and_results_stay_in_out(tmp_path, capsys):
    """Regression (new-user trial): --checkpoints 5,2 printed the columns unsorted; --name cp.json wrote
    cp.json.json."""
    out = tmp_path / "o"
    assert main(["bench", "fit", "--out", str(out), "--sections", "curves", "--ns", "16", "--photos", "1",
                 "--inits", "grid", "--checkpoints", "5,2,5", "--backend", "reference", "--name", "cp.json"]) == 0
    said = capsys.readouterr().out
    res = json.loads((out / "cp.json").read_text())
    assert res["config"]["checkpoints"] == [2, 5] and list(res["curves"][0]["psnr"]) == ["2", "5"]
    assert "| N, init | it 2 | it 5 |" in (out / "cp.md").read_text()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cp.json", "cp.md", "o"]
    assert "fp16 --" not in said and " fp16 " in said


def test_signed_numbers_carry_one_sign():
    """Regression: the log read "fp16 --0.000 dB" for a float16 round trip that gained a little."""
    from gaussianvision.apps.bench.fit import signed
    assert [signed(v) for v in (-0.0001, 0.0001, 0.0123, -0.004, 0.0)] == ["0.000", "0.000", "+0.012", "-0.004",
                                                                           "0.000"]
    assert signed(-1.26, 1) == "-1.3"


def test_a_result_file_suffix_given_with_name_is_dropped():
    from gaussianvision.apps.cli.bench_args import file_name
    assert [file_name(t) for t in ("x.json", "x.json.md", "x.MD", "run.v2")] == ["x", "x", "x", "run.v2"]
