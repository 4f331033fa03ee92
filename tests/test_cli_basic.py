import json

import pytest
import torch

from conftest import random_splats
from gaussianvision.cli.main import main as gsv
from gaussianvision.splats import save


def test_help_and_unknown(capsys):
    assert gsv([]) == 0 and "commands:" in capsys.readouterr().out
    assert gsv(["frobnicate"]) == 2


def test_info_json(tmp_path, capsys):
    s = random_splats(1, 400, 224, 224)
    save(tmp_path / "a.gsv", s)
    assert gsv(["info", str(tmp_path / "a.gsv"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_gaussians"] == 400 and d["bytes_per_gaussian"] == 16.0
    assert d["compression_ratio_payload"] == pytest.approx(23.52, abs=0.005)
    assert d["bytes"] == 32 + 6400


def test_info_bad_file_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "bad.gsv").write_bytes(b"nope")
    assert gsv(["info", str(tmp_path / "bad.gsv")]) == 2
    err = capsys.readouterr().err
    assert "bad.gsv" in err and "too short" in err and "Traceback" not in err


def test_render_scale(tmp_path, capsys):
    s = random_splats(1, 10, 12, 16)
    save(tmp_path / "a.gsv", s)
    assert gsv(["render", str(tmp_path / "a.gsv"), "--out", str(tmp_path / "a.png"), "--scale", "2",
                "--json", "--backend", "reference"]) == 0
    d = json.loads(capsys.readouterr().out)
    from PIL import Image
    assert Image.open(tmp_path / "a.png").size == (32, 24) and d["height"] == 24
