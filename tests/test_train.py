"""Training: schedule and losses, stage 1 / 2 / rgb smoke runs, frozen parts, exact resume, NaN stop."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch


pytest.importorskip("open_clip")
pytest.importorskip("safetensors")


def _gsv_train(argv):
    from gaussianvision.apps.cli.train import main
    return main(argv + ["--no-progress"])


# ------------------------------------------------------------------ pieces
def test_cosine_schedule():
    from gaussianvision.train.schedule import cosine_lr
    lrs = [cosine_lr(s, 1.0, warmup=4, total=12) for s in range(13)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and lrs[8] == pytest.approx(0.5) and lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert cosine_lr(100, 1.0, warmup=0, total=10, min_lr=0.1) == pytest.approx(0.1)


def test_distill_losses():
    from gaussianvision.train.losses import distill_loss, token_distill_loss
    a = torch.randn(5, 8)
    assert float(distill_loss(a, 3 * a)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)
    b = torch.randn(5, 8)
    cos = torch.nn.functional.cosine_similarity(a, b).mean()
    assert float(distill_loss(a, b, "mse")) == pytest.approx(float(2 - 2 * cos), abs=1e-5)
    assert float(token_distill_loss(a[None], a[None] * 2)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="token counts"):
        token_distill_loss(torch.randn(2, 3, 8), torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="kind"):
        distill_loss(a, b, "l1")


def test_freeze_rules():
    from gaussianvision.train.stages import is_text_param
    assert is_text_param("base.transformer.resblocks.0.attn.in_proj_weight")
    assert is_text_param("base.token_embedding.weight") and is_text_param("text_projection")
    assert not is_text_param("base.visual.transformer.resblocks.0.attn.in_proj_weight")
    assert not is_text_param("visual.resampler.latents")


# ------------------------------------------------------------------ stages through the CLI
def test_stage1_then_stage2_smoke(train_shards, tmp_path, capsys, read_log):
    from safetensors.torch import load_file
    o1, o2 = tmp_path / "s1", tmp_path / "s2"
    rc = _gsv_train(["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(o1),
                     "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["steps"] == 3 and math.isfinite(res["final_loss"])
    log = read_log(o1)
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all({"loss", "lr", "samples_per_s", "cos"} <= set(r) for r in log)
    ck = o1 / "checkpoints" / "step-00000003"
    w1 = load_file(str(ck / "weights.safetensors"))
    assert w1 and all(n.startswith("visual.") for n in w1)  # trainable parts only: no frozen base tensors
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 3 and state["data_positions"] == [[0, 3]] and "torch" in state["rng"][0]
    assert (ck / "optimizer.safetensors").is_file() and (ck / "optimizer.json").is_file()
    assert not list(ck.glob("*.pt"))  # no pickle is ever written

    rc = _gsv_train(["--stage", "2", "--data", train_shards, "--init-from", str(o1), "--out", str(o2), "--steps", "2",
                     "--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--json"])
    assert rc == 0
    capsys.readouterr()
    log2 = read_log(o2)
    assert len(log2) == 2 and all(math.isfinite(r["loss"]) and "logit_scale" in r for r in log2)
    # stage 2 starts from stage 1's weights
    from gaussianvision.train.build import build_stage
    stage = build_stage("2", init_from=str(o1))
    params = dict(stage.model.named_parameters())
    assert all(torch.equal(params[n], t) for n, t in w1.items())
    # the exported trainable checkpoint is what models' loader reads
    from gaussianvision.models import create_gsclip_from_weights
    m = create_gsclip_from_weights(o2 / "gsclip.safetensors")
    w2 = load_file(str(o2 / "checkpoints" / "step-00000002" / "weights.safetensors"))
    mp = dict(m.named_parameters())
    assert all(torch.equal(mp[n], t) for n, t in w2.items())
    assert not all(torch.equal(w1[n], w2[n]) for n in w1)  # stage 2 trained them


def test_stage2_needs_text_and_stage1_needs_images(tmp_path, capsys):
    from gaussianvision.train.stages import Stage1
    with pytest.raises(ValueError, match="image"):
        Stage1(torch.nn.Linear(1, 1)).loss({"splats": None})
    rc = _gsv_train(["--stage", "1", "--data", str(tmp_path / "nothing"), "--model-config", "gs-tiny",
                     "--out", str(tmp_path / "o"), "--steps", "1"])
    assert rc == 2 and "shard not found" in capsys.readouterr().err


def test_frozen_parts_bit_identical_and_unfreeze(train_shards):
    from gaussianvision.train.batches import build_source
    from gaussianvision.train.loop import TrainConfig, train
    from gaussianvision.train.build import build_stage
    import tempfile
    stage = build_stage("2", model_config="gs-tiny", unfreeze=["base.ln_final"])
    before = {n: p.detach().clone() for n, p in stage.model.named_parameters()}
    trainable = {n for n, p in stage.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("base.ln_final") for n in trainable)
    assert all(n.startswith(("visual.", "base.ln_final")) for n in trainable)
    src = build_source(train_shards, ("splats", "text"), 4, buffer=4)
    with tempfile.TemporaryDirectory() as out:
        train(stage, src, TrainConfig(out=out, steps=2, batch_size=4, lr=1e-2, progress=False))
    after = dict(stage.model.named_parameters())
    frozen = [n for n in before if n not in trainable]
    assert len(frozen) > 20
    for n in frozen:
        assert torch.equal(before[n], after[n]), f"frozen {n} changed"
    assert not torch.equal(before["base.ln_final.weight"], after["base.ln_final.weight"])
    assert sum(not torch.equal(before[n], after[n]) for n in trainable) >= len(trainable) // 2


def test_exact_resume(train_shards, tmp_path, read_log):
    from safetensors.torch import load_file
    common = ["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "5", "--batch-size", "2",
              "--accum", "2", "--warmup", "2", "--lr", "3e-3", "--shuffle-buffer", "3", "--log-every", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _gsv_train(common + ["--out", str(a)]) == 0
    assert _gsv_train(common + ["--out", str(b), "--stop-after", "2"]) == 0
    assert [r["step"] for r in read_log(b)] == [1, 2]
    assert not (b / "gsclip.safetensors").exists()  # unfinished: no final export yet
    assert _gsv_train(common + ["--out", str(b), "--resume"]) == 0
    la, lb = read_log(a), read_log(b)
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5]
    # 5 steps x 2 micro-batches x 2 = 20 samples > 16: the run also crosses an epoch boundary
    assert la[-1]["epoch"] == 1
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["lr"] for r in la] == [r["lr"] for r in lb]
    wa = load_file(str(a / "checkpoints" / "step-00000005" / "weights.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step-00000005" / "weights.safetensors"))
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_resume_refuses_changed_settings(train_shards, tmp_path, capsys):
    out = tmp_path / "r"
    base = ["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "2", "--out", str(out)]
    assert _gsv_train(base + ["--batch-size", "4", "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert _gsv_train(base + ["--batch-size", "2", "--resume"]) == 2
    assert "batch_size" in capsys.readouterr().err
    # regression (new-user trial): other data, or the same held in memory, resumed without a word
    ckpt = out / "checkpoints" / "step-00000001"
    others = {"--in-memory": f"--resume: --in-memory was not given in {ckpt}; the batch order depends on it",
              "--shuffle-buffer": f"--resume: shuffle-buffer was 1000 in {ckpt}, now 5; the batch order depends on it",
              "--data": f"--resume: the --data shards differ from the run's in {ckpt} (2 shards then, 1 now"}
    for flag, message in others.items():
        argv = {"--in-memory": base + ["--in-memory"], "--shuffle-buffer": base + ["--shuffle-buffer", "5"],
                "--data": [a if a != train_shards else str(Path(train_shards) / "shard-0000.tar") for a in base]}[flag]
        assert _gsv_train(argv + ["--batch-size", "4", "--resume"]) == 2, flag
        assert capsys.readouterr().err.strip().startswith(f"gsv train: {message}"), flag
    from gaussianvision.train.batches import data_identity  # review: a refreshed signed URL is the same shard
    assert data_identity(["https://h/a/0.tar?sig=1"], False, 9) == data_identity(["https://h/a/0.tar?sig=2"], False, 9)
    assert data_identity(["https://h/a/0.tar"], False, 9) != data_identity(["https://h/a/1.tar"], False, 9)
    import shutil
    moved = shutil.copytree(train_shards, tmp_path / "moved")  # the same shards elsewhere: the same data
    assert _gsv_train([a if a != train_shards else str(moved) for a in base] + ["--batch-size", "4", "--resume"]) == 0


def test_a_schedule_that_cannot_be_is_refused_or_said(train_shards, tmp_path, capsys):
    """Regression (new-user trial): --min-lr above the peak --lr (the schedule then rose to it) and a warmup longer
    than the run ran without a word."""
    base = ["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "2", "--batch-size", "4"]
    assert _gsv_train(base + ["--lr", "1e-4", "--min-lr", "1", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("gsv train: --min-lr 1: above the peak rate --lr 0.0001; the schedule decays from --lr to "
                   "--min-lr"), err
    assert not (tmp_path / "a").exists()
    assert _gsv_train(base + ["--warmup-fraction", "1", "--out", str(tmp_path / "c")]) == 2  # review: a traceback
    assert capsys.readouterr().err.strip() == "gsv train: --warmup-fraction 1.0: must be a number >= 0 and < 1"
    assert _gsv_train(base + ["--lr", "1e-4", "--warmup", "100", "--out", str(tmp_path / "b")]) == 0
    assert ("gsv train: note: a warmup of 100 steps >= this run's 2: the learning rate rises through the whole run "
            "(to --lr 0.0001 at most at its last step) and never decays") in capsys.readouterr().err


def _without_captions(src: str, dst: Path, keep=lambda key: False) -> str:
    """A copy of the shards in `src` whose samples keep their .txt only where keep(key)."""
    import tarfile
    dst.mkdir()
    for shard in sorted(Path(src).glob("*.tar")):
        with tarfile.open(shard) as tin, tarfile.open(dst / shard.name, "w") as tout:
            for m in tin.getmembers():
                if not m.name.endswith(".txt") or keep(m.name.split(".")[0]):
                    tout.addfile(m, tin.extractfile(m))
    return str(dst)


def test_a_stage_that_learns_from_captions_refuses_data_without_any(train_shards, tmp_path, capsys):
    """Regression (new-user trial): stage 2 (and rgb) trained on shards without a single caption, contrasting the
    splats with empty strings, without a word. Now refused where none has one, noted where over a tenth lack one."""
    none = _without_captions(train_shards, tmp_path / "none")
    base = ["--stage", "2", "--model-config", "gs-tiny", "--steps", "1", "--batch-size", "4"]
    assert _gsv_train(base + ["--data", none, "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == (f"gsv train: --data {none}: none of its first 16 samples has a caption "
                                               "(a .txt member), and stage 2 learns from captions; convert images "
                                               "with their captions")
    some = _without_captions(train_shards, tmp_path / "some", keep=lambda key: not key.endswith(("1", "2", "3")))
    assert _gsv_train(base + ["--data", some, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert f"gsv train: note: 6 of the first 16 samples of --data {some} have no caption" in err, err


def test_the_caption_look_decodes_nothing_and_reports_no_damage(train_shards, tmp_path, capsys):
    """Review finding: empty_captions went through the trainer's reader: it decoded every sample (every image in
    stage rgb) and put a damaged first shard into the run's skipped.json though the run never read it."""
    import shutil
    from gaussianvision.train.batches import build_source, empty_captions
    data = Path(shutil.copytree(train_shards, tmp_path / "data"))
    first = sorted(data.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes()[:3000])  # cut inside its samples
    source = build_source(str(data), ("splats", "text"), 4)
    empty, seen = empty_captions(source)
    assert empty == 0 and 0 < seen < 16  # the samples before the cut, then the second shard's
    assert source.left_out() == {"skipped_samples": set(), "damaged_shards": set()}
    assert capsys.readouterr().err == ""  # the trainer names the damage where it reads it, once
    remote = build_source(["http://127.0.0.1:9/000000.tar"], ("splats", "text"), 4)
    assert empty_captions(remote) == (0, 0)  # a remote shard is not fetched for a look


