"""GSCLIP on the tiny OpenCLIP base: freezing, set semantics, dtypes, OpenCLIP contract."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import random_splats
from gaussianvision.models import ConfigError, create_base, create_gsclip, create_rgb_clip, load_config
from gaussianvision.models.tower import grid_for
from gaussianvision.splats import Splats

TINY = "gs-tiny"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_gsclip(config=TINY)


@pytest.fixture(scope="module")
def tokens(model):
    return model.tokenizer()(["a photo of a cat", "a dog", "a red car", "grass"])


def _splats(b=4, n=40, seed=0):
    return random_splats(b, n, 64, 64, seed=seed)


def test_frozen_parts_bit_identical_after_optimizer_step(tokens):
    import open_clip
    torch.manual_seed(0)
    m = create_gsclip(config=TINY)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if n.startswith("base.")}
    trainable = {n: p.detach().clone() for n, p in m.trainable_named_parameters()}
    assert trainable and all(n.startswith("visual.") for n in trainable)
    m.train()
    assert m.visual.training and not m.base.training and not m.base.visual.transformer.training
    # every parameter goes to the optimizer, with weight decay: freezing alone must protect
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    loss = open_clip.loss.ClipLoss()(**m(_splats(), tokens))
    loss.backward()
    opt.step()
    for n, p in m.named_parameters():
        if n.startswith("base."):
            assert p.grad is None, n
            assert torch.equal(p, frozen[n]), n
    changed = [n for n, p in m.trainable_named_parameters() if not torch.equal(p, trainable[n])]
    assert set(changed) == set(trainable)


def test_cliploss_gradient_reaches_only_trainable_parts(model, tokens):
    import open_clip
    model.zero_grad(set_to_none=True)
    out = model(_splats(), tokens)
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    assert out["image_features"].shape == (4, 64)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(4))
    loss = open_clip.loss.ClipLoss()(**out)
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    model.zero_grad(set_to_none=True)


def test_order_of_gaussians_does_not_matter(model):
    s = _splats(2, 60)
    perm = torch.randperm(60)
    p = Splats(s.means[:, perm], s.chol[:, perm], s.colors[:, perm], s.height, s.width)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(s), model.encode_image(p), atol=1e-5, rtol=1e-4)


def test_padding_behind_mask_changes_nothing_and_mixed_n(model):
    items = [_splats(1, n, seed=n) for n in (1, 17, 300)]
    batch = Splats.stack(items)
    # garbage in the padding must be ignored
    batch.means[0, 1:] = 1e6
    batch.chol[1, 17:] = torch.tensor([-5.0, float("nan"), 0.0])
    with torch.no_grad():
        out = model.encode_image(batch)
        for b, s in enumerate(items):
            torch.testing.assert_close(out[b:b + 1], model.encode_image(s), atol=1e-5, rtol=1e-4)
        # explicit extra padding on an unpadded batch
        s = _splats(2, 30)
        padded = Splats(torch.cat([s.means, torch.rand(2, 9, 2)], 1), torch.cat([s.chol, torch.rand(2, 9, 3)], 1),
                        torch.cat([s.colors, torch.rand(2, 9, 3)], 1), 64, 64, torch.tensor([30, 30]))
        torch.testing.assert_close(model.encode_image(padded), model.encode_image(s), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n", [0, 1, 2, 400, 3136])
def test_any_number_of_gaussians(model, n):
    with torch.no_grad():
        f = model.encode_image(_splats(2, n, seed=n))
    assert f.shape == (2, 64) and torch.isfinite(f).all()
    if n:
        assert not torch.allclose(f[0], f[1])  # different images, different embeddings
    else:
        torch.testing.assert_close(f[0], f[1])  # two empty images are the same image


def test_resolution_of_the_splats_does_not_matter(model):
    s = _splats(2, 50)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(s.scaled(224, 160)), model.encode_image(s), atol=1e-4, rtol=1e-4)


def test_bfloat16(model):
    s = _splats(3, 80)
    with torch.no_grad():
        ref = model.encode_image(s, normalize=True)
        m16 = copy.deepcopy(model).to(torch.bfloat16)
        out = m16.encode_image(s.to(torch.bfloat16), normalize=True)
        assert out.dtype == torch.bfloat16
        assert F.cosine_similarity(out.float(), ref, dim=-1).min() > 0.98
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model.encode_image(s, normalize=True)
        assert F.cosine_similarity(amp.float(), ref, dim=-1).min() > 0.98
    built = create_gsclip(config=TINY, precision="bf16")
    assert built.visual.proj.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(built.encode_image(s).float()).all()


def test_encode_rgb_is_the_frozen_base_and_inputs_are_checked(model):
    import open_clip
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, toks = model.encode_rgb_with_tokens(img)
        torch.testing.assert_close(model.encode_rgb(img), model.base.encode_image(img))
        torch.testing.assert_close(feats, model.base.encode_image(img))
    assert toks.shape == (2, 64, 64)  # 8 x 8 patches of width 64
    assert model.rgb_mean == open_clip.OPENAI_DATASET_MEAN and model.image_size == (64, 64)
    assert model.visual.pos_embed_mode == "interp"
    with pytest.raises(TypeError, match="expected Splats.*encode_rgb"):
        model.encode_image(img)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        model.encode_rgb(torch.randn(3, 64, 64))
    # regression (new-user trial): open_clip's "size of tensor a (785) must match ... (65)", torch's embedding()
    with pytest.raises(ValueError, match=r"^GSCLIP.encode_rgb: the base takes 64x64 images \(model.image_size\), got 224x224$"):
        model.encode_rgb(torch.randn(1, 3, 224, 224))
    for text, got in (("a cat", "str"), (torch.zeros(2, 3), "a tensor \\[2, 3\\] of torch.float32"),
                      (torch.zeros(77, dtype=torch.long), "a tensor \\[77\\] of torch.int64")):
        with pytest.raises(TypeError, match=f"expected token ids \\[B, L\\] \\(model.tokenizer\\(\\)\\(captions\\)\\), got {got}$"):
            model.encode_text(text)
    with torch.no_grad():
        assert model.encode_text(model.tokenizer()(["a cat"])).shape == (1, model.config["embed_dim"])


def test_zero_shot_builders_from_open_clip_and_clip_benchmark(model):
    from clip_benchmark.metrics import zeroshot_classification as zsc
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    classes = ["cat", "dog", "car"]
    tok = model.tokenizer()
    w = build_zero_shot_classifier(model, tok, classes, ["a photo of a {}.", "a {}."], num_classes_per_batch=2)
    assert w.shape == (64, 3)

    class DS(torch.utils.data.Dataset):
        classes = ["cat", "dog", "car"]

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return _splats(1, 10 + 5 * i, seed=i), i % 3

    def collate(batch):
        return Splats.stack([s for s, _ in batch]), torch.tensor([y for _, y in batch])

    dl = torch.utils.data.DataLoader(DS(), batch_size=4, collate_fn=collate)
    res = zsc.evaluate(model, dl, tok, classes, ["a photo of a {c}."], device="cpu", amp=True)
    assert set(res) == {"acc1", "acc5", "mean_per_class_recall"} and 0.0 <= res["acc1"] <= 1.0


def test_pos_embed_modes(model):
    m = create_gsclip(config={"base": "gsv-tiny", "resampler": {"num_latents": 64, "layers": 1}})
    assert m.visual.pos_embed_mode == "copy"
    assert torch.equal(m.visual.positional_embedding, m.base.visual.positional_embedding)
    m16 = create_gsclip(config={"base": "gsv-tiny", "resampler": {"num_latents": 16, "layers": 1}})
    base_pos = m16.base.visual.positional_embedding
    assert m16.visual.positional_embedding.shape == (17, 64)
    assert torch.equal(m16.visual.positional_embedding[0], base_pos[0])
    # 16 latents: the 8 x 8 grid resized to 4 x 4 is the mean of each 2 x 2 block
    grid = base_pos[1:].reshape(8, 8, 64)
    block = grid.reshape(4, 2, 4, 2, 64).mean((1, 3)).reshape(16, 64)
    torch.testing.assert_close(m16.visual.positional_embedding[1:].detach(), block.detach())
    # gs-tiny's 32 latents: 4 x 8, each the mean of two rows
    rows = model.base.visual.positional_embedding[1:].reshape(4, 2, 8, 64).mean(1).reshape(32, 64)
    torch.testing.assert_close(model.visual.positional_embedding[1:].detach(), rows.detach())
    assert grid_for(98, (14, 14)) == (7, 14) and grid_for(196, (14, 14)) == (14, 14) and grid_for(7, (2, 2)) == (1, 7)
    with pytest.raises(ConfigError, match="'copy' needs num_latents"):
        create_gsclip(config={"base": "gsv-tiny", "pos_embed": "copy", "resampler": {"num_latents": 10}})
    assert torch.equal(model.visual.class_embedding, model.base.visual.class_embedding)
    assert torch.equal(model.visual.proj, model.base.visual.proj)


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'layer'"):
        load_config({"resampler": {"layer": 3}})
    with pytest.raises(ConfigError, match="num_latents must be an integer from 1 to 65536, got 0"):
        load_config({"resampler": {"num_latents": 0}})
    with pytest.raises(ConfigError, match="num_latents must be an integer from 1 to 65536"):  # hung in grid_for
        load_config({"resampler": {"num_latents": 10 ** 12}})
    # regression: NaN / inf were a traceback (int(nan)) or NaN embeddings; 1e12 asked for terabytes
    for section, key, bad in (("resampler", "mlp_ratio", math.nan), ("resampler", "mlp_ratio", math.inf),
                              ("resampler", "mlp_ratio", 1e12), ("stem", "log_sigma_center", math.nan),
                              ("stem", "log_sigma_width", math.inf)):
        with pytest.raises(ConfigError, match=f"{section}.{key} must be a number"):
            load_config({section: {key: bad}})
    with pytest.raises(ConfigError, match="resampler.kv_dim 64 is not divisible by resampler.heads 3"):
        load_config({"resampler": {"kv_dim": 64, "heads": 3}})
    with pytest.raises(ConfigError, match="resampler.heads 7 does not divide the width 64 of base 'gsv-tiny'"):
        create_gsclip(config={"base": "gsv-tiny", "resampler": {"heads": 7}})  # was a ValueError traceback
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)  # regression: a RecursionError traceback
    with pytest.raises(ConfigError, match="cannot read JSON: RecursionError"):
        load_config(tmp_path / "deep.json")
    with pytest.raises(ConfigError, match="not a shipped config"):
        load_config("gs-nope")
    (tmp_path / "c.json").write_text("{bad")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        load_config(tmp_path / "c.json")
    (tmp_path / "d.json").write_text('{"base": "gsv-tiny", "resampler": {"num_latents": 3}}')
    assert load_config(str(tmp_path / "d.json"))["resampler"]["num_latents"] == 3
    with pytest.raises(ConfigError, match="unknown OpenCLIP architecture"):
        create_gsclip(base="ViT-Q-99", config=TINY)
    # regression (new-user trial): a tag after the architecture reached open_clip, whose message lists every model
    with pytest.raises(ConfigError, match="an architecture name is 'gsv-tiny' alone; its pretrained tag 'openai'"):
        create_gsclip(base="gsv-tiny:openai", config=TINY)
    with pytest.raises(ConfigError, match="unknown OpenCLIP architecture"):
        create_gsclip(base="ViT-Q-99:openai", config=TINY)
    # regression (new-user trial): a missing file was "neither a checkpoint file nor a tag of gsv-tiny"
    with pytest.raises(ConfigError, match=r"missing\.pt': no such file \(a checkpoint file of gsv-tiny, or a tag: none\)"):
        create_gsclip(config=TINY, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match=r"': not a file \(a checkpoint file of gsv-tiny"):
        create_gsclip(config=TINY, pretrained=str(tmp_path))
    with pytest.raises(ConfigError, match="'laion9': neither a checkpoint file nor a tag of gsv-tiny"):
        create_gsclip(config=TINY, pretrained="laion9")


def test_local_pretrained_checkpoint_works_offline(tmp_path):
    import open_clip
    torch.manual_seed(3)
    ref = open_clip.create_model("gsv-tiny")  # registered by importing gaussianvision.models
    torch.save(ref.state_dict(), tmp_path / "tiny.pt")
    m = create_gsclip(config=TINY, pretrained=tmp_path / "tiny.pt")
    for (n, p), (n2, q) in zip(m.base.state_dict().items(), ref.state_dict().items()):
        assert n == n2 and torch.equal(p, q), n
    rgb = create_rgb_clip("gsv-tiny", pretrained=tmp_path / "tiny.pt")
    assert all(not p.requires_grad for p in rgb.parameters())
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rgb.encode_image(img), m.encode_rgb(img))
        assert set(rgb(img, m.tokenizer()(["x"]))) >= {"image_features", "text_features", "logit_scale"}
    assert not create_base("gsv-tiny").training


def test_vit_b16_trainable_fraction_in_paper_range():
    from gaussianvision.models import parameter_report
    m = create_gsclip("ViT-B-16", None, "gs-196")  # real CPU build, random init, no download
    r = parameter_report(m)
    assert r["base_total"] == 149_620_737
    assert r["parts"]["text"]["params"] == 63_428_096
    assert r["total"] == r["base_total"] + r["gs_total"] and r["trainable"] == r["gs_total"]
    assert 0.097 <= r["trainable_fraction"] <= 0.138, r["trainable_fraction"]
    assert m.visual.pos_embed_mode == "copy" and m.image_size == (224, 224)
    m98 = parameter_report(create_gsclip("ViT-B-16", None, "gs-98", device="meta"))
    assert m98["base_total"] == 149_620_737
    assert 0.097 <= m98["trainable_fraction"] <= 0.138, m98["trainable_fraction"]
    assert m98["trainable"] < r["trainable"]


# ---------------------------------------------------------------- offline hub (issue 18)
@pytest.fixture
def offline(monkeypatch):
    """No network: every socket connect fails (counted); hub downloads are counted too."""
    import socket

    import huggingface_hub
    import open_clip.pretrained
    from gaussianvision import net
    calls = {"connect": 0, "download": 0}

    def connect(*a, **k):
        calls["connect"] += 1
        raise OSError("[Errno -2] Name or service not known")

    def download(*a, **k):
        calls["download"] += 1
        raise OSError("no network")
    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", download)
    monkeypatch.setattr(net, "_SEEN", {})  # forget earlier probes
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # empty cache
    return calls


def test_offline_hub_tag_fails_at_once_with_one_clear_line(offline):
    for _ in range(2):
        with pytest.raises(ConfigError) as e:
            create_rgb_clip("ViT-B-16", "openai")
        msg = str(e.value)
        assert "\n" not in msg and "'openai'" in msg and "not reachable" in msg
        assert "local checkpoint file" in msg and "HF_HUB_OFFLINE" in msg
    assert offline == {"connect": 1, "download": 0}  # one probe per process, no download retries


def test_hf_hub_offline_env_skips_the_probe(offline, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        create_gsclip(base="ViT-B-16", pretrained="openai", config=TINY)
    assert offline == {"connect": 0, "download": 0}


def test_offline_local_checkpoint_file_needs_no_network(offline, tmp_path):
    import open_clip
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file
    save_file(open_clip.create_model("gsv-tiny").state_dict(), str(path))
    assert create_rgb_clip("gsv-tiny", path) is not None
    assert offline == {"connect": 0, "download": 0}


def test_offline_hub_tag_in_the_local_cache_loads_without_network(offline, monkeypatch, tmp_path):
    import huggingface_hub
    import open_clip
    from huggingface_hub import constants
    seen = {}
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **k: str(tmp_path / name))

    def create_model(name, pretrained=None, **k):
        seen["offline"], seen["pretrained"] = constants.HF_HUB_OFFLINE, pretrained
        return torch.nn.Linear(1, 1)
    monkeypatch.setattr(open_clip, "create_model", create_model)
    create_base("ViT-B-16", "openai")
    assert seen == {"offline": True, "pretrained": "openai"} and offline["connect"] == 1
    assert constants.HF_HUB_OFFLINE is False  # restored afterwards


def test_offline_rgb_stage_with_a_hub_tag_fails_at_once(offline):
    """gsv train --stage rgb --pretrained openai builds its model through the same hub check."""
    from gaussianvision.train.build import build_stage
    with pytest.raises(ConfigError, match="not reachable") as e:
        build_stage("rgb", base="ViT-B-16", pretrained="openai")
    assert "\n" not in str(e.value)
    assert offline == {"connect": 1, "download": 0}
