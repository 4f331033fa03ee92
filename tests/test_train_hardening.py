"""Issue 18, checkpoints and trainer: nothing on disk runs code, resume never loses or repeats work,
damaged data is skipped and counted, bad options are one line with exit code 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch


pytest.importorskip("open_clip")
pytest.importorskip("safetensors")


def _gsv_train(argv):
    from gaussianvision.apps.cli.train import main
    return main(argv + ["--no-progress"])


def _common(data, out, steps=4):
    return ["--stage", "2", "--data", data, "--model-config", "gs-tiny", "--steps", str(steps),
            "--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--save-every", "1", "--out", str(out)]


def _ck(out, step):
    return Path(out) / "checkpoints" / f"step-{step:08d}"


class _Planted:
    """Unpickling this creates `path`: the proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------ 1. no code from the optimizer files
def test_planted_object_in_a_legacy_optimizer_pt_is_refused_and_never_runs(train_shards, tmp_path, capsys, monkeypatch,
                                                                           read_log):
    """New checkpoints hold no pickle. An optimizer.pt (older gsv) is read only with weights_only=True
    on torch >= 2.6 (CVE-2025-32434 before), and a planted object is refused; eval and --init-from
    never read the optimizer state at all."""
    from gaussianvision.eval.models import _load_gs
    from gaussianvision.train import optstate
    from gaussianvision.train.checkpoint import CheckpointError, load_checkpoint
    from gaussianvision.train.build import build_stage
    out, marker = tmp_path / "run", tmp_path / "pwned"
    assert _gsv_train(_common(train_shards, out, steps=3) + ["--stop-after", "2"]) == 0
    for f in ("optimizer.safetensors", "optimizer.json"):
        (_ck(out, 2) / f).unlink()
    torch.save({"optimizer": _Planted(marker)}, _ck(out, 2) / "optimizer.pt")
    with pytest.raises(CheckpointError, match=r"step-00000002/optimizer.pt: refused.*open"):
        load_checkpoint(_ck(out, 2), optimizer=True)
    with monkeypatch.context() as m:  # torch <= 2.5.1: weights_only is bypassable, so not even tried
        m.setattr(optstate, "_torch_version", lambda: (2, 5))
        with pytest.raises(CheckpointError, match=r"optimizer.pt: refused.*torch >= 2.6.*CVE-2025-32434"):
            load_checkpoint(_ck(out, 2), optimizer=True)
    state, weights, opt = load_checkpoint(out)  # eval and --init-from: the optimizer file is never read
    assert state["step"] == 2 and opt is None
    _load_gs(str(out), None, "cpu")  # gsv eval --model gs:OUT
    build_stage("2", init_from=str(out))  # gsv train --init-from OUT
    capsys.readouterr()
    assert _gsv_train(_common(train_shards, out, steps=3) + ["--resume"]) == 0  # falls back to step 1
    err = capsys.readouterr().err
    assert "step-00000002" in err and "refused" in err and "step-00000001" in err
    assert not marker.exists()
    assert [r["step"] for r in read_log(out)] == [1, 2, 3]
    # the planted file stays only in the refused directory, renamed aside; no new checkpoint writes a .pt
    assert [p.parent.name for p in (out / "checkpoints").glob("*/optimizer.pt")] == ["step-00000002.bad"]


def _stepped_adamw(fused):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[1].weight], "weight_decay": 0.1},
                             {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.98), fused=fused)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
    return model, opt


_SCALER = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}


def _assert_same_state(a: dict, b: dict):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k, v in a["state"][i].items():
            assert v.dtype == b["state"][i][k].dtype and torch.equal(v, b["state"][i][k]), (i, k)


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_state_round_trips_bit_identical_without_pickle(tmp_path, fused):
    from gaussianvision.train.checkpoint import load_checkpoint, save_checkpoint
    from gaussianvision.train.optstate import apply_optimizer_state
    model, opt = _stepped_adamw(fused)
    d = save_checkpoint(tmp_path, 3, model, {"optimizer": opt.state_dict(), "scaler": dict(_SCALER)},
                        {"data_positions": [[0, 3]]})
    assert sorted(p.name for p in d.iterdir()) == ["optimizer.json", "optimizer.safetensors", "state.json",
                                                   "weights.safetensors"]
    _, _, got = load_checkpoint(d, optimizer=True)
    assert got["scaler"] == _SCALER
    _assert_same_state(got["optimizer"], opt.state_dict())  # tuples (betas) come back as tuples
    model2, opt2 = _stepped_adamw(fused)
    opt2.zero_grad()
    model2(torch.randn(5, 3)).sum().backward()
    opt2.step()  # now different from opt
    model2.load_state_dict(model.state_dict())
    apply_optimizer_state(opt2, load_checkpoint(d, optimizer=True)[2]["optimizer"], str(d))
    _assert_same_state(opt2.state_dict(), opt.state_dict())
    x = torch.randn(5, 3)
    for m, o in ((model, opt), (model2, opt2)):  # the next step is the same, bit for bit
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