class _ExplodingStage:
    """A linear regression whose loss turns NaN at a chosen step."""

    def __init__(self, nan_at):
        self.model = torch.nn.Linear(3, 1)
        self.calls, self.nan_at = 0, nan_at

    def describe(self):
        return {"stage": "test"}

    def loss(self, batch):
        self.calls += 1
        loss = ((self.model(batch["x"]) - batch["y"]) ** 2).mean()
        return (loss * float("nan") if self.calls == self.nan_at else loss), {}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    from gaussianvision.train.checkpoint import latest_checkpoint, load_checkpoint
    from gaussianvision.train.loop import TrainConfig, TrainingDiverged, train
    from gaussianvision.train.batches import IndexedSource
    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(8)]
    src = IndexedSource(data, lambda items: {k: torch.stack([i[k] for i in items]) for k in ("x", "y")}, 2)
    stage = _ExplodingStage(nan_at=5)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5, micro-batch 1/1.*step-00000004"):
        train(stage, src, TrainConfig(out=str(tmp_path), steps=10, batch_size=2, save_every=2, progress=False))
    d = latest_checkpoint(tmp_path)
    assert d.name == "step-00000004"
    state, weights, _ = load_checkpoint(tmp_path)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in weights.values())
    assert all(torch.isfinite(p).all() for p in stage.model.parameters())  # the NaN step never applied


