import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaussianvision.splats import params as cv

pos = st.floats(0.2, 20.0)


@settings(max_examples=200, deadline=None)
@given(pos, st.floats(-10, 10), pos)
def test_chol_cov_roundtrip(l11, l21, l22):
    chol = torch.tensor([l11, l21, l22], dtype=torch.float64)
    assert torch.allclose(cv.cov_to_chol(cv.chol_to_cov(chol)), chol, rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(pos, pos, st.floats(-math.pi / 2 + 1e-3, math.pi / 2))
def test_scale_rot_roundtrip(a, b, th):
    s1, s2 = max(a, b), min(a, b)
    if s1 - s2 < 1e-3:  # the angle of a circle is undefined
        s1 += 0.01
    sr = torch.tensor([s1, s2, th], dtype=torch.float64)
    back = cv.cov_to_scale_rot(cv.scale_rot_to_cov(sr))
    assert torch.allclose(back, sr, rtol=1e-7, atol=1e-7)
    chol = cv.scale_rot_to_chol(sr)
    assert torch.allclose(cv.chol_to_scale_rot(chol), sr, rtol=1e-7, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(pos, st.floats(-10, 10), pos)
def test_conic_is_inverse(l11, l21, l22):
    chol = torch.tensor([l11, l21, l22], dtype=torch.float64)
    cov = cv.chol_to_cov(chol)
    con = cv.cov_to_conic(cov)
    m = torch.tensor([[cov[0], cov[1]], [cov[1], cov[2]]])
    mi = torch.tensor([[con[0], con[1]], [con[1], con[2]]])
    assert torch.allclose(m @ mi, torch.eye(2, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(cv.conic_to_cov(con), cov, rtol=1e-8)


def test_known_values():
    # a 45-degree ellipse with sigmas 2 and 1
    sr = torch.tensor([2.0, 1.0, math.pi / 4], dtype=torch.float64)
    cov = cv.scale_rot_to_cov(sr)
    assert torch.allclose(cov, torch.tensor([2.5, 1.5, 2.5], dtype=torch.float64))
    assert torch.allclose(cv.luminance(torch.tensor([1.0, 1.0, 1.0])), torch.tensor(1.0))
