"""Trainable-only checkpoints: exact round trip, config in metadata, clear mismatch errors."""
import json
import re
import os
from pathlib import Path

import pytest
import torch

from conftest import random_splats
from gaussianvision.models import (WeightsError, create_gsclip, create_gsclip_from_weights,
                                   load_weights, read_weights_config, save_weights)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    m = create_gsclip(config="gs-tiny")
    with torch.no_grad():  # move every trainable tensor away from its initialization
        for _, p in m.trainable_named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_round_trip_outputs_equal(trained, tmp_path):
    from safetensors import safe_open
    path = save_weights(trained, tmp_path / "ck" / "gs.safetensors", metadata={"step": 12})
    assert sorted(p.name for p in path.parent.iterdir()) == ["gs.safetensors"]  # no temp file left
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
    assert names == {n for n, _ in trained.trainable_named_parameters()}
    assert all(n.startswith("visual.") for n in names)

    torch.manual_seed(123)
    fresh = create_gsclip(config="gs-tiny")
    fresh.base.load_state_dict(trained.base.state_dict())  # same frozen base, as a pretrained tag gives
    s = random_splats(3, 50, 64, 64)
    with torch.no_grad():
        assert not torch.equal(fresh.encode_image(s), trained.encode_image(s))
        extra = load_weights(fresh, path)
        assert torch.equal(fresh.encode_image(s), trained.encode_image(s))
    assert extra == {"step": "12"}
    info = read_weights_config(path)
    assert info["config"] == json.loads(json.dumps(trained.config)) and info["pretrained"] is None
    assert info["config"]["gs"]["resampler"]["num_latents"] == 32



def test_a_failed_save_keeps_the_old_checkpoint_and_leaves_no_temporary(trained, tmp_path, monkeypatch):
    """save_weights writes through the one atomic write: a save that fails midway (here safetensors
    writes half a file, then the disk is full) leaves the previous checkpoint byte for byte."""
    import safetensors.torch
    path = save_weights(trained, tmp_path / "gs.safetensors", metadata={"step": 1})
    old = path.read_bytes()

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a safetensors file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        save_weights(trained, path, metadata={"step": 2})
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs.safetensors"]
    with pytest.raises(OSError):
        save_weights(trained, tmp_path / "new.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gs.safetensors"]

def test_rebuild_from_checkpoint(trained, tmp_path):
    path = save_weights(trained, tmp_path / "gs.safetensors")
    m = create_gsclip_from_weights(path, pretrained=None)
    assert m.config == trained.config
    for (n, p), (_, q) in zip(m.trainable_named_parameters(), trained.trainable_named_parameters()):
        assert torch.equal(p, q), n


def test_mismatched_config_is_a_clear_error(trained, tmp_path):
    path = save_weights(trained, tmp_path / "gs.safetensors")
    other = create_gsclip(config={"base": "gsv-tiny", "stem": {"hidden": 64},
                                  "resampler": {"num_latents": 8, "layers": 2}})
    before = {n: p.clone() for n, p in other.trainable_named_parameters()}
    with pytest.raises(WeightsError, match=r"config does not match.*num_latents: checkpoint 32, model 8"):
        load_weights(other, path)
    # and nothing was half-loaded
    assert all(torch.equal(p, before[n]) for n, p in other.trainable_named_parameters())
    # without the config check, the shapes still refuse
    with pytest.raises(WeightsError, match="has shape"):
        load_weights(other, path, strict_config=False)


