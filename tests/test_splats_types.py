from dataclasses import replace

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


def test_stack_of_full_images_equals_the_padding_path():
    """Full images of one size take the concatenation shortcut; it must give exactly what the
    general trim-and-pad path gives (forced here by an explicit, equal, counts tensor)."""
    items = [random_splats(1, 4, seed=k) for k in range(3)] + [random_splats(2, 4, seed=9)]
    fast = Splats.stack(items)
    forced = [replace(items[0], counts=torch.tensor([4]))] + items[1:]
    slow = Splats.stack(forced)
    assert fast.counts.tolist() == [4] * 5 == slow.counts.tolist()
    for f in ("means", "chol", "colors"):
        assert torch.equal(getattr(fast, f), getattr(slow, f))
    mixed = Splats.stack([random_splats(1, 4), random_splats(1, 3)])  # sizes differ: padded
    assert mixed.counts.tolist() == [4, 3] and mixed.max_gaussians == 4


def test_scaled_matches_geometry():
    s = random_splats(1, 2, h=10, w=20)
    t = s.scaled(30, 40)  # sx = 2, sy = 3
    assert torch.allclose(t.means, s.means * torch.tensor([2.0, 3.0]))
    from gaussianvision.splats.params import chol_to_cov
    cov, cov2 = chol_to_cov(s.chol), chol_to_cov(t.chol)
    assert torch.allclose(cov2, cov * torch.tensor([4.0, 6.0, 9.0]), rtol=1e-5)


def test_hflip_renders_the_mirrored_image():
    """Splats.hflip: x -> width - x and l21 -> -l21; its render is the render flipped left-right
    (to float precision, by the reference renderer), for an odd-width, non-square image."""
    from gaussianvision.raster.reference import render_reference
    s = random_splats(3, 7, h=12, w=17)
    s.counts = torch.tensor([7, 3, 0])
    f = s.hflip()
    torch.testing.assert_close(render_reference(f), render_reference(s).flip(-1), atol=1e-5, rtol=0)
    cov = __import__("gaussianvision.splats.params", fromlist=["chol_to_cov"]).chol_to_cov
    torch.testing.assert_close(cov(f.chol), cov(s.chol) * torch.tensor([1.0, -1.0, 1.0]))
    torch.testing.assert_close(f.hflip().means, s.means, rtol=0, atol=1e-5)  # width - (width - x): rounding only
    assert torch.equal(f.hflip().chol, s.chol)
    assert torch.equal(f.colors, s.colors) and torch.equal(f.counts, s.counts)


def test_hflip_of_some_images_only():
    s = random_splats(3, 5, h=16, w=16)
    f = s.hflip(torch.tensor([False, True, False]))
    for b, flipped in enumerate((False, True, False)):
        want = s.hflip() if flipped else s
        assert torch.equal(f.means[b], want.means[b]) and torch.equal(f.chol[b], want.chol[b])
    with pytest.raises(SplatsError, match="hflip: `which` has 2 entries for a batch of 3"):
        s.hflip(torch.tensor([True, False]))


def test_images_by_number_or_slice_and_clear_errors_for_anything_else():
    """Regression (new-user trial): splats[0:1] was a TypeError from inside (slice + int), splats[-1] an empty
    batch, splats[5] torch's IndexError, and save(path, tensor) "'Tensor' object has no attribute 'validate'"."""
    from gaussianvision.splats import format as fmt
    s = random_splats(3, 10, 16, 16)
    s = replace(s, counts=torch.tensor([10, 4, 7]))
    part = s[1:3]
    assert part.batch_size == 2 and part.counts.tolist() == [4, 7] and torch.equal(part.means, s.means[1:3])
    assert torch.equal(s[-1].means, s[2].means) and s[-1].max_gaussians == 7
    assert torch.equal(s[::2].colors, s.colors[[0, 2]])
    assert fmt.decode(fmt.encode(s[0:2])).max_gaussians == 10  # a slice is a batch like any other
    for bad, error, says in ((5, IndexError, "image 5 of a batch of 3"), (-4, IndexError, "image -4 of a batch of 3"),
                             (slice(3, 5), IndexError, "the slice selects no image of a batch of 3"),
                             ("0", TypeError, "Splats indices are an image number or a slice, got str"),
                             (True, TypeError, "got bool")):
        with pytest.raises(error, match=says):
            s[bad]
    with pytest.raises(TypeError, match="^encode / save: expected a Splats .*got Tensor$"):
        fmt.encode(torch.zeros(1, 4, 8))