class _DeclaringStage(_ExplodingStage):
    """A stage that declares a setting a resumed run must share (as the demo's teacher does)."""

    def __init__(self, **settings):
        super().__init__(nan_at=None)
        self.settings = settings

    def describe(self):
        return {"stage": "test", **self.settings}

    def resume_keys(self):
        return {"knob": 0.0}


def test_resume_compares_the_settings_the_stage_declares(tmp_path):
    """The loop saves the stage's resume_keys() in state.json and refuses a resume whose stage
    describes another value, or lacks the setting (its "not used" value) when the run had it."""
    from gaussianvision.train.checkpoint import CheckpointError
    from gaussianvision.train.loop import TrainConfig, train
    from gaussianvision.train.batches import IndexedSource
    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(8)]

    def run(stage, **kw):
        src = IndexedSource(data, lambda items: {k: torch.stack([i[k] for i in items]) for k in ("x", "y")}, 2)
        return train(stage, src, TrainConfig(out=str(tmp_path), steps=4, batch_size=2, progress=False, **kw))

    run(_DeclaringStage(knob=2.0), stop_after=1)
    state = json.loads((tmp_path / "checkpoints" / "step-00000001" / "state.json").read_text())
    assert state["resume_keys"] == {"knob": 0.0} and state["task"]["knob"] == 2.0
    with pytest.raises(CheckpointError, match=r"--resume: knob was 2.0 in .*step-00000001, now 3.0; resume with"):
        run(_DeclaringStage(knob=3.0), resume=True)
    with pytest.raises(CheckpointError, match=r"--resume: knob was 2.0 in .*, now 0.0"):
        run(_ExplodingStage(nan_at=None), resume=True)  # a stage without the setting
    assert run(_DeclaringStage(knob=2.0), resume=True)["steps"] == 4


