import math

import pytest
import torch

from conftest import random_splats
from gaussianvision.fit import FitConfig, Fitter, fit_images
from gaussianvision.fit.prune import PAD_FILL, compact, importance, prune_splats, select_prune
from gaussianvision.raster import render
from gaussianvision.splats import Splats, decode, encode

REF = {"backend": "reference"}


def test_luma_mistakes_chroma_for_nothing_the_others_do_not():
    s = random_splats(1, 3, 16, 16)
    s.colors = torch.tensor([[[0.3, -0.2, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]])
    s.colors[0, 0, 2] = -(0.299 * 0.3 - 0.587 * 0.2) / 0.114  # zero luminance, strong chroma
    s.chol = torch.tensor([[[2.0, 0.0, 2.0]] * 3])
    luma, mx, en = (importance(s, m)[0] for m in ("luma", "max_color", "energy"))
    assert luma[0] < 1e-6 and mx[0] > 0.25 and en[0] > 0.03
    assert mx[1] == 0 and en[1] == 0
    # energy grows with the footprint: same color, 4x the area -> 2x the score
    s.chol[0, 2] = torch.tensor([4.0, 0.0, 4.0])
    assert float(importance(s, "energy")[0, 2]) == pytest.approx(2 * float(en[2]), rel=1e-5)


def test_select_prune_fraction_and_tau_respect_counts():
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0], [0.5, 0.1, 9.0, 9.0, 9.0]])
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    drop = select_prune(scores, valid, fraction=0.4)
    assert drop.tolist() == [[False, True, False, True, False], [False, False, False, False, False]]
    drop = select_prune(scores, valid, fraction=0.5)  # floor(0.5 * 2) = 1 in image 1
    assert drop[1].tolist() == [False, True, False, False, False]
    drop = select_prune(scores, valid, tau=2.5)  # image 1: every Gaussian under tau; its best one stays
    assert drop.tolist() == [[False, True, False, True, False], [False, True, False, False, False]]
    drop = select_prune(scores, valid, tau=2.5, fraction=0.2)  # under tau, at most 20%
    assert drop.sum(1).tolist() == [1, 0] and bool(drop[0, 1])
    assert not select_prune(scores, valid).any()


def test_pruning_everything_keeps_each_images_most_important_gaussian():
    """Regression: prune_fraction=1.0 (or a tau above every score) emptied the images and the fit
    failed ("element 0 of tensors does not require grad")."""
    scores = torch.tensor([[5.0, 1.0, 3.0], [0.5, 0.7, math.inf]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert select_prune(scores, valid, fraction=1.0).tolist() == [[False, True, True], [True, False, False]]
    assert select_prune(scores, valid, tau=1e9).tolist() == [[False, True, True], [True, False, False]]
    none = torch.zeros(1, 3, dtype=torch.bool)  # an image with no Gaussians stays as it is
    assert not select_prune(torch.full((1, 3), math.inf), none, fraction=1.0).any()
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    res = fit_images(img, 6, iters=3, init="grid", prune_fraction=1.0, finetune_iters=2, backend="reference")
    assert res.splats.num_gaussians().tolist() == [1, 1] and [m["pruned"] for m in res.metrics] == [5, 5]


def test_compact_keeps_order_and_pads():
    t = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    out, counts = compact({"chol": t}, keep, PAD_FILL)
    assert counts.tolist() == [3, 1] and out["chol"].shape == (2, 3, 3)
    assert torch.equal(out["chol"][0], t[0, [0, 2, 3]])
    assert torch.equal(out["chol"][1, 0], t[1, 1])
    assert out["chol"][1, 1:].tolist() == [[1.0, 0.0, 1.0]] * 2


def test_prune_splats_render_matches_the_kept_gaussians():
    s = random_splats(2, 10, 16, 18)
    p, removed = prune_splats(s, "max_color", fraction=0.3)
    assert removed.tolist() == [3, 3] and p.counts.tolist() == [7, 7]
    for b in range(2):
        keep = importance(s, "max_color")[b].argsort(descending=True)[:7].sort().values
        alone = Splats(s.means[b:b + 1, keep], s.chol[b:b + 1, keep], s.colors[b:b + 1, keep], 16, 18)
        assert torch.allclose(render(p[b], backend="reference"), render(alone, backend="reference"), atol=1e-6)


def test_fitter_prune_edits_parameters_and_adam_state_together():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=g)
    f = Fitter(images, 12, FitConfig(init="random", **REF))
    f.run(3)
    before = {k: v.clone() for k, v in f.params.items()}
    m_before = {k: v.clone() for k, v in f.opt.exp_avg.items()}
    v_before = {k: v.clone() for k, v in f.opt.exp_avg_sq.items()}
    scores = importance(f.splats(), "energy")
    removed = f.prune("energy", fraction=0.25)
    assert removed.tolist() == [3, 3] and f.counts.tolist() == [9, 9]
    assert f.opt.params is f.params  # the optimizer steps the new tensors
    for b in range(2):
        kept = scores[b].argsort(descending=True)[:9].sort().values
        for k in ("means", "chol", "colors"):
            assert torch.equal(f.params[k][b], before[k][b, kept])
            assert torch.equal(f.opt.exp_avg[k][b], m_before[k][b, kept])
            assert torch.equal(f.opt.exp_avg_sq[k][b], v_before[k][b, kept])
    f.run(2)  # fitting continues with the pruned state
    assert f.iterations.tolist() == [5, 5]
    res = f.result()
    assert [m["n_gaussians"] for m in res.metrics] == [9, 9] and [m["pruned"] for m in res.metrics] == [3, 3]


def test_uneven_pruning_keeps_per_image_counts_through_the_file_format():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 16, 16, generator=g)
    images[1] = 0.0  # black: every color fits to ~0, so a tau rule removes most Gaussians there
    res = fit_images(images, 16, iters=30, init="grid", prune_measure="max_color", prune_tau=0.02,
                     finetune_iters=2, **REF)
    counts = res.splats.counts.tolist()
    assert counts[1] < counts[0] and [m["n_gaussians"] for m in res.metrics] == counts
    back = decode(encode(res.splats, dtype="float32"))
    assert back.counts.tolist() == counts
    assert torch.allclose(render(back, backend="reference"), render(res.splats, backend="reference"), atol=1e-5)


def test_l1_luminance_penalty_shrinks_luminance(tmp_path):
    g = torch.Generator().manual_seed(2)
    images = torch.rand(1, 3, 16, 16, generator=g) * 0.2
    plain = fit_images(images, 16, iters=30, init="grid", **REF)
    pen = fit_images(images, 16, iters=30, init="grid", prune_lambda=0.05, **REF)
    from gaussianvision.splats.params import luminance
    assert luminance(pen.splats.colors).abs().mean() < luminance(plain.splats.colors).abs().mean()
