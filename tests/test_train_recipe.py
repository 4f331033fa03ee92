"""gsv train's defaults that scale with the data (train/recipe.py): known values of the rules,
the CLI filling what is not given and never overriding what is."""
from __future__ import annotations

import json

import pytest

from gaussianvision.train.recipe import RECIPES, epochs_for, lr_for, warmup_steps

pytest.importorskip("open_clip")


def test_length_is_samples_to_see_within_epoch_bounds():
    assert epochs_for("1", 2400) == 64.0                 # 153,600 / 2,400
    assert epochs_for("1", 12_800_000) == 2              # the paper's two epochs at DataComp scale
    assert epochs_for("1", 1000) == 100                  # bounded above
    assert epochs_for("rgb", 4096) == 10.0 and epochs_for("rgb", 10**7) == 1
    assert epochs_for("2", 2400) == epochs_for("2", 10**7) == 2
    with pytest.raises(ValueError, match="no sample"):
        epochs_for("1", 0)
    with pytest.raises(ValueError, match="no training recipe"):
        epochs_for("3", 10)


def test_lr_moves_from_the_small_data_rate_to_the_large_data_rate():
    for stage, r in RECIPES.items():
        assert lr_for(stage, 10) == lr_for(stage, 6250) == pytest.approx(r.lr_small)
        assert lr_for(stage, 100_000) == lr_for(stage, 12_800_000) == pytest.approx(r.lr_large)
        # halfway in log(sqrt(N)) between 6,250 and 100,000 (N = 25,000): the geometric mean
        assert lr_for(stage, 25_000) == pytest.approx((r.lr_small * r.lr_large) ** 0.5)
        rates = [lr_for(stage, n) for n in (1000, 5000, 10_000, 30_000, 60_000, 200_000)]
        assert rates == sorted(rates, reverse=r.lr_small > r.lr_large)


def test_warmup_is_a_fraction_of_the_steps():
    assert warmup_steps(1200, 0.05) == 60 and warmup_steps(8, 0.05) == 0 and warmup_steps(10, 0.0) == 0
    with pytest.raises(ValueError):
        warmup_steps(10, 1.0)


def _train(argv, capsys):
    from gaussianvision.apps.cli.train import main
    assert main(argv + ["--no-progress", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_takes_what_is_not_given_from_the_recipe(train_shards, tmp_path, capsys):
    res = _train(["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(tmp_path / "a"),
                  "--batch-size", "4"], capsys)
    # 16 samples: 2 epochs of 4 batches, the small-data rate, 5% of 8 steps rounds to 0
    assert res["settings"] == {"samples": 16, "steps": 8, "epochs": 2, "batch_size": 4, "lr": pytest.approx(1e-4),
                               "warmup": 0, "from_recipe": ["epochs", "lr", "warmup"]}
    assert res["steps"] == res["total_steps"] == 8
    cfg = json.loads((tmp_path / "a" / "train_config.json").read_text())["train"]
    assert cfg["lr"] == pytest.approx(1e-4) and cfg["warmup"] == 0 and cfg["steps"] == 8


def test_the_recipe_line_names_what_the_recipe_chose_and_then_the_run(train_shards, tmp_path, capsys):
    """Regression (new-user trial): "warmup from the stage-1 recipe: 4 steps, batch 4, lr 0.003, warmup 2" read as if
    the steps, batch and lr came from the recipe too, and in memory it left out the samples."""
    from gaussianvision.apps.cli.train import main
    assert main(["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(tmp_path / "r"),
                 "--steps", "40", "--batch-size", "4", "--lr", "3e-3", "--in-memory", "--no-progress",
                 "--stop-after", "1"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "the stage-1 recipe" in x]
    assert line == "gsv train: from the stage-1 recipe: warmup 2 (5% of 40 steps); the run: 40 steps over 16 samples, " \
                   "batch 4, lr 0.003, warmup 2", line


def test_cli_keeps_explicit_settings(train_shards, tmp_path, capsys):
    res = _train(["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(tmp_path / "b"),
                  "--steps", "4", "--batch-size", "4", "--lr", "3e-3", "--warmup-fraction", "0.5"], capsys)
    assert res["settings"]["from_recipe"] == [] and res["settings"]["warmup"] == 2  # --warmup-fraction: the user's
    assert res["settings"]["lr"] == 3e-3 and res["settings"]["samples"] is None  # nothing needed the count
    cfg = json.loads((tmp_path / "b" / "train_config.json").read_text())["train"]
    assert (cfg["steps"], cfg["lr"], cfg["warmup"], cfg["batch_size"]) == (4, 3e-3, 2, 4)
    res = _train(["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(tmp_path / "c"),
                  "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--warmup", "1", "--in-memory"], capsys)
    assert res["settings"]["from_recipe"] == [] and res["total_steps"] == 2 and res["settings"]["warmup"] == 1


def test_demo_stages_without_settings_get_the_cli_recipe_and_given_ones_win():
    """The full demo's stages 1 and 2 give no length or rate: they get what `gsv train` would."""
    from gaussianvision.apps.demo.pipeline import SETTINGS, with_recipe
    full = SETTINGS["full"]
    n = full["convert"]["n_images"]
    for stage, key in (("1", "stage1"), ("2", "stage2")):
        s = with_recipe(stage, full[key], n)
        assert s["epochs"] == epochs_for(stage, n) and s["lr"] == lr_for(stage, n)
        assert s["batch"] == RECIPES[stage].batch_size
    assert with_recipe("1", full["stage1"], n)["epochs"] == pytest.approx(76.8)
    given = with_recipe("1", {"epochs": 3, "lr": 1e-3, "batch": 16}, n)
    assert (given["epochs"], given["lr"], given["batch"]) == (3, 1e-3, 16)