def test_rgb_clip_export_loads_as_pretrained(tmp_path, capsys, write_splat_shards):
    import open_clip
    from gaussianvision.train.stages import OPEN_CLIP_EXPORT
    root = tmp_path / "img"
    write_splat_shards(root, n_samples=8, per_shard=8)  # image + caption members serve the RGB trainer
    out = tmp_path / "rgb"
    rc = _gsv_train(["--stage", "rgb", "--base", "gsv-tiny", "--data", str(root), "--in-memory", "--out", str(out),
                     "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["steps"] == 2  # 8 samples / batch 4 = one epoch
    m = open_clip.create_model("gsv-tiny", pretrained=str(out / OPEN_CLIP_EXPORT))
    from safetensors.torch import load_file
    w = load_file(str(out / "checkpoints" / "step-00000002" / "weights.safetensors"))
    sd = m.state_dict()
    assert len(w) == len([n for n, p in m.named_parameters()])  # everything trained
    assert all(torch.equal(sd[n], t) for n, t in w.items())


def test_fresh_run_refuses_an_existing_run(train_shards, tmp_path, capsys):
    out = tmp_path / "x"
    base = ["--stage", "2", "--data", train_shards, "--model-config", "gs-tiny", "--steps", "1", "--batch-size", "4",
            "--out", str(out)]
    assert _gsv_train(base) == 0
    capsys.readouterr()
    assert _gsv_train(base) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_stage1_token_level_loss(train_shards, tmp_path):
    from gaussianvision.models import load_config
    from gaussianvision.train.batches import build_source
    from gaussianvision.train.loop import TrainConfig, train
    from gaussianvision.train.build import build_stage
    cfg = load_config("gs-tiny")
    cfg["resampler"]["num_latents"] = 64  # as many tokens as gsv-tiny's 8x8 patches
    stage = build_stage("1", model_config=cfg, token_weight=0.5, distill="mse")
    src = build_source(train_shards, ("splats", "image"), 4, buffer=4)
    train(stage, src, TrainConfig(out=str(tmp_path), steps=1, batch_size=4, log_every=1, progress=False))
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["token_loss"] > 0 and rec["loss"] > 0.5 * rec["token_loss"]
    with pytest.raises(ValueError, match="gives 32 output tokens, the base gsv-tiny's teacher 8x8=64 patches"):
        build_stage("1", model_config="gs-tiny", token_weight=0.5)  # refused when built, not at the first step


def test_negclip_loss_matches_a_written_out_reference():
    """Loss and gradients against the NegCLIP definition written with explicit sums."""
    from gaussianvision.train.losses import make_clip_loss, make_negclip_loss
    g = torch.Generator().manual_seed(3)
    img, txt, neg = (torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=-1)
                     .requires_grad_(True) for _ in range(3))
    scale = 7.0

    def reference(img, txt, neg):
        total = 0.0
        for i in range(5):
            pos = scale * (img[i] * txt[i]).sum()
            den = sum(torch.exp(scale * (img[i] * t).sum()) for t in list(txt) + list(neg))
            total = total - (pos - torch.log(den)) / 2
            den_t = sum(torch.exp(scale * (txt[i] * m).sum()) for m in img)
            total = total - (pos - torch.log(den_t)) / 2
        return total / 5

    ours = make_negclip_loss()(img, txt, neg, scale)
    ref = reference(img, txt, neg)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (img, txt, neg)), torch.autograd.grad(ref, (img, txt, neg))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the negatives only add to the image -> text denominators: the loss is above plain CLIP's
    clip = make_clip_loss()(img, txt, scale)
    assert ours.item() > clip.item()
    with pytest.raises(ValueError, match="same shape"):
        make_negclip_loss()(img, txt, neg[:3], scale)


