import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# Triton decides at its first import whether @triton.jit builds interpretable functions, and some
# library may import triton before the Triton tests run: so the interpreter is on for the whole
# session (it only matters on CPU tensors; the backend re-reads the variable on every call).
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_splats(b=2, n=5, h=16, w=20, seed=0, dtype=torch.float32, margin=0.0):
    """Random but well-conditioned splats (means may lie up to `margin` px outside the image)."""
    from gaussianvision.splats import Splats
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(b, n, 2, generator=g, dtype=torch.float64)
    means = means * torch.tensor([w + 2 * margin, h + 2 * margin], dtype=torch.float64) - margin
    chol = torch.stack([
        0.8 + 3 * torch.rand(b, n, generator=g, dtype=torch.float64),
        (torch.rand(b, n, generator=g, dtype=torch.float64) - 0.5) * 3,
        0.8 + 3 * torch.rand(b, n, generator=g, dtype=torch.float64),
    ], -1)
    colors = torch.rand(b, n, 3, generator=g, dtype=torch.float64)
    return Splats(means.to(dtype), chol.to(dtype), colors.to(dtype), h, w)
