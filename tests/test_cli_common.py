"""The CLI's shared behaviour (issue 18): help with defaults for every command, JSON errors."""
import json

import pytest

from gaussianvision.apps.cli.main import COMMANDS, main as gsv


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        gsv([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv, default", [
    (["fit"], "(default: "),
    (["convert"], "(default: "),
    (["train"], "(default: 0.1)"),  # --weight-decay; --lr comes from the data (train/recipe.py)
    (["render"], "(default: "),
    (["eval", "zeroshot"], "(default: 64)"),
    (["bench", "fit"], "(default: "),
    (["bench", "codec"], "(default: auto)"),
])
def test_help_shows_defaults(capsys, argv, default):
    assert default in _help(capsys, *argv)


def test_help_default_for_options_without_help_text(capsys):
    out = _help(capsys, "eval", "zeroshot")
    block = out[out.index("  --num-workers"):out.index("  --device")]
    assert "(default: 0)" in block  # a default of 0 and no help text: still shown


def test_top_level_help_names_the_rgb_stage(capsys):
    assert gsv(["--help"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("train"))
    assert "1, 2 or rgb" in line
    assert set(COMMANDS) >= {"train", "eval", "bench"}


def test_bench_all_help_is_the_suites_help(capsys):
    assert gsv(["bench", "all", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gsv bench SUITE") and "suites:" in out and "gsv bench fit" not in out


def test_eval_help_describes_subcommands_models_and_example(capsys):
    assert gsv(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) >= 8
    for text in ("zeroshot", "rgb:ARCH[:PRETRAINED]", "gs:DIR", "example", "gsv eval zeroshot --model"):
        assert text in out, text


def _rc(argv) -> int:
    try:
        return gsv(argv)
    except SystemExit as e:  # argparse's errors
        return e.code


def _json_error(capsys, argv, command):
    assert _rc(argv) == 2
    cap = capsys.readouterr()
    d = json.loads(cap.out)
    assert set(d) == {"error", "command"} and d["command"] == command and d["error"]
    assert "\n" not in d["error"] and "Traceback" not in cap.err
    return d["error"]


def test_json_error_from_the_command(tmp_path, capsys):
    (tmp_path / "bad.gsv").write_bytes(b"nope")
    err = _json_error(capsys, ["info", str(tmp_path / "bad.gsv"), "--json"], "gsv info")
    assert "too short" in err


def test_json_error_eval_and_model(tmp_path, capsys):
    err = _json_error(capsys, ["eval", "zeroshot", "--model", "rgb:gsv-tiny", "--json", "--out", str(tmp_path)],
                      "gsv eval")
    assert "--dataset" in err
    assert "no-such-config" in _json_error(capsys, ["model", "info", "no-such-config", "--json"], "gsv model")


def test_json_error_from_option_parsing(tmp_path, capsys):
    err = _json_error(capsys, ["fit", str(tmp_path), "--gaussians", "abc", "--json"], "gsv fit")
    assert "--gaussians" in err and "abc" in err


def test_plain_errors_stay_plain(tmp_path, capsys):
    (tmp_path / "bad.gsv").write_bytes(b"nope")
    assert gsv(["info", str(tmp_path / "bad.gsv")]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("gsv info: ")


def test_json_error_for_unknown_command_suite_and_evaluation(capsys):
    assert "frobnicate" in _json_error(capsys, ["frobnicate", "--json"], "gsv")
    assert "nosuch" in _json_error(capsys, ["bench", "nosuch", "--json"], "gsv bench")
    assert "nosuch" in _json_error(capsys, ["eval", "nosuch", "--json"], "gsv eval")


@pytest.mark.parametrize("argv", [["info", "x.gsv", "--jsn"], ["fit", "a.png", "--gaussians", "abc"], ["fit"]])
def test_option_errors_are_one_line_without_the_usage_block(argv, capsys):
    from gaussianvision.apps.cli.main import main
    with pytest.raises(SystemExit) as e:  # argparse exits; the gsv script turns it into the exit code
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gsv {argv[0]}: ") and "usage:" not in err


def test_python_dash_m_runs_the_gsv_command():
    """Regression (new-user trial): the README's `main(argv)` in gaussianvision.apps.cli, but `python -m
    gaussianvision.apps.cli` had no __main__; it is the gsv command, its bench line naming every suite."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "gaussianvision.apps.cli", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: gsv COMMAND"), out.stderr
    assert "benchmarks: fit, load, codec, model, gpu, wire, serve" in out.stdout
