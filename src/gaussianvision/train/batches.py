"""The trainer's batches: a deterministic, resumable order over decoded samples.

The samples are decoded by data/loader.py (decode_sample, collate, SampleReader: the one decoding
and skip policy, shared with `splat_loader`); this module holds only what the trainer adds, the
order. A source yields the micro-batches of one rank as a pure function of (seed, epoch, rank,
world size, position): `batches(epoch, start)` starts at micro-batch `start` of that epoch, so a
resumed run sees exactly the batches an uninterrupted one would have seen.

* `IndexedSource`: a map-style dataset (len + getitem). Each epoch is a seeded permutation; global
  batch i is the slice [i*B*W, (i+1)*B*W) of it and rank r takes rows [r*B, (r+1)*B) of that, so a
  run on W ranks with batch B sees the same global batches as one rank with batch B*W.
  `build_memory_source` makes one of samples held in memory (`gsv train --in-memory`).
* `ShardSource`: a stream of shards (webdataset tars). Epoch e reads the shards in a seeded order,
  rank r taking every W-th one, mixes samples through a seeded shuffle buffer, and restarts at
  `start` by skipping (reading splats is cheap; no JPEG decoding is involved). `build_source`
  makes one over a SampleReader; `count_samples` counts what it would use.

Kept apart from data/loader.py's `SplatShards`, whose order (rank x DataLoader worker slots) is a
user's DataLoader loop's, not a resumable one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import urllib.parse
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from gaussianvision.data.inputs import expand_urls, local_size
from gaussianvision.data.loader import DataError, SampleReader, caption_text, collate, require_members
from gaussianvision.data.shards import SHARD_ERRORS, samples_until_damage, shuffle_buffer  # noqa: F401 (SHARD_ERRORS)

__all__ = ["IndexedSource", "ShardSource", "epoch_seed", "build_source", "build_memory_source", "count_samples",
           "DataError", "data_identity", "empty_captions"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(rank) * 104_729) % (2 ** 63 - 1)


class IndexedSource:
    def __init__(self, dataset, collate: Callable[[list], dict], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True, left_out: dict | None = None):
        n = len(dataset)
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if n < batch_size * world_size:
            raise ValueError(f"dataset has {n} samples, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.seed, self.rank, self.world_size, self.shuffle = batch_size, seed, rank, world_size, shuffle
        self._left_out = {k: set(v) for k, v in (left_out or {}).items()}

    def __len__(self) -> int:
        """Micro-batches per epoch (the incomplete last global batch is dropped)."""
        return len(self.dataset) // (self.batch_size * self.world_size)

    def left_out(self) -> dict:
        """{"skipped_samples": {(url, key)}, "damaged_shards": {url}} left out when the data was read
        (given by build_memory_source)."""
        return {k: set(v) for k, v in self._left_out.items()}

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return torch.randperm(n, generator=g)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        perm = self.order(epoch)
        gb = self.batch_size * self.world_size
        for i in range(start, len(self)):
            idx = perm[i * gb + self.rank * self.batch_size: i * gb + (self.rank + 1) * self.batch_size]
            yield self.collate([self.dataset[int(j)] for j in idx])


class ShardSource:
    """read_shard(url) -> iterator of sample dicts; collate(list of samples) -> batch dict."""

    def __init__(self, shards: Sequence[str], read_shard: Callable[[str], Iterator[dict]],
                 collate: Callable[[list], dict], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, buffer: int = 1000):
        shards = list(shards)
        if not shards:
            raise ValueError("no shards given")
        if len(shards) < world_size:
            raise ValueError(f"{len(shards)} shard(s) cannot feed {world_size} ranks: convert the data "
                             f"into at least {world_size} shards")
        self.shards, self.read_shard, self.collate = shards, read_shard, collate
        self.batch_size, self.seed, self.rank, self.world_size, self.buffer = batch_size, seed, rank, world_size, buffer

    def __len__(self):  # unknown without reading: epochs end when this rank's shards run out
        raise TypeError("ShardSource has no length")

    def left_out(self) -> dict:
        """What the shard reader left out so far: {"skipped_samples": {(url, key)}, "damaged_shards": {url}}."""
        return self.read_shard.left_out() if hasattr(self.read_shard, "left_out") else {}

    def _samples(self, epoch: int) -> Iterator[dict]:
        rng = random.Random(epoch_seed(self.seed, epoch, self.rank))
        order = list(self.shards)
        random.Random(epoch_seed(self.seed, epoch)).shuffle(order)
        mine = (sample for url in order[self.rank::self.world_size] for sample in self.read_shard(url))
        yield from shuffle_buffer(mine, self.buffer, rng)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict]:
        items: list = []
        i = 0
        for sample in self._samples(epoch):
            items.append(sample)
            if len(items) == self.batch_size:
                if i >= start:
                    yield self.collate(items)
                items = []
                i += 1


def _say_damage(url: str, reason: str) -> None:
    print(f"gsv train: warning: shard {url} is damaged ({reason}); "
          "its samples before the damage are used", file=sys.stderr)


def build_source(spec, need: tuple[str, ...], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, image_size: int | None = None, buffer: int = 1000) -> ShardSource:
    """Shards (dir, brace pattern, glob or list) -> a deterministic ShardSource for this rank, its
    samples decoded as `need` says (data.loader.decode_sample); a damaged shard is named once on stderr."""
    urls = expand_urls(spec)
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if not urls or missing:
        given = " ".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)  # not a Python list
        raise DataError(f"--data {given}: " + (f"shard not found: {missing[0]}" if missing else
                                               "no .tar shards found" + _subfolder_hint(spec)))
    return ShardSource(urls, SampleReader(need, image_size, on_damage=_say_damage), collate, batch_size,
                       seed=seed, rank=rank, world_size=world_size, buffer=buffer)


def data_identity(urls: Sequence[str], in_memory: bool, buffer: int) -> dict:
    """What a run's batch order depends on besides the seed: its shards, named by file name and size (a data
    folder moved or copied is the same data; a remote shard by the name in its URL's path alone, so a refreshed
    signed URL is the same shard), whether they are held in memory (another order) and the shuffle buffer of a
    stream. Saved with the run; `--resume` refuses another (train/resume.py)."""
    def name(u: str) -> str:  # a URL's query (a signature) is no part of the shard
        return os.path.basename(urllib.parse.urlsplit(u).path if "://" in u else u)
    shards = [[name(str(u)), local_size(str(u))] for u in urls]
    digest = hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]
    return {"shards": len(shards), "digest": digest, "in_memory": bool(in_memory),
            "shuffle_buffer": None if in_memory else int(buffer)}


def empty_captions(source, limit: int = 256) -> tuple[int, int]:
    """(samples without a caption, samples looked at) over the first `limit` samples of the data in shard order:
    what `gsv train` checks before a stage that learns from captions. Samples in memory are looked at as they
    are; shards are read for their .txt members alone, nothing decoded and nothing reported (the trainer
    reports damage where it reads), and a remote shard is not fetched for it (review finding: the look went
    through the trainer's reader, decoding every image and listing shard 0's damage as the run's)."""
    if hasattr(source, "dataset"):
        texts = [source.dataset[i].get("text") for i in range(min(limit, len(source.dataset)))]
        return sum(not t for t in texts), len(texts)
    texts = []
    for url in source.shards:
        if "://" in str(url) or len(texts) >= limit:
            break
        for raw in samples_until_damage(url):
            if raw.get("__skipped__"):  # a sample the damage cut: the trainer leaves it out
                continue
            texts.append(caption_text(raw))
            if len(texts) >= limit:
                break
    return sum(not t for t in texts), len(texts)


def _subfolder_hint(spec) -> str:
    """Where a --data folder holds no shards of its own but its subfolders do (two conversions side by side,
    each writing 000000.tar): which, and how to give them (folders are not searched recursively)."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    subs = [q for item in items if Path(str(item)).is_dir() for q in _listed(Path(str(item))) if _holds_shards(q)]
    if not subs:
        return ""
    shown = " ".join(f"--data {q}" for q in subs[:4]) + (" ..." if len(subs) > 4 else "")
    return f" in it; its subfolders hold shards (folders are not searched below their own level): give them, {shown}"


def _listed(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:  # unreadable: no hint, the error stays "no .tar shards found"
        return []


def _holds_shards(folder: Path) -> bool:
    """Whether `folder` is a folder with shards of its own; False where it cannot be read (say lost+found at the
    root of a data disk: its PermissionError had replaced the real error; review finding)."""
    try:
        return folder.is_dir() and bool(expand_urls(str(folder)))
    except OSError:
        return False


def build_memory_source(samples: list[dict], batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                        left_out: dict | None = None) -> IndexedSource:
    """Decoded samples held in memory -> an IndexedSource (epochs of known length); `left_out`: what
    reading them left out, as SampleReader.left_out() names it (reported in the training summary)."""
    return IndexedSource(samples, collate, batch_size, seed=seed, rank=rank, world_size=world_size,
                         left_out=left_out)


def count_samples(urls, need: tuple[str, ...] = ()) -> int:
    """Samples a ShardSource would use, short of decoding them: a damaged shard counts those before
    the damage, and a sample the reader flags (cut by the damage, members not read) is not counted.
    A counted sample lacking a member `need` reads from raises MissingMember, as reading it would."""
    n = 0
    for u in urls:
        for raw in samples_until_damage(u):  # the damage is named by the reader when training reaches it
            if "__skipped__" not in raw:
                require_members(raw, need)
                n += 1
    return n
