"""The resampler's shared narrow keys/values (resampler.kv_dim, cross_layers): old configs are
unchanged (to the CPU's last bits), the new path is a set function with a reference twin, and its cost is
the formula's; the shipped gs-98-shared meets the cost target (<= 0.6x RGB ViT-B-16 FLOPs)."""
import json

import pytest
import torch
import torch.nn.functional as F

from gaussianvision.apps.bench.model import count_flops, synthetic_splats
from gaussianvision.models import ConfigError, create_gsclip, load_config, parameter_report
from gaussianvision.models import load_weights, save_weights
from gaussianvision.models.resampler import PerceiverResampler

# gs-tiny as shipped before kv_dim existed (an "old config": it lacks the new keys)
OLD_TINY = {"name": "gs-tiny", "base": "gsv-tiny",
            "stem": {"pos_bands": 4, "shape_bands": 2, "hidden": 64, "token_dim": None,
                     "log_sigma_center": -3.5, "log_sigma_width": 1.5},
            "resampler": {"num_latents": 32, "layers": 2, "heads": None, "mlp_ratio": 2.0},
            "pos_embed": "auto", "train_logit_scale": False}


def _old_model():
    torch.manual_seed(0)
    return create_gsclip("gsv-tiny", None, OLD_TINY).eval()


def _old_resampler():
    torch.manual_seed(1)
    r = PerceiverResampler(64, 8, 2, None, 2.0, 32).eval()
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    return r, x, mask


# ------------------------------------------------------------------ old configs unchanged

def _fingerprint(t: torch.Tensor) -> list[float]:
    """First and last three values, sum of squares and sum of magnitudes: any change to the weights'
    initialization or the forward moves them by far more than the last bits."""
    f = t.detach().flatten().double()
    return f[:3].tolist() + f[-3:].tolist() + [float((f * f).sum()), float(f.abs().sum())]


def test_old_config_outputs_equal_the_code_before_the_change():
    # references computed with the code before kv_dim existed (commit b32867e), same seeds: the
    # initialization (RNG order) and the forward are both unchanged.  float32 on x86 CPU; the last bits
    # follow the CPU's vector unit (an Intel Xeon and an AMD EPYC differ by ~1e-6 relative; the
    # sha256 of the outputs held on the first only), hence the tolerance.
    with torch.no_grad():
        e = _old_model().encode_image(synthetic_splats(2, 50, 64, seed=3))
        r, x, mask = _old_resampler()
        y = r(x, mask)
    want_e = [0.9402046799659729, -0.6664959788322449, -0.6684763431549072,
              -0.8916412591934204, -1.7489755153656006, -1.850305438041687, 126.56082153320312, 102.20732116699219]
    want_y = [-0.20149119198322296, 0.6687871217727661, -0.7980211973190308,
              -0.7666361331939697, -0.22003087401390076, 0.805066704750061, 1023.9345703125, 779.52099609375]
    assert _fingerprint(e) == pytest.approx(want_e, rel=1e-5, abs=1e-6)
    assert _fingerprint(y) == pytest.approx(want_y, rel=1e-5, abs=1e-6)


def _old_forward(r: PerceiverResampler, tokens, mask):
    """The pre-change resampler forward, re-implemented from its weights (machine independent)."""
    b = tokens.shape[0]
    keep = torch.cat([mask, torch.ones(b, r.num_latents, dtype=torch.bool)], 1)[:, None, None, :]
    lat = r.latents.unsqueeze(0).expand(b, -1, -1)
    for a, ff in zip(r.attn, r.ff):
        lq = a.norm_q(lat)
        kv = torch.cat([a.to_kv(a.norm_x(tokens)), (a.to_kv_latents or a.to_kv)(lq)], 1)
        k, v = kv.chunk(2, -1)
        sp = lambda t: t.reshape(b, t.shape[1], a.heads, -1).transpose(1, 2)  # noqa: E731
        o = F.scaled_dot_product_attention(sp(a.to_q(lq)), sp(k), sp(v), attn_mask=keep)
        lat = lat + a.out(o.transpose(1, 2).reshape(b, r.num_latents, -1))
        lat = lat + ff(lat)
    return r.norm_out(lat)