def test_unreadable_checkpoints(tmp_path, trained):
    from safetensors.torch import save_file
    with pytest.raises(WeightsError, match="no such file"):
        load_weights(trained, tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load_weights(trained, tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(WeightsError, match="not a GS-CLIP trainable checkpoint"):
        load_weights(trained, tmp_path / "plain.safetensors")


def test_a_checkpoint_finds_its_base_file_from_any_folder_and_after_a_move(tmp_path, monkeypatch):
    """A base given as a file path relative to the folder training ran in (gsv train --pretrained
    runs/teacher/...): the model records it absolute, the checkpoint also relative to itself. It
    failed from any other folder ('neither a checkpoint file nor a tag')."""
    import shutil
    from safetensors.torch import save_file
    torch.manual_seed(1)
    base = create_gsclip(config="gs-tiny").base
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()},
              str(tmp_path / "runs" / "teacher" / "open_clip_model.safetensors"))
    monkeypatch.chdir(tmp_path)
    model = create_gsclip(config="gs-tiny", pretrained="runs/teacher/open_clip_model.safetensors")
    assert model.pretrained == str(tmp_path / "runs" / "teacher" / "open_clip_model.safetensors")
    save_weights(model, Path("runs/s2/gsclip.safetensors"))
    s = random_splats(2, 30, 32, 32)
    with torch.no_grad():
        want = model.encode_image(s)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with torch.no_grad():
        assert torch.equal(create_gsclip_from_weights(tmp_path / "runs/s2/gsclip.safetensors").encode_image(s), want)
    shutil.move(tmp_path / "runs", tmp_path / "moved")  # the runs folder taken elsewhere as a whole
    info = read_weights_config(tmp_path / "moved/s2/gsclip.safetensors")
    assert Path(info["pretrained"]).resolve() == (tmp_path / "moved/teacher/open_clip_model.safetensors").resolve()
    with torch.no_grad():
        assert torch.equal(create_gsclip_from_weights(tmp_path / "moved/s2/gsclip.safetensors").encode_image(s), want)


def test_the_relative_base_path_only_stands_in_for_a_missing_absolute_safetensors_file(tmp_path):
    """A checkpoint's own metadata cannot make the loader open another file (say a pickle beside it)
    or replace a tag: the relative fallback applies to a missing absolute path and .safetensors only."""
    from gaussianvision.models.weights import _pretrained
    ck = tmp_path / "s2" / "gs.safetensors"
    ck.parent.mkdir()
    for name in ("base.safetensors", "base.bin"):
        (tmp_path / name).write_bytes(b"x")
    gone = str(tmp_path / "elsewhere" / "base.safetensors")
    meta = lambda stored, rel: {"gsv.pretrained": stored, "gsv.pretrained_rel": rel}  # noqa: E731
    assert _pretrained(meta(gone, "../base.safetensors"), ck) == str(ck.parent / "../base.safetensors")
    assert _pretrained(meta(gone, "../base.bin"), ck) == gone  # another format: never
    assert _pretrained(meta("openai", "../base.safetensors"), ck) == "openai"  # a tag stays a tag
    assert _pretrained(meta(str(tmp_path / "base.safetensors"), "../nothing.safetensors"), ck) == \
        str(tmp_path / "base.safetensors")  # the stored file exists: it wins
    assert _pretrained({"gsv.pretrained": ""}, ck) is None


def test_a_base_file_that_is_no_checkpoint_is_one_config_error(tmp_path):
    """open_clip's loader raised KeyError (a traceback in the CLI) for a file without a model's keys."""
    from safetensors.torch import save_file
    from gaussianvision.models import ConfigError
    junk = tmp_path / "junk.safetensors"
    save_file({"nothing": torch.zeros(2)}, str(junk))
    with pytest.raises(ConfigError, match=r"base 'gsv-tiny' \(pretrained='.*junk.safetensors'\): "):
        create_gsclip(config="gs-tiny", pretrained=str(junk))


def test_a_gs_models_weights_given_as_the_base_say_what_they_are(trained, tmp_path):
    """Regression (new-user trial): --pretrained runs/s1/gsclip.safetensors was "not a usable checkpoint of it
    (RuntimeError: shape '[1, 5, 5, -1]' is invalid ...)"."""
    from gaussianvision.models import ConfigError
    path = save_weights(trained, tmp_path / "gsclip.safetensors")
    with pytest.raises(ConfigError, match=r"^pretrained '.*gsclip.safetensors': a GS model's weights \(gsv train's "
                                          r"gsclip.safetensors\), not weights of the open_clip base gsv-tiny; give"):
        create_gsclip(config="gs-tiny", pretrained=str(path))


