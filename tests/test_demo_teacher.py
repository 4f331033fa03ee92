"""The demo's teacher recipe (apps/demo/teacher.py, apps/demo/words.py): text lock, hard negatives,
mirror pairs, caption-word loss and boost on top of the library's plain RGB CLIP stage; the
library's stage knows none of them; the losses equal those of the code before the
move (train/stages.py's RGBClipStage with all options) to float32's last bits."""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch


pytest.importorskip("open_clip")
pytest.importorskip("safetensors")

TEACHER_OPTIONS = ("lock_text_steps", "hard_negatives", "mirror_pairs", "word_loss", "word_boost")


def _gsv_train(argv):
    from gaussianvision.apps.cli.train import main
    return main(argv + ["--no-progress"])


# ------------------------------------------------------------------ the library knows none of it
def test_library_rgb_stage_has_none_of_the_demo_options():
    from gaussianvision.apps.demo.teacher import TeacherStage
    from gaussianvision.train.build import build_stage
    from gaussianvision.train.stages import RGBClipStage
    assert list(inspect.signature(RGBClipStage.__init__).parameters) == ["self", "model", "tokenizer", "info", "meta"]
    assert not set(TEACHER_OPTIONS) & set(inspect.signature(build_stage).parameters)
    for option in TEACHER_OPTIONS:
        with pytest.raises(TypeError):
            build_stage("rgb", base="gsv-tiny", **{option: 1})
    plain = build_stage("rgb", base="gsv-tiny")
    assert type(plain) is RGBClipStage and not hasattr(plain, "begin_step")
    assert plain.describe() == {"stage": "rgb", "base": "gsv-tiny", "pretrained": None}
    assert plain.resume_keys() == {"base": None, "pretrained": None}  # the model, as every stage
    assert issubclass(TeacherStage, RGBClipStage)
    root = Path(__file__).parents[1] / "src" / "gaussianvision" / "train"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert not any(o in text for o in TEACHER_OPTIONS + ("WORD_HEAD", "CaptionWords")), path.name


# ------------------------------------------------------------------ equal to the code before the move
_TEXTS = ["a red circle left of a blue square", "a green star", "a red cross above a blue disk",
          "two small red squares", "a small red circle right of a large blue square", "two green stars"]
_NEGS = ["a blue circle left of a red square", "a red star", "a red cross below a blue disk",
         "three small red squares", "a small red circle left of a large blue square", "two red stars"]
