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


@pytest.fixture
def no_interp(monkeypatch):
    """The compiled Triton kernels (on CUDA tensors the interpreter would otherwise run them)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


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


# ------------------------------------------- training data (the helpers: tests/test_train_fixtures.py)
# The training tests take these as fixtures rather than putting tests/ on sys.path themselves
# (pytest's prepend import mode puts this folder there for conftest.py).

@pytest.fixture(scope="session")
def write_splat_shards():
    """write_splat_shards(root, n_samples=16, per_shard=8, size=64, negatives=False) -> the shard
    paths: key.gsv, key.png (source image), key.txt (and key.neg.txt with negatives), as `gsv
    convert` and the synthetic world write them."""
    import test_train_fixtures
    return test_train_fixtures.write_splat_shards


@pytest.fixture(scope="session")
def read_log():
    """read_log(out) -> the records of OUT/log.jsonl."""
    import test_train_fixtures
    return test_train_fixtures.read_log


@pytest.fixture(scope="session")
def write_multi_image_shard():
    """write_multi_image_shard(path): a shard of 8 samples, one of them (m00003) with two images."""
    import test_train_fixtures
    return test_train_fixtures.write_multi_image_shard


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory, write_splat_shards) -> str:
    """A folder of 16 samples in two shards (splats, source image, caption), written once per module."""
    root = tmp_path_factory.mktemp("shards")
    write_splat_shards(root, n_samples=16, per_shard=8)
    return str(root)


def peak_memory(fn):
    """(fn()'s result or the exception it raised, the peak bytes traced by tracemalloc meanwhile)."""
    import tracemalloc
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    except Exception as e:
        return e, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