def test_a_base_file_that_is_a_pickle_or_a_gsv_is_one_short_config_error(tmp_path, recwarn):
    """Regression: a .gsv file or a pickle refused by weights-only loading as --pretrained were UnpicklingError
    tracebacks; a file with other keys listed every missing key (KBs on one line). No code runs. Nor does torch's
    warning about the pickle's protocol come first, nor its advice to load with weights_only=False (which would
    run the file's code)."""
    import pickle
    from gaussianvision.models import ConfigError

    class Planted:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran"),))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Planted()}))
    gsv = tmp_path / "x.gsv"
    gsv.write_bytes(b"GSVF" + bytes(60))
    wrong = tmp_path / "wrong.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(400)}, wrong)
    framed = tmp_path / "framed.pt"  # tensors only, but a zip of protocol 4, which the weights-only reader refuses
    torch.save({"w": torch.zeros(1)}, framed, pickle_protocol=4)

    class Evaluated:
        def __reduce__(self):
            return (eval, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran"),))

    class Shelled:
        def __reduce__(self):
            return (os.system, ("touch %s" % (tmp_path / "ran"),))
    allowed, blocked = tmp_path / "allowed.pt", tmp_path / "blocked.pt"
    torch.save({"x": Evaluated()}, allowed)  # torch's reason advises allow-listing eval: not passed on
    torch.save({"x": Shelled()}, blocked)  # torch's reason had no marker: only "UnpicklingError" came through
    reasons = {framed: "Unsupported operand 149", evil: "Unsupported operand 149",
               allowed: "Unsupported global: GLOBAL eval was not an allowed global by default",
               blocked: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked"}
    for path in (evil, gsv, wrong, framed, allowed, blocked):
        with pytest.raises(ConfigError) as e:
            create_gsclip(config="gs-tiny", pretrained=str(path))
        msg = str(e.value)
        assert "not a usable checkpoint" in msg and "\n" not in msg and len(msg) < 600, msg
        assert "weights_only` set to `False" not in msg, msg
        if path in reasons:
            assert f"refused it: {reasons[path]}; nothing in it was run" in msg, msg
            assert "add_safe_globals" not in msg and "Please" not in msg, msg
    assert not (tmp_path / "ran").exists()
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)], [str(w.message) for w in recwarn]


def test_random_weights_asked_for_give_no_open_clip_warning(caplog):
    """open_clip warns 'No pretrained weights loaded ... initialized randomly' on the root logger; when random
    weights were asked for it is noise (regression, also on the meta device that gsv model info uses)."""
    import logging
    from gaussianvision.models.gsclip import create_base
    with caplog.at_level(logging.WARNING):
        create_base("gsv-tiny", None)
        create_base("gsv-tiny", None, device="meta")
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert not logging.getLogger().filters  # the filter is removed afterwards