_CONFIGS = {
    "plain": {},
    "lock": {"lock_text_steps": 1},
    "negatives": {"hard_negatives": True},
    "mirror": {"mirror_pairs": 0.5},
    "words": {"word_loss": 0.5, "word_boost": {"left": 4.0}},
    "all": {"lock_text_steps": 1, "hard_negatives": True, "mirror_pairs": 0.5, "word_loss": 0.5,
            "word_boost": {"left": 4.0, "above": 2.0}},
}
# loss and logs (float.hex) of two SGD steps on the batch below, computed with the code before the
# move (commit 86039e0): train.setup.build_task("rgb", base="gsv-tiny", seed=1, mirror_fn=world
# mirror_pairs, **config) (now train.build.build_stage), in one CPU thread (the sums' order, hence
# the last bits, follows the thread count)
_BEFORE = {
    'plain': [{'loss': '0x1.ffc6cc0000000p+0', 'logit_scale': '0x1.c924920000000p+3', 'text_locked': '0x0.0p+0'}, {'loss': '0x1.e6a1000000000p+0', 'logit_scale': '0x1.b913a40000000p+3', 'text_locked': '0x0.0p+0'}],
    'lock': [{'loss': '0x1.ffc6cc0000000p+0', 'logit_scale': '0x1.c924920000000p+3', 'text_locked': '0x1.0000000000000p+0'}, {'loss': '0x1.b566040000000p+0', 'logit_scale': '0x1.b913a40000000p+3', 'text_locked': '0x0.0p+0'}],
    'negatives': [{'loss': '0x1.2d116e0000000p+1', 'logit_scale': '0x1.c924920000000p+3', 'text_locked': '0x0.0p+0'}, {'loss': '0x1.30e5500000000p+1', 'logit_scale': '0x1.baa31a0000000p+3', 'text_locked': '0x0.0p+0'}],
    'mirror': [{'loss': '0x1.ef1b540000000p+0', 'logit_scale': '0x1.c924920000000p+3', 'text_locked': '0x0.0p+0'}, {'loss': '0x1.e3fd420000000p+0', 'logit_scale': '0x1.bde6840000000p+3', 'text_locked': '0x0.0p+0'}],
    'words': [{'loss': '0x1.6291240000000p+2', 'clip_loss': '0x1.ffc6cc0000000p+0', 'logit_scale': '0x1.c924920000000p+3', 'text_locked': '0x0.0p+0', 'word_loss': '0x1.c53ee20000000p+2'}, {'loss': '0x1.4b58720000000p+2', 'clip_loss': '0x1.d60bc80000000p+0', 'logit_scale': '0x1.b913a40000000p+3', 'text_locked': '0x0.0p+0', 'word_loss': '0x1.abab000000000p+2'}],
    'all': [{'loss': '0x1.7570040000000p+2', 'clip_loss': '0x1.2448380000000p+1', 'logit_scale': '0x1.c924920000000p+3', 'text_locked': '0x1.0000000000000p+0', 'word_loss': '0x1.c697d00000000p+2'}, {'loss': '0x1.5fa87c0000000p+2', 'clip_loss': '0x1.17620e0000000p+1', 'logit_scale': '0x1.bf6f0a0000000p+3', 'text_locked': '0x0.0p+0', 'word_loss': '0x1.a7eeea0000000p+2'}],
}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _two_steps(stage) -> list[dict]:
    """Loss and logs (float.hex) of two SGD steps on the fixed batch."""
    opt = torch.optim.SGD([p for p in stage.model.parameters() if p.requires_grad], lr=0.1)
    rows = []
    for step in range(2):
        held = stage.begin_step(step) if hasattr(stage, "begin_step") else []
        opt.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(0)
        batch = {"image": torch.rand(6, 3, 64, 64, generator=g), "text": list(_TEXTS), "negative": list(_NEGS)}
        loss, logs = stage.loss(batch)
        loss.backward()
        for p in held:
            p.grad = None
        opt.step()
        stage.after_step()
        rows.append({"loss": float(loss.detach()).hex(), **{k: float(v).hex() for k, v in sorted(logs.items())}})
    return rows


def _as_floats(rows: list[dict]) -> list[dict]:
    return [{k: float.fromhex(v) for k, v in row.items()} for row in rows]


def _assert_same_losses(got: list[dict], want: list[dict]) -> None:
    """The same logs, each value equal to float32's last bits: those follow the CPU's vector unit (the
    references hold bit for bit on the Intel Xeon they were made on; an AMD EPYC differs by ~1e-6
    relative), while any option entering the loss moves it by 1e-3 or more."""
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(_as_floats(got), _as_floats(want)):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", list(_CONFIGS))
def test_teacher_losses_equal_those_before_the_move(name, one_thread):
    from gaussianvision.apps.demo.teacher import build_stage
    _assert_same_losses(_two_steps(build_stage("rgb", base="gsv-tiny", seed=1, **_CONFIGS[name])), _BEFORE[name])


def test_the_references_tell_the_options_apart():
    """The tolerance above is far below what an option changes: no two configurations' losses pass as equal."""
    losses = {n: [float.fromhex(r["loss"]) for r in rows] for n, rows in _BEFORE.items()}
    for a in losses:
        for b in losses:
            if a != b:
                assert losses[a] != pytest.approx(losses[b], rel=1e-4), (a, b)


def test_library_rgb_stage_gives_the_plain_losses_of_before_the_move(one_thread):
    """The library's stage is the old one with every option off, less the teacher's text_locked log."""
    from gaussianvision.train.build import build_stage
    want = [{k: v for k, v in row.items() if k != "text_locked"} for row in _BEFORE["plain"]]
    _assert_same_losses(_two_steps(build_stage("rgb", base="gsv-tiny", seed=1)), want)


