import json

import pytest
import torch

from conftest import random_splats
from gaussianvision.apps.cli.main import main as gsv
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


def _sparse_batch_file(path, b=65536, n=2000):
    """A valid float16 file of b images whose count table gives image 0 all n Gaussians."""
    import struct
    import numpy as np
    from gaussianvision.splats import encode
    one = encode(random_splats(1, n, 16, 16, seed=3))
    counts = np.zeros(b, dtype="<u4")
    counts[0] = n
    head = struct.pack("<4sHHHHIIIII", b"GSVF", 1, 1, 1, 0, 16, 16, b, n, 16 * n)
    path.write_bytes(head + counts.tobytes() + one[32:])


def test_info_reads_a_sparse_batch_without_padding(tmp_path, capsys):
    _sparse_batch_file(tmp_path / "sparse.gsv")  # padded, it would be 65536 x 2000 rows (4 GiB)
    assert gsv(["info", str(tmp_path / "sparse.gsv"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_images"] == 65536 and d["counts"][:2] == [2000, 0] and len(d["counts"]) == 65536
    assert d["n_gaussians"] == 2000 and len(d["means"]["min"]) == 2
    assert gsv(["info", str(tmp_path / "sparse.gsv")]) == 0
    out = capsys.readouterr().out
    assert "65536 images" in out and len(out) < 4000


def test_render_and_show_read_a_sparse_batch_image_by_image(tmp_path, capsys):
    _sparse_batch_file(tmp_path / "sparse.gsv", b=200, n=400)  # past decode's padding limit
    assert gsv(["render", str(tmp_path / "sparse.gsv"), "--out", str(tmp_path / "r" / "r.png"), "--json",
                "--backend", "reference"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["outputs"]) == 200 and len(list((tmp_path / "r").iterdir())) == 200
    assert gsv(["show", str(tmp_path / "sparse.gsv"), "--out", str(tmp_path / "s.png"), "--json",
                "--backend", "reference"]) == 0
    assert json.loads(capsys.readouterr().out)["n_gaussians"] == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.png", "sparse.gsv"]