def test_a_legacy_optimizer_pt_is_still_read_on_a_safe_torch(tmp_path):
    from gaussianvision.train import optstate
    from gaussianvision.train.checkpoint import load_checkpoint, save_checkpoint
    if optstate._torch_version() < (2, 6):
        pytest.skip("legacy optimizer.pt is refused on torch < 2.6")
    model, opt = _stepped_adamw(False)
    d = save_checkpoint(tmp_path, 1, model, {"optimizer": opt.state_dict(), "scaler": None}, {"data_positions": [[0, 1]]})
    for f in ("optimizer.safetensors", "optimizer.json"):
        (d / f).unlink()
    torch.save({"optimizer": opt.state_dict(), "scaler": None}, d / "optimizer.pt")
    _assert_same_state(load_checkpoint(d, optimizer=True)[2]["optimizer"], opt.state_dict())


def _mutations(data: bytes, n: int, seed: int):
    """n deterministic damages of `data`: byte flips, truncations, zeroed and duplicated spans."""
    import random
    rng = random.Random(seed)
    for i in range(n):
        b = bytearray(data)
        kind = i % 4
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                j = rng.randrange(len(b))
                b[j] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b = b[:rng.randrange(len(b))]
        elif kind == 2:
            j = rng.randrange(len(b))
            b[j:j + rng.randint(1, 16)] = bytes(min(16, len(b) - j))
        else:
            j = rng.randrange(min(len(b), 200))  # headers: the safetensors JSON header, the JSON's keys
            b[j] = rng.randrange(256)
        yield bytes(b)


@pytest.mark.parametrize("name", ["optimizer.safetensors", "optimizer.json"])
def test_damaged_optimizer_files_load_or_raise_checkpoint_error_never_escape(tmp_path, name):
    """100 deterministic mutations of each optimizer file: every one either loads (and then applies to
    the optimizer or is refused as not matching) or is a CheckpointError; nothing else escapes."""
    from gaussianvision.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from gaussianvision.train.optstate import apply_optimizer_state
    model, opt = _stepped_adamw(False)
    d = save_checkpoint(tmp_path, 1, model, {"optimizer": opt.state_dict(), "scaler": dict(_SCALER)},
                        {"data_positions": [[0, 1]]})
    f = d / name
    good = f.read_bytes()
    outcomes = {"loaded": 0, "unreadable": 0, "mismatch": 0}
    for bad in _mutations(good, 100, seed=len(name)):
        f.write_bytes(bad)
        try:
            saved = load_checkpoint(d, optimizer=True)[2]["optimizer"]
        except CheckpointError as e:
            assert "unreadable" in str(e), e
            outcomes["unreadable"] += 1
            continue
        try:
            apply_optimizer_state(_stepped_adamw(False)[1], saved, str(d))
            outcomes["loaded"] += 1
        except CheckpointError as e:
            assert "does not match" in str(e), e
            outcomes["mismatch"] += 1
    f.write_bytes(good)
    assert outcomes["unreadable"] >= 30, outcomes  # damage is noticed, not only survived
    if name == "optimizer.safetensors":  # flips in the tensor data (past the header) still load
        start = 8 + int.from_bytes(good[:8], "little")
        for bad in _mutations(good[start:], 20, seed=1):
            f.write_bytes(good[:start] + bad.ljust(len(good) - start, b"\0")[:len(good) - start])
            apply_optimizer_state(_stepped_adamw(False)[1], load_checkpoint(d, optimizer=True)[2]["optimizer"], str(d))