def test_gsv_train_builds_the_teacher_only_for_its_flags(tmp_path, read_log, write_splat_shards, capsys):
    """--stage rgb without teacher flags: the library's stage (its describe() names no teacher
    option); with one: the TeacherStage, its settings under the names earlier runs used."""
    root = tmp_path / "img"
    write_splat_shards(root, n_samples=4, per_shard=4)
    common = ["--stage", "rgb", "--base", "gsv-tiny", "--data", str(root), "--in-memory", "--steps", "1",
              "--batch-size", "4"]
    assert _gsv_train(common + ["--out", str(tmp_path / "plain")]) == 0
    assert "--lock-text-steps" not in capsys.readouterr().err
    assert _gsv_train(common + ["--out", str(tmp_path / "lock"), "--lock-text-steps", "1"]) == 0
    # a lock as long as the run is allowed, and said: the text tower never trains
    assert "note: --lock-text-steps 1 >= this run's 1 steps: the text tower stays as initialized" in capsys.readouterr().err
    plain, lock = (json.loads((tmp_path / o / "checkpoints" / "step-00000001" / "state.json").read_text())
                   for o in ("plain", "lock"))
    assert plain["task"] == {"stage": "rgb", "base": "gsv-tiny", "pretrained": None}
    assert plain["resume_keys"] == {"base": None, "pretrained": None}
    assert lock["task"] == {"stage": "rgb", "base": "gsv-tiny", "pretrained": None, "lock_text_steps": 1,
                            "hard_negatives": False, "mirror_pairs": 0.0, "word_loss": 0.0, "word_boost": {}}
    assert lock["resume_keys"] == {"base": None, "pretrained": None, "word_loss": 0.0, "word_boost": {},
                                   "lock_text_steps": 0, "hard_negatives": False, "mirror_pairs": 0.0}
    assert "text_locked" not in read_log(tmp_path / "plain")[0] and read_log(tmp_path / "lock")[0]["text_locked"] == 1.0


# ------------------------------------------------------------------ the tricks (moved from test_train.py)
def test_rgb_lock_text_steps_holds_the_text_tower_then_trains_it(tmp_path, capsys, read_log, write_splat_shards):
    """--lock-text-steps 2: after 2 steps every text parameter (and its optimizer state) is
    bit-identical to its initialization while the image tower moved; after 4 the text moved too."""
    import open_clip
    from safetensors.torch import load_file
    from gaussianvision.models import register_open_clip_configs
    from gaussianvision.train.stages import is_text_param
    register_open_clip_configs()
    root = tmp_path / "img"
    write_splat_shards(root, n_samples=16, per_shard=16)
    out = tmp_path / "rgb"
    rc = _gsv_train(["--stage", "rgb", "--base", "gsv-tiny", "--data", str(root), "--in-memory", "--out", str(out),
                     "--steps", "4", "--batch-size", "4", "--lr", "1e-3", "--lock-text-steps", "2",
                     "--save-every", "2", "--log-every", "1", "--json"])
    assert rc == 0
    torch.manual_seed(0)  # build_stage seeds 0 before creating the model: the same initialization
    init = open_clip.create_model("gsv-tiny").state_dict()
    w2 = load_file(str(out / "checkpoints" / "step-00000002" / "weights.safetensors"))
    w4 = load_file(str(out / "checkpoints" / "step-00000004" / "weights.safetensors"))
    text = [n for n in w2 if is_text_param(n)]
    image = [n for n in w2 if n.startswith("visual.")]
    assert len(text) > 5 and len(image) > 5
    assert all(torch.equal(w2[n], init[n]) for n in text)
    assert not all(torch.equal(w2[n], init[n]) for n in image)
    assert not all(torch.equal(w4[n], init[n]) for n in text)
    logs = read_log(out)
    assert [r["text_locked"] for r in logs] == [1.0, 1.0, 0.0, 0.0]
    capsys.readouterr()
    assert _gsv_train(["--stage", "1", "--data", str(root), "--out", str(tmp_path / "s1"), "--steps", "1",
                       "--lock-text-steps", "2"]) == 2
    assert "--lock-text-steps applies to --stage rgb" in capsys.readouterr().err


