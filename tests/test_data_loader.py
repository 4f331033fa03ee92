"""The splat shard loader: batch contract, shuffling, rank and worker splitting, images, bad samples."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_splats
from gaussianvision.data.images import load_image
from gaussianvision.data.loader import SplatShards, splat_loader
from gaussianvision.data.shards import ShardWriter
from gaussianvision.splats import decode, encode


def png(seed, size=(30, 20)):
    arr = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_shards(root: Path, n_shards=4, per_shard=5, images=False) -> list[str]:
    """Shards whose sample i has i % 7 + 1 Gaussians, caption 'text i', key 'k000i'."""
    root.mkdir(exist_ok=True)
    paths, i = [], 0
    for k in range(n_shards):
        with ShardWriter(root / f"{k:06d}.tar") as w:
            for _ in range(per_shard):
                s = random_splats(1, i % 7 + 1, 16, 16, seed=i)
                fields = {"gsv": encode(s), "txt": f"text {i}".encode(), "json": b"{}"}
                if images:
                    fields["png"] = png(i)
                w.write(f"k{i:04d}", fields)
                i += 1
        paths.append(str(root / f"{k:06d}.tar"))
    return paths


ALL = [f"k{i:04d}" for i in range(20)]


def test_batches_follow_the_contract(tmp_path):
    make_shards(tmp_path / "s")
    batches = list(splat_loader(tmp_path / "s", batch_size=6))
    assert [len(b["key"]) for b in batches] == [6, 6, 6, 2]
    b = batches[0]
    assert set(b) == {"splats", "text", "key"}
    assert b["key"] == ALL[:6] and b["text"] == [f"text {i}" for i in range(6)]
    sp = b["splats"]
    assert sp.counts.tolist() == [1, 2, 3, 4, 5, 6] and sp.max_gaussians == 6 and sp.means.dtype == torch.float32
    want = decode(encode(random_splats(1, 4, 16, 16, seed=3)))
    assert torch.equal(sp.means[3, :4], want.means[0]) and torch.equal(sp.colors[3, :4], want.colors[0])
    assert sp.mask()[0].tolist() == [True] + [False] * 5


def test_shuffle_permutes_but_keeps_every_sample_once(tmp_path):
    make_shards(tmp_path / "s")
    keys = lambda **kw: [k for b in splat_loader(tmp_path / "s", batch_size=4, **kw) for k in b["key"]]  # noqa: E731
    a, b, c = keys(shuffle=True, buffer=8), keys(shuffle=True, buffer=8), keys(shuffle=True, buffer=8, epoch=1)
    assert sorted(a) == ALL and a != ALL
    assert a == b and a != c  # deterministic per (seed, epoch)


def test_ranks_and_workers_partition_the_samples(tmp_path):
    paths = make_shards(tmp_path / "s", n_shards=4)
    seen = []
    for rank in range(2):
        for b in splat_loader(paths, batch_size=3, rank=rank, world_size=2, num_workers=2, shuffle=True):
            seen.extend(b["key"])
    assert sorted(seen) == ALL  # 2 ranks x 2 workers = 4 slots, one shard each


def test_with_images_returns_the_fitting_view(tmp_path):
    make_shards(tmp_path / "s", n_shards=1, per_shard=3, images=True)
    b = next(iter(splat_loader(tmp_path / "s", batch_size=3, with_images=True)))
    assert b["image"].shape == (3, 3, 16, 16)
    assert torch.equal(b["image"][2], load_image(png(2), size=16))
    make_shards(tmp_path / "t", n_shards=1, per_shard=1)
    with pytest.raises(FileNotFoundError, match="--keep-image"):
        next(iter(splat_loader(tmp_path / "t", batch_size=1, with_images=True)))


def test_bad_samples_are_skipped_with_a_warning(tmp_path):
    make_shards(tmp_path / "s", n_shards=1, per_shard=2)
    with ShardWriter(tmp_path / "s" / "000001.tar") as w:
        w.write("bad", {"gsv": b"GSVF junk", "txt": b"x"})
        w.write("good", {"gsv": encode(random_splats(1, 2, 16, 16)), "txt": b"y"})
    with pytest.warns(UserWarning, match="bad"):
        keys = [k for b in splat_loader(tmp_path / "s", batch_size=8) for k in b["key"]]
    assert keys == ["k0000", "k0001", "good"]
    with pytest.raises(Exception, match="bad"):
        list(splat_loader(tmp_path / "s", batch_size=8, on_error="raise"))
    with pytest.raises(FileNotFoundError, match="no splat shards"):
        SplatShards(tmp_path / "empty-*.tar")


def test_truncated_shard_keeps_the_samples_before_the_cut(tmp_path):
    paths = make_shards(tmp_path / "s", n_shards=1, per_shard=5)
    data = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="truncated or corrupt shard"):
        keys = [k for b in splat_loader(paths, batch_size=8) for k in b["key"]]
    assert keys and keys == ALL[: len(keys)] and len(keys) < 5
