"""Tiny training data for the train/eval tests: splat shards with source images and captions.

The training tests take these helpers as fixtures (tests/conftest.py: write_splat_shards, read_log,
write_multi_image_shard, train_shards); this module also tests them."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def sample_image(i: int, size: int = 64) -> tuple[np.ndarray, str]:
    name = list(COLORS)[i % len(COLORS)]
    rng = np.random.default_rng(i)
    arr = np.empty((size, size, 3), np.uint8)
    arr[:] = COLORS[name]
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    return arr, name


def random_splats_for(i: int, size: int = 64, n: int = 12):
    from gaussianvision.splats import Splats
    g = torch.Generator().manual_seed(1000 + i)
    means = torch.rand(1, n, 2, generator=g) * size
    chol = torch.stack([2 + 4 * torch.rand(1, n, generator=g), torch.rand(1, n, generator=g) - 0.5,
                        2 + 4 * torch.rand(1, n, generator=g)], -1)
    colors = torch.rand(1, n, 3, generator=g)
    return Splats(means, chol, colors, size, size)


def write_splat_shards(root: Path, n_samples: int = 16, per_shard: int = 8, size: int = 64,
                       negatives: bool = False) -> list[str]:
    """Shards like `gsv convert` writes: key.gsv, key.png (source image), key.txt; with
    `negatives` also key.neg.txt (a hard-negative caption, as the synthetic world writes)."""
    from gaussianvision.data.shards import ShardWriter
    from gaussianvision.splats import encode
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range((n_samples + per_shard - 1) // per_shard):
        path = root / f"shard-{s:04d}.tar"
        with ShardWriter(path) as w:
            for i in range(s * per_shard, min(n_samples, (s + 1) * per_shard)):
                arr, name = sample_image(i, size)
                fields = {"gsv": encode(random_splats_for(i, size)), "png": png_bytes(arr),
                          "txt": f"a photo of something {name}".encode()}
                if negatives:
                    fields["neg.txt"] = f"a photo of nothing {name}".encode()
                w.write(f"{i:06d}", fields)
        paths.append(str(path))
    return paths


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def write_multi_image_shard(path: Path) -> None:
    """One shard of 8 samples (m00000 ...) whose m00003 holds the splats of two images (a sample
    the trainer must skip and count)."""
    from gaussianvision.data.shards import ShardWriter
    from gaussianvision.splats import Splats, encode
    with ShardWriter(path) as w:
        for i in range(8):
            sp = random_splats_for(i)
            if i == 3:
                sp = Splats.stack([sp, random_splats_for(99)])
            w.write(f"m{i:05d}", {"gsv": encode(sp), "png": png_bytes(sample_image(i)[0]), "txt": b"a photo"})


def test_fixture_shards_decode_and_collate(tmp_path):
    """The helpers above, read back through the one decoding (data.loader; also used by test_train*)."""
    from gaussianvision.data.loader import collate, decode_sample
    from gaussianvision.data.shards import read_samples
    paths = write_splat_shards(tmp_path, n_samples=3, per_shard=2)
    assert len(paths) == 2
    items = [decode_sample(raw, ("splats", "image", "text"), None) for p in paths for raw in read_samples(p)]
    assert [it["key"] for it in items] == ["000000", "000001", "000002"]
    batch = collate(items)
    assert batch["splats"].batch_size == 3 and batch["splats"].counts.tolist() == [12, 12, 12]
    assert batch["image"].shape == (3, 3, 64, 64) and batch["text"][1] == "a photo of something green"
    assert decode_sample({"__key__": "k", "txt": b"x"}, ("text",), None)["text"] == "x"
    import pytest
    from gaussianvision.data.loader import DataError
    with pytest.raises(DataError, match="no source image"):
        decode_sample({"__key__": "k", "gsv": next(read_samples(paths[0]))["gsv"]}, ("splats", "image"), None)