_JSON_EDITS = [  # valid JSON that no longer describes AdamW's state: each a CheckpointError, not a KeyError later
    lambda d: d.pop("format"), lambda d: d.update(format="gsv-optimizer/9"), lambda d: d.pop("state"),
    lambda d: d.pop("param_groups"), lambda d: d["param_groups"][0].pop("betas"),
    lambda d: d["param_groups"][0].update(betas={"__tuple__": [0.9]}), lambda d: d["param_groups"][0].pop("lr"),
    lambda d: d["param_groups"][0].update(lr="0.001"), lambda d: d["param_groups"][1].update(params=[0, 3]),
    lambda d: d["param_groups"][0].update(params=[0, "1"]), lambda d: d["param_groups"].append(7),
    lambda d: d["state"].update({"9": {}}), lambda d: d["state"].update({"x": {}}), lambda d: d["scaler"].pop("scale"),
    lambda d: d.update(scaler=[1, 2]), lambda d: d.update(scaler={**{k: 1 for k in _SCALER}, "scale": True}),
]


@pytest.mark.parametrize("edit", range(len(_JSON_EDITS)))
def test_optimizer_json_that_parses_but_does_not_fit_is_unreadable(tmp_path, edit):
    from gaussianvision.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    model, opt = _stepped_adamw(False)
    d = save_checkpoint(tmp_path, 1, model, {"optimizer": opt.state_dict(), "scaler": dict(_SCALER)},
                        {"data_positions": [[0, 1]]})
    doc = json.loads((d / "optimizer.json").read_text())
    _JSON_EDITS[edit](doc)
    (d / "optimizer.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="optimizer.*: unreadable"):
        load_checkpoint(d, optimizer=True)


# ------------------------------------------------------------------ 2. resume uses the newest complete checkpoint
@pytest.mark.parametrize("damage", ["missing_dir", "no_state", "half_state", "cut_weights", "cut_optimizer",
                                    "cut_optimizer_json"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(train_shards, tmp_path, capsys, damage, read_log):
    out = tmp_path / "run"
    assert _gsv_train(_common(train_shards, out) + ["--stop-after", "3", "--keep", "2"]) == 0
    bad = _ck(out, 3)
    if damage == "missing_dir":
        shutil.rmtree(bad)
    elif damage == "no_state":
        (bad / "state.json").unlink()
    else:
        name = {"half_state": "state.json", "cut_weights": "weights.safetensors",
                "cut_optimizer": "optimizer.safetensors", "cut_optimizer_json": "optimizer.json"}
        f = bad / name[damage]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    logged = (out / "log.jsonl").read_text().splitlines(keepends=True)
    capsys.readouterr()
    assert _gsv_train(_common(train_shards, out) + ["--resume", "--keep", "2", "--json"]) == 0
    cap = capsys.readouterr()
    assert "step-00000003" in cap.err and "unusable" in cap.err and "step-00000002" in cap.err
    assert "starting fresh" not in cap.out
    assert [r["step"] for r in read_log(out)] == [1, 2, 3, 4]
    # resumed from step 2, not restarted: the lines of steps 1 and 2 are the very same bytes
    assert (out / "log.jsonl").read_text().splitlines(keepends=True)[:2] == logged[:2]
    moved = [] if damage == "missing_dir" else ["step-00000003.bad"]  # the damaged one, kept, renamed
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == \
        sorted(["step-00000003", "step-00000004"] + moved)
    assert all(m in cap.err and "renamed" in cap.err for m in moved)
    assert json.loads((_ck(out, 3) / "state.json").read_text())["step"] == 3  # rewritten, complete


def test_a_fallback_resume_sets_the_newer_directory_aside_and_latest_is_honoured(train_shards, tmp_path, capsys):
    """step-4's optimizer is cut; --resume falls back to step 2 and stops at 3: step-4 must not stay
    where `gsv eval gs:OUT` or --init-from would load its abandoned weights."""
    from gaussianvision.train.checkpoint import load_checkpoint
    out = tmp_path / "run"
    argv = _common(train_shards, out, steps=6)
    assert _gsv_train(argv + ["--stop-after", "4", "--save-every", "2", "--keep", "0"]) == 0
    f = _ck(out, 4) / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    capsys.readouterr()
    assert _gsv_train(argv + ["--resume", "--stop-after", "1", "--save-every", "2", "--keep", "0"]) == 0
    err = capsys.readouterr().err
    assert "step-00000004 -> step-00000004.bad" in err
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert not _ck(out, 4).exists() and (out / "checkpoints" / "step-00000004.bad" / "weights.safetensors").is_file()
    state, _, _ = load_checkpoint(out)  # what gsv eval and --init-from read
    assert state["step"] == 3
    # `latest` names the checkpoint to use when it is complete, even with a newer complete one beside it
    shutil.copytree(_ck(out, 3), _ck(out, 9))
    (out / "checkpoints" / "latest").write_text("step-00000002\n")
    assert load_checkpoint(out)[0]["path"] == str(_ck(out, 2))
    (out / "checkpoints" / "latest").write_text("step-00000007\n")  # missing: newest complete, with a warning
    capsys.readouterr()
    assert load_checkpoint(out)[0]["path"] == str(_ck(out, 9))
    assert "names step-00000007, which is missing" in capsys.readouterr().err


def test_an_out_folder_named_like_a_step_directory_is_a_run_folder(train_shards, tmp_path, capsys):
    from gaussianvision.train.checkpoint import load_checkpoint
    out = tmp_path / "step-2-ft"
    assert _gsv_train(_common(train_shards, out, steps=2)) == 0
    assert load_checkpoint(out)[0]["step"] == 2
    assert _gsv_train(_common(train_shards, out, steps=3)[:-2] + ["--out", str(out), "--steps", "2", "--resume"]) == 0


def test_resume_refuses_when_no_checkpoint_is_complete_and_deletes_nothing(train_shards, tmp_path, capsys, read_log):
    out = tmp_path / "run"
    assert _gsv_train(_common(train_shards, out) + ["--stop-after", "2", "--keep", "2"]) == 0
    for s in (1, 2):
        (_ck(out, s) / "state.json").unlink()
    capsys.readouterr()
    assert _gsv_train(_common(train_shards, out) + ["--resume", "--keep", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no complete checkpoint" in err and "step-00000002" in err
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-00000001", "step-00000002"]
    assert [r["step"] for r in read_log(out)] == [1, 2]  # nothing overwritten
    capsys.readouterr()
    assert _gsv_train(_common(train_shards, out)) == 2  # a fresh run does not take over the folder either
    assert "already holds a training run" in capsys.readouterr().err


def test_saving_an_older_step_never_deletes_newer_checkpoints(tmp_path):
    from gaussianvision.train.checkpoint import save_checkpoint
    model = torch.nn.Linear(2, 1)
    for s in (1, 2, 5):
        save_checkpoint(tmp_path, s, model, {"optimizer": {}}, {"data_positions": [[0, s]]}, keep=0)
    save_checkpoint(tmp_path, 3, model, {"optimizer": {}}, {"data_positions": [[0, 3]]}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == \
        ["step-00000002", "step-00000003", "step-00000005"]


def test_a_training_checkpoint_finds_its_base_file_after_the_runs_folder_moves(tmp_path):
    """state.json keeps the base checkpoint's absolute path and its path relative to the step folder:
    --init-from and gs:RUN find the base after the runs folder moves (the absolute path alone broke that)."""
    from gaussianvision.models.weights import resolve_base
    from gaussianvision.train.checkpoint import load_checkpoint, save_checkpoint
    base = tmp_path / "runs" / "teacher" / "open_clip_model.safetensors"
    base.parent.mkdir(parents=True)
    base.write_bytes(b"weights")
    save_checkpoint(tmp_path / "runs" / "s1", 1, torch.nn.Linear(2, 1), {"optimizer": {}},
                    {"task": {"stage": "1", "pretrained": str(base)}, "data_positions": [[0, 1]]})
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    state, _, _ = load_checkpoint(tmp_path / "moved" / "s1")
    t = state["task"]
    assert t["pretrained"] == str(base) and not base.exists()
    found = resolve_base(t["pretrained"], t["pretrained_rel"], state["path"])
    assert Path(found).resolve() == (tmp_path / "moved" / "teacher" / "open_clip_model.safetensors").resolve()
    save_checkpoint(tmp_path / "tag", 1, torch.nn.Linear(2, 1), {"optimizer": {}},
                    {"task": {"pretrained": "openai"}, "data_positions": [[0, 1]]})
    assert "pretrained_rel" not in load_checkpoint(tmp_path / "tag")[0]["task"]  # a tag: nothing to relate


# ------------------------------------------------------------------ 3. schedule and log on resume
def test_resume_refuses_a_different_step_count(train_shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert _gsv_train(_common(train_shards, out, steps=4) + ["--stop-after", "2"]) == 0
    capsys.readouterr()
    assert _gsv_train(_common(train_shards, out, steps=8) + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "steps was 4" in err and "now 8" in err
    assert not _ck(out, 3).exists()


def test_resume_drops_log_lines_after_the_checkpoint(train_shards, tmp_path, read_log):
    out = tmp_path / "run"
    assert _gsv_train(_common(train_shards, out) + ["--stop-after", "2"]) == 0
    with open(out / "log.jsonl", "a") as f:  # the run was killed after logging step 3, before its checkpoint
        f.write(json.dumps({"step": 3, "loss": -1.0}) + "\n" + '{"step": 4, "lo')
    assert _gsv_train(_common(train_shards, out) + ["--resume"]) == 0
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4] and log[2]["loss"] != -1.0


# ------------------------------------------------------------------ 4. damaged data: skip and count
@pytest.mark.parametrize("how", [["--steps", "3"], ["--steps", "3", "--in-memory"], ["--epochs", "1"]])
def test_truncated_shard_and_multi_image_samples_are_skipped_and_counted(tmp_path, capsys, how, write_splat_shards,
                                                                          write_multi_image_shard):
    root = tmp_path / "data"
    paths = write_splat_shards(root, n_samples=16, per_shard=8)
    raw = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(raw[: len(raw) // 2])
    write_multi_image_shard(root / "shard-0002.tar")
    argv = ["--stage", "1", "--data", str(root), "--model-config", "gs-tiny", "--out", str(tmp_path / "o"),
            "--batch-size", "4", "--json"] + how
    assert _gsv_train(argv) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out.strip().splitlines()[-1])
    # skipped: the multi-image sample m00003 and the sample the truncation cut partway (000012)
    assert res["steps"] == res["total_steps"] and res["damaged_shards"] == 1 and res["skipped_samples"] == 2
    assert "shard-0001.tar" in cap.err
    # and named (regression: counted only)
    named = json.loads((tmp_path / "o" / "skipped.json").read_text())
    assert res["skipped_file"] == str(tmp_path / "o" / "skipped.json")
    assert [n.rsplit(":", 1)[1] for n in named["skipped_samples"]] == ["000012", "m00003"], named
    assert [Path(u).name for u in named["damaged_shards"]] == ["shard-0001.tar"]


def test_reader_skips_a_sample_cut_by_the_damage_and_counts_it(tmp_path, write_splat_shards):
    """read_samples yields the sample the damage cut (flagged "__skipped__", its image lost) and then
    raises ShardDamage: the trainer's reader skips and counts that sample, never fails on it."""
    from gaussianvision.data.shards import read_samples
    from gaussianvision.train.batches import SHARD_ERRORS, SampleReader, count_samples
    paths = write_splat_shards(tmp_path, n_samples=8, per_shard=8)
    raw = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(raw[: len(raw) // 2])
    seen = []
    with pytest.raises(SHARD_ERRORS):
        for r in read_samples(paths[0]):
            seen.append(r)
    assert "__skipped__" in seen[-1] and "png" not in seen[-1]  # the premise: the cut sample lost its image
    reader = SampleReader(("splats", "image"), None)
    got = [s["key"] for s in reader(paths[0])]
    assert got == [r["__key__"] for r in seen[:-1]]
    assert reader.bad_samples == {(paths[0], seen[-1]["__key__"])} and list(reader.damaged) == [paths[0]]
    assert count_samples(paths) == len(seen) - 1


# ------------------------------------------------------------------ 5. one clear line, exit code 2
@pytest.mark.parametrize("option,value", [
    ("--batch-size", "0"), ("--steps", "0"), ("--epochs", "0"), ("--epochs", "nan"), ("--lr", "0"),
    ("--lr", "inf"), ("--min-lr", "-1"), ("--warmup", "-1"), ("--weight-decay", "-0.1"), ("--accum", "0"),
    ("--grad-clip", "-1"), ("--keep", "-1"), ("--log-every", "0"), ("--save-every", "-2"),
    ("--stop-after", "0"), ("--shuffle-buffer", "0"), ("--token-weight", "-1"), ("--hflip", "1.5"),
    ("--device", "tpu"),
])
def test_bad_numeric_options_are_one_line_and_exit_2(train_shards, tmp_path, capsys, option, value):
    out = tmp_path / "o"
    argv = ["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(out)]
    if option not in ("--steps", "--epochs"):
        argv += ["--steps", "1"]
    assert _gsv_train(argv + [option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"gsv train: {option}") and value in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(train_shards, tmp_path, capsys):
    argv = ["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(tmp_path / "o"),
            "--steps", "1", "--device", "cuda"]
    assert _gsv_train(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gsv train: --device cuda: CUDA is not available on this machine; use --device cpu"


def test_data_smaller_than_one_batch_is_one_line(train_shards, tmp_path, capsys):
    """Regression: the recipe's batch of 128 over 16 samples (or --steps with a batch of 32) ended in the loop's
    'no batch for a whole epoch' traceback; an empty shard in 'the data holds no sample'."""
    base = ["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(tmp_path / "r")]
    assert _gsv_train(base) == 2  # the recipe's batch: the samples are counted, the batch is checked up front
    err = capsys.readouterr().err.strip()
    assert "16 samples (counted, not yet read), fewer than one global batch of 128" in err
    assert "--batch-size 16 or less" in err
    assert len(err.splitlines()) == 1
    assert _gsv_train(base + ["--steps", "2", "--lr", "1e-3", "--batch-size", "32"]) == 2  # not counted: the loop says it
    err = capsys.readouterr().err.strip()
    assert "no full batch of 32 samples in a whole epoch" in err and "Traceback" not in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "000000.tar").write_bytes(b"")
    assert _gsv_train(base[:3] + [str(empty)] + base[4:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"gsv train: --data {empty}: no usable samples (the shards are empty or unreadable)", err


def test_shards_without_splats_are_named_before_the_batch_check(tmp_path, capsys):
    """Regression: image-text shards (no .gsv) given to stage 2 with the recipe's batch were called
    'fewer than one global batch'; the missing member is what is wrong, and is said first."""
    from gaussianvision.data.shards import ShardWriter
    from gaussianvision.data.loader import MissingMember
    from gaussianvision.train.batches import count_samples
    shard = tmp_path / "img" / "000000.tar"
    shard.parent.mkdir()
    with ShardWriter(shard) as w:
        for i in range(3):
            w.write(f"{i:06d}", {"png": b"not read", "txt": b"a caption"})
    assert count_samples([str(shard)]) == 3  # nothing needed: counted as before
    with pytest.raises(MissingMember, match="000000.tar:000000: sample has no .gsv member"):
        count_samples([str(shard)], ("splats", "text"))
    argv = ["--stage", "2", "--data", str(shard.parent), "--model-config", "gs-tiny", "--out", str(tmp_path / "o")]
    assert _gsv_train(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sample has no .gsv member" in err and "batch" not in err, err


def test_resume_refuses_another_stage_or_distillation_loss(train_shards, tmp_path, capsys):
    """Regression: a stage-1 run resumed with --stage 2 --init-from (same lr) went on, its folder then holding
    checkpoints of two stages; --distill mse resumed a cosine run."""
    s1 = ["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "4", "--batch-size", "4",
          "--lr", "1e-3", "--save-every", "1", "--out", str(tmp_path / "s1")]
    assert _gsv_train(s1 + ["--stop-after", "2"]) == 0
    capsys.readouterr()
    as2 = ["--stage", "2", "--data", train_shards, "--init-from", str(tmp_path / "s1"), "--steps", "4",
           "--batch-size", "4", "--lr", "1e-3", "--save-every", "1", "--out", str(tmp_path / "s1"), "--resume"]
    assert _gsv_train(as2) == 2
    err = capsys.readouterr().err.strip()
    assert "is a checkpoint of stage 1, this run is stage 2" in err and len(err.splitlines()) == 1, err
    assert _gsv_train(s1 + ["--resume", "--distill", "mse"]) == 2
    err = capsys.readouterr().err.strip()
    assert "distill was 'cosine'" in err and "now 'mse'" in err, err
    assert not _ck(tmp_path / "s1", 3).exists()
    assert _gsv_train(s1 + ["--resume"]) == 0  # the run's own settings still resume


def test_token_weight_with_other_token_counts_is_refused_up_front(train_shards, tmp_path, capsys):
    """Regression: gs-tiny's 32 latents against the teacher's 64 patches failed on the first step."""
    argv = ["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "2", "--batch-size", "4",
            "--lr", "1e-3", "--out", str(tmp_path / "t"), "--token-weight", "1.0"]
    assert _gsv_train(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--token-weight 1: the model config 'gs-tiny' gives 32 output tokens" in err and "8x8=64 patches" in err, err
    assert not (tmp_path / "t").exists()


def test_out_that_is_empty_or_a_file_is_refused_and_a_random_teacher_is_said(train_shards, tmp_path, capsys):
    """Regression: --out "" wrote the run into the current folder; a file as --out said only 'File exists';
    stage 1 without --pretrained distilled onto a random teacher without a word."""
    argv = ["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "1", "--batch-size", "4",
            "--lr", "1e-3"]
    assert _gsv_train(argv + ["--out", ""]) == 2
    assert capsys.readouterr().err.strip() == "gsv train: --out: give the run's folder (empty)"
    (tmp_path / "f").write_text("x")
    assert _gsv_train(argv + ["--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    s1 = ["--stage", "1", *argv[2:], "--out", str(tmp_path / "s1")]
    assert _gsv_train(s1) == 0
    assert "no --pretrained: the stage-1 teacher (the frozen base) has random weights" in capsys.readouterr().err
    # regression (new-user trial): stage 2 on a random frozen base said nothing
    assert _gsv_train(argv + ["--out", str(tmp_path / "s2")]) == 0
    err = capsys.readouterr().err
    assert "the frozen base (image tower's ViT and text tower) has random weights: no --pretrained;" in err
    assert "no --init-from: the GS tower (stem, resampler) starts untrained" in err
    assert _gsv_train(argv + ["--init-from", str(tmp_path / "s1"), "--out", str(tmp_path / "s2b")]) == 0
    err = capsys.readouterr().err
    assert "random weights: no --pretrained, and the --init-from run had none;" in err and "no --init-from" not in err


def test_a_run_that_diverges_still_says_its_teacher_was_random(train_shards, tmp_path, capsys, monkeypatch):
    """Regression: the random-teacher note came only after a run that ended well, so a stage-1 run without
    --pretrained that diverged (random weights being a likely reason) ended with the divergence alone."""
    from gaussianvision.train import loop

    def diverges(*a, **k):
        raise loop.TrainingDiverged("loss is nan at step 1")
    monkeypatch.setattr(loop, "train", diverges)
    argv = ["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "1", "--batch-size", "4",
            "--lr", "1e-3", "--out", str(tmp_path / "s1")]
    assert _gsv_train(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no --pretrained: the stage-1 teacher (the frozen base) has random weights" in err[0], err
    assert err[-1] == "gsv train: loss is nan at step 1", err


def test_ctrl_c_keeps_the_finished_step_and_resume_goes_on(train_shards, tmp_path, capsys, monkeypatch):
    """Regression: Ctrl-C during a run without --save-every left no checkpoint. The first Ctrl-C (here raised
    in step 2) lets the step finish, a checkpoint of it is written, and the command exits 130; --resume then
    runs the remaining steps with the same losses as an uninterrupted run."""
    import signal
    from gaussianvision.apps.cli.main import main as gsv
    from gaussianvision.train import loop
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a process started in the background
    argv = ["train", "--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "4",
            "--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--no-progress", "--json"]
    assert gsv(argv + ["--out", str(tmp_path / "whole")]) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    real = loop._Run.one_step

    def interrupted_in_step_2(self, logs):
        if self.step == 1:
            signal.raise_signal(signal.SIGINT)  # arrives mid-step
        real(self, logs)
    monkeypatch.setattr(loop._Run, "one_step", interrupted_in_step_2)
    out = tmp_path / "cut"
    assert gsv(argv + ["--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "stopping after this step" in err and "gsv train: interrupted (rerun with --resume" in err
    assert _ck(out, 2).is_dir() and not _ck(out, 3).exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    monkeypatch.setattr(loop._Run, "one_step", real)
    assert gsv(argv + ["--out", str(out), "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["steps"] == 4 and resumed["final_loss"] == whole["final_loss"]


def test_resume_refuses_another_teacher_model_or_starting_run(train_shards, tmp_path, capsys):
    """Regressions (new-user trial): a stage-1 run resumed without its --pretrained teacher (or with another
    one) went on distilling towards a random (or other) teacher, with only a note; a stage-2 run resumed without
    its --init-from, or with another --model-config, failed on a tensor's shape ('shape [64] != [768]')."""
    from safetensors.torch import save_file
    from gaussianvision.models.gsclip import create_base
    torch.manual_seed(0)
    teachers = []
    for i in range(2):
        teachers.append(tmp_path / f"teacher{i}.safetensors")
        save_file(create_base("gsv-tiny").state_dict(), str(teachers[-1]))
    s1 = ["--stage", "1", "--data", train_shards, "--base", "gsv-tiny", "--model-config", "gs-tiny", "--steps", "4",
          "--batch-size", "4", "--lr", "1e-3", "--save-every", "1", "--out", str(tmp_path / "s1")]
    assert _gsv_train(s1 + ["--pretrained", str(teachers[0]), "--stop-after", "2"]) == 0
    capsys.readouterr()
    for other, now in (([], "None"), (["--pretrained", str(teachers[1])], repr(str(teachers[1])))):
        assert _gsv_train(s1 + other + ["--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"--resume: pretrained was {str(teachers[0])!r} in " in err and f"now {now}; resume with" in err, err
    (tmp_path / "link.safetensors").symlink_to(teachers[0])  # the same file by another name resumes
    assert _gsv_train(s1 + ["--pretrained", str(tmp_path / "link.safetensors"), "--resume", "--stop-after", "3"]) == 0
    capsys.readouterr()
    s2 = ["--stage", "2", "--data", train_shards, "--steps", "4", "--batch-size", "4", "--lr", "1e-3",
          "--save-every", "1", "--out", str(tmp_path / "s2")]
    assert _gsv_train(s2 + ["--init-from", str(tmp_path / "s1"), "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert _gsv_train(s2 + ["--base", "gsv-tiny", "--pretrained", str(teachers[0]), "--model-config", "gs-tiny",
                            "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--resume: init-from was {str(tmp_path / 's1')!r} in " in err and "now None" in err, err
    assert _gsv_train(s2 + ["--init-from", str(tmp_path / "s1"), "--resume"]) == 0
    capsys.readouterr()
    other = [a if a != "gs-tiny" else "gs-98-shared" for a in s1]
    assert _gsv_train(other + ["--pretrained", str(teachers[0]), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model-config was config 'gs-tiny' in " in err and "now config 'gs-98-shared'" in err, err


def test_a_moved_run_or_a_copy_of_its_teacher_still_resumes(train_shards, tmp_path, capsys):
    """Review finding: the resume compared the recorded teacher path and --init-from as given, so a run folder
    moved with its teacher (which the checkpoint's pretrained_rel is for), a copy of the teacher, or a stage-2
    run's --init-from under its new name were refused with no way through."""
    import shutil
    from safetensors.torch import save_file
    from gaussianvision.models.gsclip import create_base
    a = tmp_path / "A"
    a.mkdir()
    torch.manual_seed(0)
    save_file(create_base("gsv-tiny").state_dict(), str(a / "teacher.safetensors"))
    common = ["--data", train_shards, "--base", "gsv-tiny", "--model-config", "gs-tiny", "--steps", "4",
              "--batch-size", "4", "--lr", "1e-3", "--save-every", "1"]
    assert _gsv_train(["--stage", "1", *common, "--pretrained", str(a / "teacher.safetensors"), "--out", str(a / "s1"),
                       "--stop-after", "2"]) == 0
    assert _gsv_train(["--stage", "2", *common, "--init-from", str(a / "s1"), "--out", str(a / "s2"),
                       "--stop-after", "1"]) == 0
    b = tmp_path / "B"
    a.rename(b)
    capsys.readouterr()
    shutil.copy(b / "teacher.safetensors", tmp_path / "copy.safetensors")
    for teacher in (b / "teacher.safetensors", tmp_path / "copy.safetensors"):
        assert _gsv_train(["--stage", "1", *common, "--pretrained", str(teacher), "--out", str(b / "s1"), "--resume",
                           "--stop-after", "3" if teacher.name == "teacher.safetensors" else "4"]) == 0, capsys.readouterr().err
    assert _gsv_train(["--stage", "2", *common, "--init-from", str(b / "s1"), "--out", str(b / "s2"), "--resume"]) == 0, \
        capsys.readouterr().err