def test_rgb_hard_negatives_enter_the_loss_and_need_neg_txt(tmp_path, capsys, read_log, write_splat_shards):
    root = tmp_path / "img"
    write_splat_shards(root, n_samples=8, per_shard=8, negatives=True)
    common = ["--stage", "rgb", "--base", "gsv-tiny", "--data", str(root), "--in-memory", "--steps", "2",
              "--batch-size", "4", "--lr", "1e-3", "--log-every", "1"]
    assert _gsv_train(common + ["--out", str(tmp_path / "plain")]) == 0
    assert _gsv_train(common + ["--out", str(tmp_path / "neg"), "--hard-negatives"]) == 0
    plain, neg = read_log(tmp_path / "plain"), read_log(tmp_path / "neg")
    # same seed, model and batches: extra false captions in every image's softmax raise the loss
    assert neg[0]["loss"] > plain[0]["loss"] + 1e-3
    state = json.loads((tmp_path / "neg" / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["task"]["hard_negatives"] is True
    bare = tmp_path / "bare"
    write_splat_shards(bare, n_samples=8, per_shard=8)
    capsys.readouterr()
    assert _gsv_train(common[:5] + [str(bare)] + common[6:] + ["--out", str(tmp_path / "x"), "--hard-negatives"]) == 2
    err = capsys.readouterr().err
    assert "no .neg.txt member" in err and "000000" in err
    assert _gsv_train(["--stage", "2", "--data", str(root), "--out", str(tmp_path / "s2"), "--steps", "1",
                       "--hard-negatives"]) == 2
    assert "--hard-negatives applies to --stage rgb" in capsys.readouterr().err


def test_rgb_mirror_pairs_contrast_each_twin_in_the_batch(capsys):
    """--mirror-pairs: the loss is the CLIP loss of the batch rebuilt by apps.demo.world.mirror
    (twins beside their originals, same batch size), and the flag is refused outside stage rgb."""
    from gaussianvision.apps.demo.teacher import build_stage
    from gaussianvision.apps.demo.world.mirror import mirror_pairs
    from gaussianvision.train.losses import make_clip_loss
    from gaussianvision.train.stages import pixel_input
    stage = build_stage("rgb", base="gsv-tiny", mirror_pairs=0.5)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 3, 64, 64, generator=g),
             "text": ["a red circle left of a blue square", "a green star", "a red cross above a blue disk",
                      "two small red squares"]}
    with torch.no_grad():
        loss, _ = stage.loss(batch)
        images, texts, _ = mirror_pairs(batch["image"], batch["text"], 1)
        m = stage.model
        img = m.encode_image(pixel_input(images, m.visual), normalize=True)
        txt = m.encode_text(stage.tokenizer(texts), normalize=True)
        want = make_clip_loss()(img, txt, m.logit_scale.exp())
        plain = make_clip_loss()(m.encode_image(pixel_input(batch["image"], m.visual), normalize=True),
                                 m.encode_text(stage.tokenizer(batch["text"]), normalize=True), m.logit_scale.exp())
    assert texts[1] == "a red circle right of a blue square" and torch.equal(images[1], batch["image"][0].flip(-1))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6) and loss.item() != pytest.approx(plain.item())
    assert stage.describe()["mirror_pairs"] == 0.5
    with pytest.raises(ValueError, match="--mirror-pairs must be a fraction"):
        build_stage("rgb", base="gsv-tiny", mirror_pairs=1.5)
    assert _gsv_train(["--stage", "2", "--data", "x", "--out", "y", "--steps", "1", "--mirror-pairs", "0.5"]) == 2
    assert "--mirror-pairs applies to --stage rgb" in capsys.readouterr().err


