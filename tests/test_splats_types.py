import pytest
import torch

from conftest import random_splats
from gaussianvision.splats import Splats, SplatsError


def test_mask_and_counts():
    s = random_splats(3, 4)
    s.counts = torch.tensor([4, 0, 2])
    assert s.mask().tolist() == [[True] * 4, [False] * 4, [True, True, False, False]]
    assert s[2].max_gaussians == 2 and s[1].max_gaussians == 0


@pytest.mark.parametrize("field,value,msg", [
    ("means", torch.zeros(1, 3, 3), "means: expected shape"),
    ("chol", torch.zeros(1, 3, 3), "Cholesky diagonal must be positive"),
    ("colors", torch.full((1, 3, 3), float("nan")), "colors: non-finite"),
    ("means", torch.zeros(1, 3, 2, dtype=torch.long), "floating dtype"),
])
def test_validate_errors(field, value, msg):
    s = random_splats(1, 3)
    setattr(s, field, value)
    with pytest.raises(SplatsError, match=msg):
        s.validate()


def test_validate_ignores_padding():
    s = random_splats(1, 3)
    s.chol[0, 2] = 0.0  # padding may hold anything
    s.counts = torch.tensor([2])
    s.validate()
    s.counts = torch.tensor([4])
    with pytest.raises(SplatsError, match="counts"):
        s.validate()


def test_stack_pads_with_counts():
    a, b = random_splats(1, 3, seed=1), random_splats(2, 5, seed=2)
    s = Splats.stack([a, b])
    assert s.counts.tolist() == [3, 5, 5] and s.max_gaussians == 5
    assert torch.equal(s.means[0, :3], a.means[0]) and torch.equal(s.colors[2], b.colors[1])
    s.validate()


def test_scaled_matches_geometry():
    s = random_splats(1, 2, h=10, w=20)
    t = s.scaled(30, 40)  # sx = 2, sy = 3
    assert torch.allclose(t.means, s.means * torch.tensor([2.0, 3.0]))
    from gaussianvision.splats.convert import chol_to_cov
    cov, cov2 = chol_to_cov(s.chol), chol_to_cov(t.chol)
    assert torch.allclose(cov2, cov * torch.tensor([4.0, 6.0, 9.0]), rtol=1e-5)