def test_old_path_is_bit_identical_to_a_reimplementation_of_the_old_forward():
    r, x, mask = _old_resampler()
    with torch.no_grad():
        assert torch.equal(r(x, mask), _old_forward(r, x, mask))
    assert r.kv_dim is None and not hasattr(r, "to_kv")


def test_old_config_parameter_names_unchanged_and_old_checkpoint_loads(tmp_path, monkeypatch):
    m = _old_model()
    names = {n for n, _ in m.trainable_named_parameters() if n.startswith("visual.resampler.")}
    per_layer = {"norm_q.weight", "norm_q.bias", "norm_x.weight", "norm_x.bias", "to_q.weight",
                 "to_kv.weight", "to_kv.bias", "out.weight", "out.bias"}
    want = {f"visual.resampler.attn.{i}.{p}" for i in range(2) for p in per_layer}
    want |= {f"visual.resampler.ff.{i}.{p}" for i in range(2)
             for p in ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
    want |= {"visual.resampler.latents", "visual.resampler.norm_out.weight", "visual.resampler.norm_out.bias"}
    assert names == want
    # a checkpoint written before the option existed has no kv_dim / cross_layers in its config
    old_cfg = json.loads(json.dumps(m.config))
    for k in ("kv_dim", "cross_layers"):
        del old_cfg["gs"]["resampler"][k]
    monkeypatch.setattr(type(m), "config", property(lambda self: old_cfg))
    path = save_weights(m, tmp_path / "old.safetensors")
    monkeypatch.undo()
    torch.manual_seed(0)  # the same (random) frozen base; the trainable part is wiped, then loaded
    fresh = create_gsclip("gsv-tiny", None, old_cfg["gs"])
    with torch.no_grad():
        for _, p in fresh.trainable_named_parameters():
            p.zero_()
    load_weights(fresh, path)
    s = synthetic_splats(2, 30, 64, seed=5)
    with torch.no_grad():
        assert torch.equal(fresh.eval().encode_image(s), m.encode_image(s))


# ------------------------------------------------------------------ the shared design

def _shared(cross=None, kv=32, layers=3):
    torch.manual_seed(2)
    return PerceiverResampler(64, 8, layers, None, 3.0, 24, kv_dim=kv, cross_layers=cross).eval()


def _reference_shared(r: PerceiverResampler, tokens, mask):
    """Reference twin of the shared path: explicit softmax, masked keys at -inf."""
    b, n, _ = tokens.shape
    kv_set = r.to_kv(r.norm_x(tokens))
    lat = r.latents.unsqueeze(0).expand(b, -1, -1)
    for i, (a, ff) in enumerate(zip(r.attn, r.ff)):
        lq = a.norm_q(lat)
        kv = a.to_kv_latents(lq)
        keep = torch.ones(b, r.num_latents, dtype=torch.bool)
        if i < r.cross_layers:
            kv, keep = torch.cat([kv_set, kv], 1), torch.cat([mask, keep], 1)
        k, v = kv.chunk(2, -1)
        q = a.to_q(lq)
        outs = []
        for h in range(a.heads):
            sl = slice(h * r.kv_dim // a.heads, (h + 1) * r.kv_dim // a.heads)
            s = q[..., sl] @ k[..., sl].transpose(1, 2) / (sl.stop - sl.start) ** 0.5
            s = s.masked_fill(~keep[:, None, :], float("-inf"))
            outs.append(s.softmax(-1) @ v[..., sl])
        lat = lat + a.out(torch.cat(outs, -1))
        lat = lat + ff(lat)
    return r.norm_out(lat)


@pytest.mark.parametrize("cross", [None, 1])
def test_shared_path_matches_reference_twin_and_is_a_set_function(cross):
    r = _shared(cross, kv=64, layers=3)  # kv 64 -> 1 head; heads=2 below
    r2 = PerceiverResampler(64, 8, 2, 2, 2.0, 24, kv_dim=32, cross_layers=cross).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 12, 24, generator=g)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 9:] = False
    mask[2] = False  # no valid Gaussian: still defined (latents attend to themselves)
    with torch.no_grad():
        for m in (r, r2):
            y = m(x, mask)
            torch.testing.assert_close(y, _reference_shared(m, x, mask), rtol=1e-5, atol=1e-5)
            perm = torch.randperm(12, generator=g)
            torch.testing.assert_close(m(x[:, perm], mask[:, perm]), y, rtol=1e-5, atol=1e-5)
            junk = torch.where(mask[..., None], x, torch.full_like(x, 1e3))
            torch.testing.assert_close(m(junk, mask), y, rtol=1e-5, atol=1e-5)
            assert torch.isfinite(y).all()
            assert not torch.allclose(y[0], y[2])  # the set is read
    assert r2.attn[0].heads == 2