def test_caption_words_loss_against_a_hand_computation():
    """apps.demo.words.CaptionWords: multi-hot of the caption's ids without the special ones, IDF over
    the captions seen so far (this batch included) times the boost, softmax cross-entropy."""
    from gaussianvision.apps.demo.words import CaptionWords
    torch.manual_seed(0)
    cw = CaptionWords(4, ignore_ids=(0, 9), boost={5: 3.0}, buckets=8)
    tokens = torch.tensor([[9, 5, 2, 0, 0], [9, 2, 3, 3, 0], [9, 2, 0, 0, 0], [9, 2, 0, 0, 0]])
    hot = cw.targets(tokens)
    assert hot[:2].tolist() == [[0, 0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0]]
    emb = torch.randn(4, 4)
    loss = cw(emb, tokens)
    # after this batch: 4 captions; word 2 in all (log 4/5 < 0: the floor 0.05), 3 and 5 in one each
    idf = {2: 0.05, 3: math.log(4 / 2), 5: 3.0 * math.log(4 / 2)}
    logp = cw.head(emb).log_softmax(-1)
    want = 0.0
    for row, words in enumerate(([2, 5], [2, 3], [2], [2])):
        total = sum(idf[w] for w in words)
        want -= sum(idf[w] / total * logp[row, w] for w in words)
    torch.testing.assert_close(loss, want / 4)
    assert cw.docs.item() == 4 and cw.doc_freq[2].item() == 4 and cw.doc_freq[3].item() == 1
    with pytest.raises(ValueError, match="the boost of token 5 must be a positive number"):
        CaptionWords(4, boost={5: 0.0})


def test_rgb_word_loss_adds_to_the_clip_loss_and_is_not_exported(tmp_path, capsys):
    """--word-loss W: the loss is the CLIP loss of the same model plus W x the caption-word loss;
    the head trains with the model but is left out of the OpenCLIP export; bad values refused."""
    from safetensors.torch import load_file
    from gaussianvision.apps.demo.teacher import build_stage
    from gaussianvision.train.build import build_stage as build_library_stage
    batch = {"image": torch.rand(6, 3, 64, 64),
             "text": ["a small red circle left of a large blue square."] * 3 + ["two green stars."] * 3}
    plain = build_library_stage("rgb", base="gsv-tiny", seed=1)
    words = build_stage("rgb", base="gsv-tiny", seed=1, word_loss=0.5, word_boost={"left": 4.0})
    clip, _ = plain.loss(batch)
    total, logs = words.loss(batch)
    torch.testing.assert_close(logs["clip_loss"], float(clip.detach()))
    torch.testing.assert_close(float(total.detach()), float(clip.detach()) + 0.5 * logs["word_loss"], rtol=1e-5, atol=1e-5)
    total.backward()
    assert words.model.word_head.head.weight.grad.abs().sum() > 0
    assert words.describe()["word_boost"] == {"left": 4.0}
    words.export(tmp_path)
    keys = load_file(str(tmp_path / "open_clip_model.safetensors"))
    assert not any(k.startswith("word_head") for k in keys) and set(keys) == set(plain.model.state_dict())
    with pytest.raises(ValueError, match="--word-loss must be a weight >= 0"):
        build_stage("rgb", base="gsv-tiny", word_loss=-1.0)
    with pytest.raises(ValueError, match="not a single token"):
        build_stage("rgb", base="gsv-tiny", word_loss=1.0, word_boost={"left of": 2.0})
    with pytest.raises(ValueError, match="--word-loss and --word-boost apply to --stage rgb"):
        build_stage("1", model_config="gs-tiny", word_loss=1.0)
    assert _gsv_train(["--stage", "rgb", "--data", "x", "--out", "y", "--steps", "1", "--word-loss", "1",
                       "--word-boost", "left"]) == 2
    assert "--word-boost 'left': expected WORD=FACTOR" in capsys.readouterr().err
    assert _gsv_train(["--stage", "rgb", "--data", "x", "--out", "y", "--steps", "1", "--word-loss", "1",
                       "--word-boost", "left=x"]) == 2
    assert "--word-boost 'left=x': FACTOR must be a number" in capsys.readouterr().err