def test_stage1_cache_teacher_gives_the_same_training(train_shards, tmp_path, monkeypatch, read_log):
    """--cache-teacher: the same losses step by step as computing the teacher every step, with
    the teacher run once per sample; a key whose image changed is recomputed."""
    from gaussianvision.models.gsclip import GSCLIP
    from gaussianvision.train.batches import build_memory_source
    from gaussianvision.train.loop import TrainConfig, train
    from gaussianvision.train.build import build_stage
    from gaussianvision.apps.demo.pipeline import load_samples
    samples = load_samples(train_shards, ("splats", "image"))
    calls = []
    real = GSCLIP.encode_rgb
    monkeypatch.setattr(GSCLIP, "encode_rgb", lambda self, x, **k: calls.append(len(x)) or real(self, x, **k))
    logs = {}
    for cached in (False, True):
        calls.clear()
        stage = build_stage("1", model_config="gs-tiny", cache_teacher=cached)
        out = tmp_path / str(cached)
        train(stage, build_memory_source(samples, 4), TrainConfig(out=str(out), steps=3 * len(samples) // 4,
                                                                 batch_size=4, log_every=1, progress=False))
        logs[cached] = [r["loss"] for r in read_log(out)]
        assert sum(calls) == (len(samples) if cached else 3 * len(samples))
    assert logs[True] == logs[False]
    batch = {"key": ["a", "b"], "image": torch.rand(2, 3, 64, 64)}
    first = stage._teacher(batch, batch["image"])
    batch["image"][1] += 0.5  # same key, another image: not served from the cache
    second = stage._teacher(batch, batch["image"])
    assert torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="--cache-teacher applies to --stage 1"):
        build_stage("rgb", base="gsv-tiny", cache_teacher=True)


