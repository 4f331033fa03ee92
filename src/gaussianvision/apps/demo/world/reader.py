"""Reading the world back: (image tensor, caption, meta) from image-text shards, and
(image tensor, label, meta) from a task, without webdataset: the project's one tar reader
(data/shards.py read_samples, through writer.iter_tar); a sample's image member is found by
data.images.image_member (the project's one IMAGE_EXTS)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from gaussianvision.apps.demo.world.writer import iter_tar
from gaussianvision.data.images import image_member

__all__ = ["decode_image", "iter_samples", "iter_task", "shard_paths"]


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> [3, H, W] float32 in [0, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def shard_paths(root: str | os.PathLike, split: str = "train") -> list[Path]:
    """Tars of a split: `root` may be a world directory, a split directory or one tar file."""
    root = Path(root)
    if root.is_file():
        return [root]
    d = root / split if (root / split).is_dir() else root
    paths = sorted(d.glob("*.tar"))
    if not paths:
        raise FileNotFoundError(f"no .tar shards in {d}")
    return paths


def _image(members: dict[str, bytes]) -> bytes:
    ext = image_member(members)
    if ext is not None:
        return members[ext]
    raise KeyError(f"no image member among {sorted(members)}")


def iter_samples(root: str | os.PathLike, split: str = "train") -> Iterator[tuple[torch.Tensor, str, dict]]:
    """Yield (image [3, H, W] float in [0, 1], caption, meta dict) in key order of each shard."""
    for path in shard_paths(root, split):
        for _key, m in iter_tar(path):
            yield decode_image(_image(m)), m["txt"].decode(), json.loads(m["json"]) if "json" in m else {}


def iter_task(task_dir: str | os.PathLike, split: str = "test") -> Iterator[tuple[torch.Tensor, int, dict]]:
    """Yield (image, class index, meta) from a task in clip_benchmark's wds layout."""
    task_dir = Path(task_dir)
    nshards = int((task_dir / split / "nshards.txt").read_text())
    for i in range(nshards):
        for _key, m in iter_tar(task_dir / split / f"{i}.tar"):
            yield decode_image(_image(m)), int(m["cls"]), json.loads(m["json"]) if "json" in m else {}