def test_demo_relation_oversampling_repeats_direction_captions():
    """The demo teacher's relation_oversample k: captions that state a direction k times in all,
    the others once."""
    from gaussianvision.apps.demo.pipeline import oversample_relations
    samples = [{"text": "a red circle left of a blue square."}, {"text": "two red circles."},
               {"text": "a star above a cross."}, {"text": "a cross below a circle."}]
    out = oversample_relations(samples, 3)
    assert len(out) == 4 + 2 * 3 and sum("two red circles" in x["text"] for x in out) == 1
    assert oversample_relations(samples, 1) is samples
    with pytest.raises(ValueError, match="relation_oversample must be >= 1"):
        oversample_relations(samples, 0)


def test_caption_words_keep_a_word_that_shares_a_bucket_with_padding():
    """An ignored id (padding 0) hashed into the same bucket as a word must not erase the word."""
    from gaussianvision.apps.demo.words import CaptionWords
    cw = CaptionWords(4, ignore_ids=(0, 9), buckets=8)
    hot = cw.targets(torch.tensor([[9, 16, 0, 0], [9, 0, 16, 0]]))  # 16 % 8 == 0, the bucket of padding
    assert hot[:, 0].tolist() == [1.0, 1.0] and hot.sum().item() == 2


def test_rgb_word_loss_resume_refuses_other_word_settings_and_bad_boosts(tmp_path, capsys, write_splat_shards):
    """--resume with another --word-loss: one error naming the setting, no traceback; a boost of
    zero names the word."""
    root = tmp_path / "img"
    write_splat_shards(root, n_samples=8, per_shard=8)
    out = tmp_path / "rgb"
    common = ["--stage", "rgb", "--base", "gsv-tiny", "--data", str(root), "--in-memory", "--out", str(out),
              "--batch-size", "4", "--lr", "1e-3", "--save-every", "1"]
    assert _gsv_train(common + ["--steps", "2", "--stop-after", "1", "--word-loss", "1", "--word-boost", "left=4"]) == 0
    capsys.readouterr()
    assert _gsv_train(common + ["--steps", "2", "--resume"]) == 2
    assert "--resume: word-loss was 1.0" in capsys.readouterr().err
    assert _gsv_train(common + ["--steps", "2", "--resume", "--word-loss", "1", "--word-boost", "left=4"]) == 0
    assert _gsv_train(["--stage", "rgb", "--data", str(root), "--out", str(tmp_path / "z"), "--steps", "1",
                       "--word-loss", "1", "--word-boost", "left=0"]) == 2
    assert "--word-boost left=0.0: the factor must be a positive number" in capsys.readouterr().err


def test_rgb_resume_refuses_other_teacher_options(tmp_path, capsys, write_splat_shards):
    """Regression (new-user trial): a run stopped with --hard-negatives --lock-text-steps 10 resumed without
    them went on with neither (only --word-loss was compared). (--hard-negatives needs shards with negative
    captions: its resume key is declared beside these, TeacherStage.resume_keys.)"""
    root = tmp_path / "img"
    write_splat_shards(root, n_samples=8, per_shard=8)
    out = tmp_path / "rgb"
    common = ["--stage", "rgb", "--base", "gsv-tiny", "--data", str(root), "--in-memory", "--out", str(out),
              "--batch-size", "4", "--lr", "1e-3", "--save-every", "1", "--steps", "2"]
    options = ["--lock-text-steps", "10", "--mirror-pairs", "0.5"]
    assert _gsv_train(common + options + ["--stop-after", "1"]) == 0
    capsys.readouterr()
    for given, named in (([], "lock-text-steps was 10"), (options[:2], "mirror-pairs was 0.5")):
        assert _gsv_train(common + given + ["--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"--resume: {named} in " in err, err
    assert _gsv_train(common + options + ["--resume"]) == 0