def test_stage1_hflip_mirrors_image_and_splats_together(train_shards, capsys):
    """--hflip P: in a training step each sample is mirrored with probability P, its image flipped
    and its splats by Splats.hflip; the loss is that of the mirrored batch, the cached teacher
    keeps a separate target for the mirrored image, and nothing is mirrored without gradients."""
    from gaussianvision.apps.demo.pipeline import load_samples
    from gaussianvision.splats import Splats
    from gaussianvision.train.build import build_stage
    samples = load_samples(train_shards, ("splats", "image"))[:4]
    batch = {"key": [s["key"] for s in samples], "image": torch.stack([s["image"] for s in samples]),
             "splats": Splats.stack([s["splats"] for s in samples])}
    mirrored = {**batch, "image": batch["image"].flip(-1), "splats": batch["splats"].hflip()}
    plain = build_stage("1", model_config="gs-tiny", seed=3)
    flip = build_stage("1", model_config="gs-tiny", seed=3, hflip=1.0, cache_teacher=True)
    assert flip.describe()["hflip"] == 1.0
    want, _ = plain.loss(mirrored)
    got, _ = flip.loss(batch)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, plain.loss(batch)[0])
    assert sorted(flip._teacher_cache) == sorted((k, True) for k in batch["key"])
    with torch.no_grad():  # evaluation: never mirrored
        torch.testing.assert_close(flip.loss(batch)[0], plain.loss(batch)[0])
    with pytest.raises(ValueError, match=r"--hflip must be a probability in \[0, 1\], got 2.0"):
        build_stage("1", model_config="gs-tiny", hflip=2.0)
    assert _gsv_train(["--stage", "rgb", "--data", "x", "--out", "y", "--steps", "1", "--hflip", "0.5"]) == 2
    assert "--hflip applies to --stage 1" in capsys.readouterr().err
    # regression (new-user trial): stage 1's loss options were ignored by stage 2 without a word
    for flags, says in ((["--distill", "mse"], "--distill mse applies to --stage 1"),
                        (["--token-weight", "1"], "--token-weight applies to --stage 1")):
        assert _gsv_train(["--stage", "2", "--data", "x", "--out", "y", "--steps", "1", *flags]) == 2
        assert capsys.readouterr().err.strip() == f"gsv train: {says} (the " + \
            ("distillation loss)" if flags[0] == "--distill" else "token-level distillation loss)")


