"""BatchAdam's fused CPU step (numba, fit/_adam_kernels.py) against its reference twin, the torch step."""
import math

import pytest
import torch

from gaussianvision.fit import FitConfig, Fitter
from gaussianvision.fit.adam import BatchAdam

pytest.importorskip("numba")

TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-6)}
BOUNDS = {"a": ((0.2, -math.inf), (math.inf, 0.5))}


def _pair(dtype):
    g = torch.Generator().manual_seed(3)
    params = {"a": torch.randn(3, 7, 2, generator=g, dtype=dtype), "b": torch.randn(3, 7, 3, generator=g, dtype=dtype)}
    make = lambda fused: BatchAdam({k: p.clone() for k, p in params.items()}, {"a": 0.1, "b": 0.03}, fused=fused)
    return make(True), make(False), g


def _grads(g, dtype, rows=3):
    grads = {"a": torch.randn(rows, 7, 2, generator=g, dtype=dtype), "b": torch.randn(rows, 7, 3, generator=g, dtype=dtype)}
    grads["a"][0, 1, 0] = math.nan
    grads["b"][rows - 1, 2, 1] = math.inf
    grads["b"][0, 0, 2] = -math.inf
    return grads


def _assert_same(fused, ref, dtype):
    rtol, atol = TOL[dtype]
    for k in ref.params:
        for name, x, y in (("params", fused.params[k], ref.params[k]), ("exp_avg", fused.exp_avg[k], ref.exp_avg[k]),
                           ("exp_avg_sq", fused.exp_avg_sq[k], ref.exp_avg_sq[k])):
            assert torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True), (name, k, (x - y).abs().max())
    assert torch.equal(fused.steps, ref.steps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_step_matches_the_torch_step(dtype, monkeypatch):
    """NaN and +-Inf gradients, padding Gaussians (counts), per-image rates, bounds on one parameter and a
    step of a subset of the images: the numba pass gives the torch step's parameters, moments and counts."""
    fused, ref, g = _pair(dtype)
    calls = []
    real = BatchAdam._fused_step
    monkeypatch.setattr(BatchAdam, "_fused_step", lambda self, *a: calls.append(1) or real(self, *a))
    counts = torch.tensor([7, 4, 0])
    for it in range(5):
        grads, scale = _grads(g, dtype), torch.tensor([1.0, 0.5, 0.25 * (it + 1)])
        for opt in (fused, ref):
            opt.step({k: x.clone() for k, x in grads.items()}, lr_scale=scale, counts=counts, bounds=BOUNDS)
    idx = torch.tensor([0, 2])
    grads = _grads(g, dtype, rows=2)
    for opt in (fused, ref):
        opt.step({k: x.clone() for k, x in grads.items()}, idx, 0.7, counts[idx], BOUNDS)
    assert len(calls) == 12  # every step of both parameters took the numba pass
    _assert_same(fused, ref, dtype)
    a = ref.params["a"]
    assert (a[..., 0] >= 0.2).all() and (a[..., 1] <= 0.5).all()
    assert torch.isfinite(ref.params["a"]).all()  # a NaN gradient is taken as 0
    assert ref.steps.tolist() == [6, 5, 6]


def test_padding_gaussians_never_move():
    """A Gaussian past its image's count keeps its value and zero moments, whatever its gradient."""
    for fused in (True, False):
        p0 = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(4))
        opt = BatchAdam({"x": p0.clone()}, {"x": 0.1}, fused=fused)
        for _ in range(3):
            opt.step({"x": torch.randn(2, 4, 3)}, counts=torch.tensor([2, 4]))
        assert torch.equal(opt.params["x"][0, 2:], p0[0, 2:]) and not opt.exp_avg["x"][0, 2:].any()
        assert not torch.equal(opt.params["x"][1], p0[1])


def test_fused_falls_back_to_torch_on_strided_parameters(monkeypatch):
    """A non-contiguous parameter (numba needs the memory as laid out) takes the torch step."""
    base = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(5))
    p = base.transpose(1, 2)  # [2, 5, 3], strided
    opt = BatchAdam({"x": p}, {"x": 0.1}, fused=True)
    ref = BatchAdam({"x": p.contiguous()}, {"x": 0.1})
    monkeypatch.setattr(BatchAdam, "_fused_step", lambda *a: pytest.fail("the numba pass took a strided tensor"))
    grad = torch.randn(2, 5, 3)
    opt.step({"x": grad})
    ref.step({"x": grad})
    assert torch.equal(opt.params["x"], ref.params["x"])


def test_an_unknown_kernel_module_is_an_import_error():
    from gaussianvision.raster.cpu_numba import numba_module
    with pytest.raises(ImportError, match="no kernel module 'gaussianvision.fit._nothing'"):
        numba_module("gaussianvision.fit._nothing")


def test_bounds_of_the_wrong_length_are_named():
    opt = BatchAdam({"x": torch.zeros(1, 2, 3)}, {"x": 0.1})
    with pytest.raises(ValueError, match="bounds need 3 numbers per side"):
        opt.step({"x": torch.ones(1, 2, 3)}, bounds={"x": [[0, 0], [1, 1]]})


def test_a_fit_takes_the_fused_step_with_the_numba_kernels_only(monkeypatch):
    """The numba renderer's fits step with the fused pass, and end where the torch step takes them; the
    reference renderer keeps the torch step (its fits are the reference)."""
    from gaussianvision.data.photos import bundled_photos
    photos = torch.stack([t for _, t in bundled_photos(24, names=("astronaut", "coffee"))])
    cfg = FitConfig(init="grid", backend="numba")
    assert Fitter(photos, 16, cfg).opt.fused and not Fitter(photos, 16, FitConfig(init="grid", backend="reference")).opt.fused
    calls = []
    real = BatchAdam._fused_step
    monkeypatch.setattr(BatchAdam, "_fused_step", lambda self, *a: calls.append(1) or real(self, *a))
    fused = Fitter(photos, 16, cfg).run(30)
    assert len(calls) == 3 * 30  # every parameter, every iteration
    monkeypatch.setattr(BatchAdam, "_fusable", lambda *a: False)
    plain = Fitter(photos, 16, cfg).run(30)
    assert len(calls) == 90
    for k in fused.params:
        assert torch.allclose(fused.params[k], plain.params[k], rtol=1e-4, atol=1e-4), k
