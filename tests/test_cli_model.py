"""gsv model info and gsv bench model, called through main(argv)."""
import json

import pytest
import torch

from gaussianvision.apps.cli.main import main as gsv
from gaussianvision.models import parameter_report


def _info(capsys, *args):
    assert gsv(["model", "info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_model_info_json_keys_and_vit_b16_fraction(capsys):
    for cfg, tokens in (("gs-196", 196), ("gs-98", 98)):
        d = _info(capsys, cfg)
        assert {"total", "trainable", "trainable_fraction", "parts"} <= set(d)
        assert d["base_total"] == 149_620_737 and d["base"] == "ViT-B-16"
        assert d["config"]["resampler"]["num_latents"] == tokens
        assert sum(p["params"] for p in d["parts"].values()) == d["total"]
        assert sum(p["trainable"] for p in d["parts"].values()) == d["trainable"]
        assert d["trainable_fraction"] == pytest.approx(d["trainable"] / d["total"])
        assert 0.097 <= d["trainable_fraction"] <= 0.138
        assert d["parts"]["vision.blocks (shared)"]["trainable"] == 0 and d["parts"]["text"]["trainable"] == 0


def test_model_info_matches_a_real_model_and_table(capsys):
    from gaussianvision.models import create_gsclip, parameter_report
    d = _info(capsys, "gs-tiny")
    real = parameter_report(create_gsclip(config="gs-tiny"))
    assert d["total"] == real["total"] and d["trainable"] == real["trainable"] and d["parts"] == real["parts"]
    assert gsv(["model", "info", "gs-tiny"]) == 0
    out = capsys.readouterr().out
    assert "trainable fraction" in out and f"{real['total']:,}" in out


def test_model_info_base_override_json_file_and_checkpoint(tmp_path, capsys):
    from gaussianvision.models import create_gsclip, save_weights
    cfg = tmp_path / "mine.json"
    cfg.write_text(json.dumps({"name": "mine", "base": "ViT-B-16", "resampler": {"num_latents": 7, "layers": 1}}))
    d = _info(capsys, str(cfg), "--base", "gsv-tiny")
    assert d["base"] == "gsv-tiny" and d["parts"]["gs.cls_pos"]["params"] == (1 + 1 + 7) * 64
    ck = save_weights(create_gsclip(config="gs-tiny"), tmp_path / "m.safetensors")
    d = _info(capsys, str(ck))
    assert d["base"] == "gsv-tiny" and d["config"]["name"] == "gs-tiny"
    assert gsv(["model", "info", " "]) == 2  # regression (new-user trial): ': a folder, but not a gsv train ...'
    assert capsys.readouterr().err.strip() == ("gsv model: give a config name, a JSON file, a .safetensors checkpoint "
                                               "or a `gsv train` output folder (empty)")
    # regression (new-user trial): a checkpoint described on a base its weights cannot load into, silently
    assert gsv(["model", "info", str(ck), "--base", "ViT-B-16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gsv model: {ck}: its weights were trained on gsv-tiny (width 64, embedding 64); --base ViT-B-16 "
                   "has width 768, embedding 512: they cannot load into it"), err


def test_model_info_reads_a_train_output_folder(tmp_path, capsys):
    """Regression: eval / serve / probe take a `gsv train` folder; model info said 'not a shipped config'."""
    from gaussianvision.models import create_gsclip
    from gaussianvision.train.checkpoint import save_checkpoint
    model = create_gsclip(config={"base": "gsv-tiny", "resampler": {"num_latents": 7, "layers": 1}})
    task = {"stage": "2", "base": "gsv-tiny", "model_config": model.gs_config}
    save_checkpoint(tmp_path / "run", 1, model, {"optimizer": {}}, {"task": task, "data_positions": [[0, 1]]})
    d = _info(capsys, str(tmp_path / "run"))
    assert d["base"] == "gsv-tiny" and d["config"]["resampler"]["num_latents"] == 7
    assert gsv(["model", "info", str(tmp_path / "run"), "--base", "ViT-B-16"]) == 2  # review: a folder went unchecked
    assert "its weights were trained on gsv-tiny (width 64" in capsys.readouterr().err
    assert d["trainable"] == parameter_report(model)["trainable"]
    (tmp_path / "empty").mkdir()
    assert gsv(["model", "info", str(tmp_path / "empty")]) == 2
    assert "not a `gsv train` output folder (no checkpoint in it)" in capsys.readouterr().err
    from gaussianvision.models import save_weights  # regression (new-user trial): the file inside went unnamed
    ck = save_weights(model, tmp_path / "empty" / "gsclip.safetensors")
    assert gsv(["model", "info", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"(no checkpoint in it); give the weights file inside it ({ck})")
    state = next((tmp_path / "run").rglob("state.json"))  # damaged: the checkpoint's own reader names it
    state.write_text("{not json")
    assert gsv(["model", "info", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(state) in err and "not valid JSON" in err, err


def test_model_info_errors_are_one_line(capsys):
    assert gsv(["model", "info", "gs-nope"]) == 2
    err = capsys.readouterr().err
    assert "gs-nope" in err and "not a shipped config" in err and "Traceback" not in err
    assert gsv(["model", "info", "gs-tiny", "--base", "ViT-Q-99"]) == 2
    assert "unknown OpenCLIP architecture" in capsys.readouterr().err
    assert gsv(["model", "info", "gs-tiny", "--base", "gsv-tiny:openai"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pretrained tag 'openai'" in err and "Available" not in err, err


def test_bench_model_quick_on_tiny_base(tmp_path, capsys):
    torch.manual_seed(0)
    rc = gsv(["bench", "model", "--quick", "--json", "--out", str(tmp_path), "--base", "gsv-tiny",
              "--configs", "gs-tiny", "--n", "5,50", "--batch", "1", "--repeats", "1"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "model_quick.json").read_text())
    assert saved["rows"] == d["rows"] and (tmp_path / "model_quick.md").is_file()
    rgb, gs5, gs50 = d["rows"]
    assert rgb["tower"] == "RGB gsv-tiny" and rgb["tokens"] == 64
    # known answer, 2 FLOPs per multiply-add: patch conv 64*192*64, per block (65 tokens, width
    # 64) qkv 3*64^2*65 + out 64^2*65 + MLP 8*64^2*65 + attention 2*65^2*64, 2 blocks, proj 64*64
    block = 3 * 64 ** 2 * 65 + 64 ** 2 * 65 + 8 * 64 ** 2 * 65 + 2 * 65 ** 2 * 64
    assert rgb["flops_per_image"] == 2 * (64 * 192 * 64 + 2 * block + 64 * 64)
    assert gs5["n_gaussians"] == 5 and gs50["n_gaussians"] == 50 and gs5["tokens"] == 32
    # the stem and resampler cost grows with N, the frozen blocks' cost does not
    assert gs50["embed_flops_per_image"] > gs5["embed_flops_per_image"] > 0
    assert (gs50["flops_per_image"] - gs50["embed_flops_per_image"]
            == gs5["flops_per_image"] - gs5["embed_flops_per_image"])
    assert set(gs5["latency_s"]) == {"1"} and all(v > 0 for v in gs5["latency_s"].values())
    with pytest.raises(SystemExit) as e:  # argparse's option error, one line
        gsv(["bench", "model", "--n", "0", "--out", str(tmp_path)])
    assert e.value.code == 2
