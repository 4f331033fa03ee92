"""Training data: samples of tar shards (splat shards from `gsv convert`, or img2dataset
image-text shards for the RGB trainer) decoded and collated into batches, and the resumable
source built from them.

A sample becomes {"splats": Splats (one image), "image": [3, S, S] in [0, 1], "text": str,
"negative": str (hard-negative caption, from KEY.neg.txt), "key": str}; a batch is
{"splats": Splats padded with counts, "image": [B, 3, S, S], "text": list, "negative": list, "key": list}.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from gaussianvision.data.shards import ShardDamage, read_samples
from gaussianvision.splats import Splats
from gaussianvision.train.sources import IndexedSource, ShardSource

__all__ = ["collate", "decode_sample", "build_source", "DataError", "IMAGE_EXTS", "SHARD_ERRORS", "count_samples"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")

# What reading a shard can raise after the samples before the problem: damage (cut, garbled:
# ShardDamage) or a file that cannot be opened or read (OSError). The one list, for every reader.
SHARD_ERRORS = (ShardDamage, OSError)


class DataError(ValueError):
    """Training data missing or lacking what the stage needs."""


def decode_sample(raw: dict, need: tuple[str, ...], image_size: int | None) -> dict | None:
    """One raw tar sample -> decoded fields in `need` ("splats", "image", "text", "negative");
    None if unusable."""
    from gaussianvision.data.images import ImageLoadError, load_image
    from gaussianvision.splats import FormatError, decode
    out = {"key": raw.get("__key__", "")}
    try:
        if "splats" in need:
            if "gsv" not in raw:
                raise DataError(f"sample {out['key']} of {raw.get('__shard__')}: no .gsv member "
                                "(give splat shards written by `gsv convert`)")
            out["splats"] = decode(raw["gsv"], name=out["key"])
            if out["splats"].batch_size != 1:  # a multi-image .gsv is not one training sample
                return None
        if "image" in need:
            ext = next((e for e in IMAGE_EXTS if e in raw), None)
            if ext is None:
                raise DataError(f"sample {out['key']} of {raw.get('__shard__')}: no source image; this stage needs "
                                "the images (convert with the images kept, or give the image shards)")
            size = image_size or (out["splats"].height if "splats" in out else 224)
            out["image"] = load_image(raw[ext], size=size, name=out["key"])
        if "text" in need:
            out["text"] = raw.get("txt", b"").decode("utf-8", "replace").strip()
        if "negative" in need:
            if "neg.txt" not in raw:
                raise DataError(f"sample {out['key']} of {raw.get('__shard__')}: no .neg.txt member (hard negatives "
                                "need one false caption per sample, as the synthetic world writes them)")
            out["negative"] = raw["neg.txt"].decode("utf-8", "replace").strip()
    except (ImageLoadError, FormatError):
        return None  # a broken sample is skipped, as the loaders of the field do
    return out


def collate(items: list[dict]) -> dict:
    batch: dict = {"key": [it["key"] for it in items]}
    if "splats" in items[0]:
        batch["splats"] = Splats.stack([it["splats"] for it in items])
    if "image" in items[0]:
        batch["image"] = torch.stack([it["image"] for it in items])
    for field in ("text", "negative"):
        if field in items[0]:
            batch[field] = [it[field] for it in items]
    return batch


def count_samples(urls) -> int:
    """Usable samples in the shards: a damaged shard counts those before the damage, and a sample
    the reader flags (cut by the damage, members not read) is not counted."""
    n = 0
    for u in urls:
        try:
            for raw in read_samples(u):
                n += "__skipped__" not in raw
        except SHARD_ERRORS:
            pass  # the reader names the shard when training reaches it
    return n


class _ShardReader:
    """url -> decoded samples. A damaged shard (cut, garbled) ends at the damage, keeping the samples
    before it; an undecodable sample, or one the reader flags in "__skipped__" (cut by the damage,
    members not read), is skipped. Both are counted (see `skipped`) and each damaged shard is named
    once on stderr."""

    def __init__(self, need, image_size):
        self.need, self.image_size = need, image_size
        self.bad_samples: set[tuple[str, str]] = set()
        self.damaged: dict[str, str] = {}

    def __call__(self, url):
        raws = read_samples(url)
        while True:
            try:
                raw = next(raws, None)
            except SHARD_ERRORS as e:
                self._damage(url, e)
                return
            if raw is None:
                return
            s = None if "__skipped__" in raw else decode_sample(raw, self.need, self.image_size)
            if s is None:
                self.bad_samples.add((str(url), str(raw.get("__key__", ""))))
            else:
                yield s

    def _damage(self, url, e) -> None:
        if url not in self.damaged:
            self.damaged[url] = f"{type(e).__name__}: {e}"
            print(f"gsv train: warning: shard {url} is damaged ({self.damaged[url]}); "
                  "its samples before the damage are used", file=sys.stderr)

    def left_out(self) -> dict:
        """{"skipped_samples": {(url, key)} undecodable or cut samples, "damaged_shards": {url} shards cut short}."""
        return {"skipped_samples": set(self.bad_samples), "damaged_shards": set(self.damaged)}

    def skipped(self) -> dict:
        """Counts of what left_out() names."""
        return {k: len(v) for k, v in self.left_out().items()}


def build_source(spec, need: tuple[str, ...], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, image_size: int | None = None, buffer: int = 1000):
    """Shards (dir, brace pattern, glob or list) -> a deterministic ShardSource for this rank."""
    from gaussianvision.data.inputs import expand_urls
    urls = expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or missing:
        raise DataError(f"--data {spec}: " + (f"shard not found: {missing[0]}" if missing else "no .tar shards found"))
    return ShardSource(urls, _ShardReader(need, image_size), collate, batch_size, seed=seed, rank=rank,
                       world_size=world_size, buffer=buffer)


def build_memory_source(samples: list[dict], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                        left_out: dict | None = None):
    """Decoded samples held in memory -> an IndexedSource (epochs of known length); `left_out`: what
    reading them left out, as _ShardReader.left_out() names it (reported in the training summary)."""
    src = IndexedSource(samples, collate, batch_size, seed=seed, rank=rank, world_size=world_size)
    src.left_out_sets = {k: set(v) for k, v in (left_out or {}).items()}
    return src