def test_reloading_a_random_base_checkpoint_says_the_base_differs(tmp_path):
    """Regression (trial 6): a model on a random base (no pretrained weights) came back from its checkpoint
    with another random base, embeddings different, without a word."""
    import warnings
    from gaussianvision.models import create_gsclip, create_gsclip_from_weights, save_weights
    path = save_weights(create_gsclip(config="gs-tiny"), tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="frozen base had random weights .* the embeddings differ"):
        create_gsclip_from_weights(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_gsclip_from_weights(path, pretrained=None)  # asked for a random base: nothing to say


def test_a_base_file_of_another_width_is_one_config_error(tmp_path):
    """Regression (new-user trial): a checkpoint of another architecture (open_clip's check: "text pos_embed width
    changed!") was an AssertionError traceback from gsv train; now the one line of every unusable checkpoint."""
    from safetensors.torch import save_file
    from gaussianvision.models import ConfigError
    from gaussianvision.models.gsclip import create_base
    sd = {k: v.clone() for k, v in create_base("gsv-tiny").state_dict().items()}
    rows, width = sd["positional_embedding"].shape
    sd["positional_embedding"] = torch.zeros(rows, 2 * width)
    save_file(sd, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ConfigError) as e:
        create_base("gsv-tiny", pretrained=tmp_path / "wide.safetensors")
    assert str(e.value).endswith("not a usable checkpoint of it (AssertionError: text pos_embed width changed!)"), e.value


@pytest.mark.parametrize("config, says", [
    (None, "no model config (gsv.config missing"),
    ("{bad", "its model config (gsv.config) is not JSON"),
    ("[1]", "is not a GS-CLIP config"),
    ("{}", "is not a GS-CLIP config"),
    ('{"gs": 3, "base": "ViT-B-16", "width": 768, "embed_dim": 512}', "is not a GS-CLIP config"),
])
def test_a_checkpoint_whose_stored_config_is_missing_or_wrong_is_one_weights_error(tmp_path, capsys, config, says):
    """Regression (new-user trial): gsv.format set but gsv.config missing, cut or not a config was a KeyError,
    JSONDecodeError or TypeError traceback (gsv model info, gsv probe, create_gsclip_from_weights)."""
    from safetensors.torch import save_file
    from gaussianvision.apps.cli.main import main as gsv
    path = tmp_path / "odd.safetensors"
    meta = {"gsv.format": "gsclip-trainable", "gsv.version": "1", **({} if config is None else {"gsv.config": config})}
    save_file({"x": torch.zeros(1)}, str(path), metadata=meta)
    for call in (read_weights_config, create_gsclip_from_weights):
        with pytest.raises(WeightsError, match=f"checkpoint {re.escape(str(path))}: .*{re.escape(says)}"):
            call(path)
    with pytest.raises(WeightsError, match=re.escape(says)):
        load_weights(create_gsclip(config="gs-tiny"), path)
    assert gsv(["model", "info", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gsv model: checkpoint") and says in err and "\n" not in err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_safetensors_outputs_get_the_umask_mode_like_every_other_output(tmp_path, umask):
    """Regression (new-user trial): safetensors 0.8 writes 0600 files, so a shared runs folder's models and
    checkpoints were the only outputs others could not read. Now 0666 less the umask, as a plain file."""
    from gaussianvision.train.checkpoint import save_checkpoint
    old = os.umask(umask)
    try:
        model = create_gsclip(config="gs-tiny")
        written = [save_weights(model, tmp_path / "m.safetensors")]
        step = save_checkpoint(tmp_path / "run", 1, model, {"optimizer": {"state": {0: {"m": torch.ones(2)}},
                                                                         "param_groups": []}},
                               {"task": {}, "data_positions": []})
        written += sorted(Path(step).glob("*.safetensors"))
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain").stat().st_mode & 0o777
    assert want == 0o666 & ~umask and len(written) == 3
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: want for p in written}


def test_saving_on_a_file_system_without_modes_keeps_the_file(tmp_path, monkeypatch):
    """Review finding: on vfat or some FUSE mounts chmod fails; a model saved there must not fail for it."""
    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted", str(path))
    monkeypatch.setattr(os, "chmod", refuse)
    path = save_weights(create_gsclip(config="gs-tiny"), tmp_path / "m.safetensors")
    assert read_weights_config(path)["config"]["base"] == "gsv-tiny"


def test_a_model_trained_with_unfrozen_base_blocks_is_rebuilt_whole_from_its_file(tmp_path):
    """Regression (new-user trial): after `gsv train --unfreeze base.visual.transformer.resblocks.0`, the exported
    gsclip.safetensors left the block out, so the model rebuilt from it was another one (embeddings at cosine
    0.85 to the trained model's). Now the block is stored beside the trainable parameters (gsv.unfrozen)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from gaussianvision.train.build import GS_EXPORT, build_stage
    torch.manual_seed(1)
    base = create_gsclip(config="gs-tiny").base
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    block = "base.visual.transformer.resblocks.0"
    stage = build_stage("2", pretrained=str(tmp_path / "base.safetensors"), model_config="gs-tiny", unfreeze=[block])
    model = stage.model
    with torch.no_grad():  # as training moves them: the GS tower and the unfrozen block
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    unfrozen = sorted(n for n, p in model.named_parameters() if p.requires_grad and n.startswith(block))
    assert unfrozen
    s = random_splats(2, 30, 32, 32)
    with torch.no_grad():
        want = model.encode_image(s)
    stage.export(tmp_path / "run")
    path = tmp_path / "run" / GS_EXPORT
    with safe_open(str(path), "pt") as f:
        assert set(unfrozen) <= set(f.keys()) and json.loads(f.metadata()["gsv.unfrozen"]) == unfrozen
        assert f.metadata()["gsv.version"] == "2"  # a reader of version 1 refuses it by its version (review nit)
    with torch.no_grad():
        assert torch.equal(create_gsclip_from_weights(path).encode_image(s), want)
    with safe_open(str(path), "pt") as f:  # a list naming what the model lacks: one WeightsError
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={**meta, "gsv.unfrozen": '["base.nothing"]'})
    with pytest.raises(WeightsError, match="unfrozen base parameters the model does not have: \\['base.nothing'\\]"):
        create_gsclip_from_weights(tmp_path / "bad.safetensors")


def test_base_blocks_an_earlier_run_unfroze_stay_stored_in_the_run_that_goes_on_from_it(tmp_path, monkeypatch):
    """Review finding: run A trained base.ln_final (--unfreeze); run B went on from A (--init-from) without
    --unfreeze, so the block, A's and frozen in B, was left out of B's checkpoints and gsclip.safetensors: the
    model rebuilt from them was not the one B ended with. Now a model keeps such blocks (kept_base) and stores them."""
    from safetensors.torch import save_file
    from gaussianvision.train.build import GS_EXPORT, build_stage
    from gaussianvision.train.checkpoint import load_checkpoint, save_checkpoint, trainable_state
    from gaussianvision.train.stages import freeze_for_stage
    torch.manual_seed(2)
    base = create_gsclip(config="gs-tiny").base
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(tmp_path / "base.safetensors"))
    monkeypatch.chdir(tmp_path)
    a = create_gsclip(config="gs-tiny", pretrained=str(tmp_path / "base.safetensors"))
    freeze_for_stage(a, "2", ["base.ln_final"])
    with torch.no_grad():
        a.base.ln_final.weight.add_(0.5)  # what run A's --unfreeze trained
    task = {"stage": "2", "base": a.base_name, "pretrained": a.pretrained, "model_config": a.gs_config,
            "unfreeze": ["base.ln_final"]}
    save_checkpoint("runA", 1, a, {"optimizer": {"state": {}, "param_groups": []}, "scaler": None},
                    {"train_config": {}, "task": task, "resume_keys": {}, "epoch": 0, "data_positions": [[0, 0]],
                     "rng": [], "world_size": 1, "samples_seen": 0})
    b = build_stage("2", init_from="runA")  # no --unfreeze: the block is frozen in run B
    assert not b.model.base.ln_final.weight.requires_grad and "base.ln_final.weight" in b.model.kept_base
    assert "base.ln_final.weight" in trainable_state(b.model)  # in run B's training checkpoints
    b.export("runB")
    s = random_splats(2, 30, 32, 32)
    text = b.model.tokenizer()(["a cat", "a dog"])
    with torch.no_grad():
        rebuilt = create_gsclip_from_weights("runB/" + GS_EXPORT)
        assert torch.equal(rebuilt.encode_text(text), b.model.encode_text(text))
        assert torch.equal(rebuilt.encode_image(s), b.model.encode_image(s))
    assert "base.ln_final.weight" in rebuilt.kept_base  # and saved again when that model is saved
    assert load_checkpoint("runA")[1]["base.ln_final.weight"].equal(a.base.ln_final.weight.detach())