def test_shared_path_flops_per_gaussian_are_the_formula():
    # marginal FLOPs per Gaussian: keys/values once (2 x token_dim x 2 kv_dim) plus, in each
    # layer that reads the set, q.k and attn.v (2 x 2 x Q x kv_dim); LayerNorm is not counted
    for cross, layers in ((None, 3), (1, 3), (2, 4)):
        r = PerceiverResampler(64, 8, layers, None, 3.0, 24, kv_dim=32, cross_layers=cross).to("meta")
        f = [count_flops(lambda n=n: r(torch.zeros(1, n, 24, device="meta"))) for n in (100, 300)]
        reads = layers if cross is None else cross
        assert (f[1] - f[0]) == 200 * (4 * 24 * 32 + reads * 4 * 8 * 32)
    old = PerceiverResampler(64, 8, 3, None, 3.0, 24).to("meta")
    f = [count_flops(lambda n=n: old(torch.zeros(1, n, 24, device="meta"))) for n in (100, 300)]
    assert f[1] - f[0] == 200 * 3 * (4 * 24 * 64 + 4 * 8 * 64)


def test_config_keys_and_errors():
    cfg = load_config({"base": "gsv-tiny"})
    assert cfg["resampler"]["kv_dim"] is None and cfg["resampler"]["cross_layers"] is None
    with pytest.raises(ConfigError, match="cross_layers needs resampler.kv_dim"):
        load_config({"resampler": {"cross_layers": 1}})
    with pytest.raises(ConfigError, match="kv_dim"):
        load_config({"resampler": {"kv_dim": 0}})
    with pytest.raises(ValueError, match="not divisible"):
        PerceiverResampler(64, 8, 1, 3, 2.0, 24, kv_dim=32)


def test_gs98_shared_costs_at_most_0_6x_rgb_at_every_n_with_the_paper_trainable_share():
    m = create_gsclip("ViT-B-16", None, "gs-98-shared", device="meta").eval()
    rgb = count_flops(lambda: m.encode_rgb(torch.zeros(1, 3, 224, 224, device="meta")))
    for n in (400, 900, 1600, 3136):
        gs = count_flops(lambda n=n: m.encode_image(synthetic_splats(1, n, 224).to("meta")))
        assert gs <= 0.6 * rgb, (n, gs / rgb)
    rep = parameter_report(m)
    assert 0.097 <= rep["trainable_fraction"] <= 0.138
    assert 0.097 <= rep["trainable_fraction_of_base"] <= 0.138


def test_bench_rows_carry_the_flops_ratio_and_trainable_share(tmp_path):
    from gaussianvision.apps.bench.model import run_model_bench
    shared = tmp_path / "tiny-shared.json"
    shared.write_text(json.dumps({"base": "gsv-tiny", "stem": {"hidden": 32, "token_dim": 32},
                                  "resampler": {"num_latents": 32, "layers": 2, "kv_dim": 32,
                                                "cross_layers": 1}}))
    res = run_model_bench("gsv-tiny", ["gs-tiny", str(shared)], [500], [1], repeats=1)
    rgb, old, new = res["rows"]
    assert rgb["ratio_to_rgb"] == 1.0 and rgb["trainable_fraction"] is None
    for r in (old, new):
        assert r["ratio_to_rgb"] == r["flops_per_image"] / rgb["flops_per_image"]
        cfg = "gs-tiny" if r is old else str(shared)
        want = parameter_report(create_gsclip("gsv-tiny", None, cfg, device="meta"))["trainable_fraction"]
        assert r["trainable_fraction"] == want
    assert new["embed_flops_per_image"] < old["embed_flops_per_image"]