def test_a_run_into_its_data_folder_is_refused(train_shards, capsys):
    """Regression (new-user trial): gsv train --out DATA --data DATA wrote checkpoints among the shards."""
    assert _gsv_train(["--stage", "2", "--data", train_shards, "--out", train_shards + "/", "--steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == (f"gsv train: --out {train_shards}/: is the --data folder "
                                               f"{train_shards}; give the run a folder of its own")
    assert not any(p.is_dir() for p in Path(train_shards).iterdir())
    # and a stream's shuffle buffer given with --in-memory, which shuffles the whole data (it was ignored)
    assert _gsv_train(["--stage", "2", "--data", train_shards, "--out", "x", "--in-memory", "--shuffle-buffer", "9"]) == 2
    assert capsys.readouterr().err.strip() == ("gsv train: --shuffle-buffer goes with streamed data; --in-memory "
                                               "shuffles the whole data each epoch")


def test_tensorboard_without_its_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Regression (new-user trial): --tensorboard without the package was a 30-line traceback after the data was
    counted and the model built, leaving train_config.json and log.jsonl behind."""
    import builtins
    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert _gsv_train(["--stage", "2", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "1",
                       "--tensorboard"]) == 2
    assert capsys.readouterr().err.strip() == "gsv train: --tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "r").exists()


def test_cached_tokenizer_tokenizes_each_caption_once():
    """train.tokens.CachedTokenizer: the same rows as the tokenizer, each distinct caption sent
    to it once, and past max_entries captions are tokenized again rather than stored."""
    import open_clip
    from gaussianvision.models import register_open_clip_configs
    from gaussianvision.train.tokens import CachedTokenizer
    register_open_clip_configs()
    tok = open_clip.get_tokenizer("gsv-tiny")
    seen = []
    cached = CachedTokenizer(lambda texts: seen.extend(texts) or tok(texts), max_entries=2)
    texts = ["a red circle.", "two blue squares.", "a red circle.", "a green star left of a red cross."]
    assert torch.equal(cached(texts), tok(texts))
    assert seen == ["a red circle.", "two blue squares.", "a green star left of a red cross."]
    assert len(cached) == 2
    seen.clear()
    assert torch.equal(cached(texts[::-1]), tok(texts[::-1]))
    assert seen == ["a green star left of a red cross."]  # not stored: the memo was full
    with pytest.raises(ValueError, match="max_entries must be >= 0"):
        CachedTokenizer(tok, max_entries=-1)


def test_adamw_is_fused_where_torch_has_it_and_matches_the_loop():
    """The loop's AdamW is torch's fused kernel on CPU tensors; ten steps of it equal ten steps of
    the per-tensor AdamW (with and without weight decay) to float rounding."""
    from gaussianvision.train.loop import TrainConfig, _adamw
    cfg = TrainConfig(out="unused", steps=10, batch_size=1, lr=1e-2)
    torch.manual_seed(0)
    w0 = [torch.randn(5, 3), torch.randn(7)]
    runs = []
    for fused in (True, False):
        ps = [torch.nn.Parameter(w.clone()) for w in w0]
        groups = [{"params": ps[:1], "weight_decay": 0.1}, {"params": ps[1:], "weight_decay": 0.0}]
        opt = _adamw(groups, cfg) if fused else torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        assert opt.defaults.get("fused") is (True if fused else None)
        for step in range(10):
            opt.zero_grad()
            (sum((p ** 2).sum() * (step + 1) for p in ps)).backward()
            opt.step()
        runs.append([p.detach() for p in ps])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(runs[0][0], w0[0])


def test_fit_option_parses_key_value():
    from gaussianvision.apps.cli.command import CliError, fit_option
    assert fit_option(" iters =40") == ("iters", 40) and fit_option("backend=numba") == ("backend", "numba")
    with pytest.raises(CliError, match="--fit-option '=3': expected KEY=VALUE"):
        fit_option("=3")


def test_both_stages_train_on_shards_of_two_sizes(tmp_path, write_splat_shards):
    # a --data folder holding a 32 px and a 48 px conversion had stopped before the first step with
    # "Splats.stack: item 2 is 32x32, item 0 is 48x48", naming neither the data nor a fix
    data = tmp_path / "data"
    for size in (32, 48):
        (p,) = write_splat_shards(tmp_path / f"s{size}", n_samples=8, per_shard=8, size=size)
        data.mkdir(exist_ok=True)
        Path(p).rename(data / f"s{size}.tar")
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    assert _gsv_train(["--stage", "1", "--data", str(data), "--model-config", "gs-tiny", "--out", str(o1),
                       "--steps", "2", "--batch-size", "8", "--lr", "1e-3"]) == 0
    assert _gsv_train(["--stage", "2", "--data", str(data), "--init-from", str(o1), "--out", str(o2),
                       "--steps", "2", "--batch-size", "8", "--lr", "1e-3"]) == 0


def test_stage1_on_a_batch_of_two_sizes_gives_each_sample_its_own_target():
    # in a batch mixing sizes each image is resized straight to the teacher's input, as in a batch of its own
    # size (a first version resized it to the batch's largest size first: targets hung on the batch's company)
    from conftest import random_splats
    from gaussianvision.data.loader import collate
    from gaussianvision.train.build import build_stage
    from gaussianvision.train.stages import pixel_input
    g = torch.Generator().manual_seed(0)
    items = [{"key": f"k{i}", "splats": random_splats(1, 6, s, s, seed=i), "image": torch.rand(3, s, s, generator=g)}
             for i, s in enumerate((32, 48, 32, 48))]
    mixed = collate(items)
    stage = build_stage("1", model_config="gs-tiny", seed=3, hflip=1.0, cache_teacher=True)
    visual = stage.model.base.visual
    alone = torch.cat([pixel_input(collate([items[i], items[i + 2]])["image"], visual)[[0, 1]] for i in (0, 1)])
    assert torch.equal(pixel_input(mixed["image"], visual), alone[[0, 2, 1, 3]])
    got, logs = stage.loss(mixed)  # every sample mirrored (hflip 1): the list's images and the splats
    want = build_stage("1", model_config="gs-tiny", seed=3).loss(
        {**mixed, "image": [im.flip(-1) for im in mixed["image"]], "splats": mixed["splats"].hflip()})[0]
    torch.testing.assert_close(got, want)
    assert sorted(stage._teacher_cache) == [(f"k{i}", True) for i in range(4)]


def test_a_data_folder_whose_subfolders_hold_the_shards_names_them(tmp_path, capsys, write_splat_shards):
    # new-user trial: two conversions side by side under one folder (each writes 000000.tar) gave "--data ['both']:
    # no .tar shards found", a Python list and no way forward
    for size in (32, 48):
        write_splat_shards(tmp_path / "both" / f"s{size}", n_samples=4, per_shard=4, size=size)
    (tmp_path / "both" / "empty").mkdir()
    rc = _gsv_train(["--stage", "2", "--data", str(tmp_path / "both"), "--out", str(tmp_path / "o"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--data {tmp_path / 'both'}: no .tar shards found in it; its subfolders hold shards" in err, err
    assert f"give them, --data {tmp_path / 'both' / 's32'} --data {tmp_path / 'both' / 's48'}\n" in err, err
    rc = _gsv_train(["--stage", "2", "--data", str(tmp_path / "both" / "empty"), "--data", str(tmp_path / "both" / "empty"),
                     "--out", str(tmp_path / "o"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--data {tmp_path / 'both' / 'empty'} {tmp_path / 'both' / 'empty'}: no .tar shards found\n" in err, err


def test_init_from_with_another_model_config_names_the_option(train_shards, tmp_path, capsys):
    # new-user trial: stage 2 from a gs-tiny run with --model-config gs-196 said only "checkpoint tensor
    # 'visual.positional_embedding': shape [33, 64] != [197, 64]"
    o1 = tmp_path / "s1"
    assert _gsv_train(["--stage", "1", "--data", train_shards, "--model-config", "gs-tiny", "--out", str(o1),
                       "--steps", "1", "--batch-size", "4"]) == 0
    capsys.readouterr()
    rc = _gsv_train(["--stage", "2", "--data", train_shards, "--init-from", str(o1), "--model-config", "gs-196",
                     "--out", str(tmp_path / "s2"), "--steps", "1", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "its weights do not fit the model --model-config gs-196 asks for" in err, err
    assert "that run used model config gs-tiny on base gsv-tiny: leave the option out" in err, err


def test_the_subfolder_hint_passes_over_folders_it_cannot_read(tmp_path, monkeypatch, write_splat_shards):
    # review finding: an unreadable subfolder (lost+found at the root of a data disk) replaced "no .tar shards
    # found" with its PermissionError
    import gaussianvision.train.batches as batches
    write_splat_shards(tmp_path / "both" / "s32", n_samples=4, per_shard=4, size=32)
    (tmp_path / "both" / "lost+found").mkdir()
    real = batches.expand_urls

    def guarded(spec, *a, **kw):
        if str(spec).endswith("lost+found"):
            raise PermissionError(13, "Permission denied", str(spec))
        return real(spec, *a, **kw)
    monkeypatch.setattr(batches, "expand_urls", guarded)
    with pytest.raises(batches.DataError, match=r"its subfolders hold shards .*give them, --data \S+s32$"):
        batches.build_source(str(tmp_path / "both"), ("splats",), 2)
