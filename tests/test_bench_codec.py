"""gsv bench codec: more Gaussians than pixels is one line before any fit."""
import pytest


@pytest.mark.parametrize("argv,message", [
    (["--size", "16", "--n", "1000"], "--n 1000 is more than the 16x16 images' 256 pixels (--size 16)"),
    (["--n", "100,10000"], "--n 10000 is more than the 96x96 images' 9216 pixels (the default size, 96)"),
])
def test_more_gaussians_than_pixels_is_one_line(tmp_path, capsys, monkeypatch, argv, message):
    """Regression (new-user trial): --quick --size 16 --n 1000 was a ValueError traceback from the fit."""
    from gaussianvision.apps.bench import codec
    from gaussianvision.apps.cli.main import main

    def never(*a, **k):
        raise AssertionError("the benchmark ran")
    monkeypatch.setattr(codec, "run_codec_bench", never)
    out = tmp_path / "o"
    assert main(["bench", "codec", "--quick", "--iters", "3", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()
