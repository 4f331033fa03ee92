"""Deterministic, resumable data order for training.

A source yields the micro-batches of one rank as a pure function of (seed, epoch, rank, world
size, position): `batches(epoch, start)` starts at micro-batch `start` of that epoch, so a resumed
run sees exactly the batches an uninterrupted one would have seen.

* `IndexedSource`: a map-style dataset (len + getitem). Each epoch is a seeded permutation; global
  batch i is the slice [i*B*W, (i+1)*B*W) of it and rank r takes rows [r*B, (r+1)*B) of that, so a
  run on W ranks with batch B sees the same global batches as one rank with batch B*W.
* `ShardSource`: a stream of shards (webdataset tars). Epoch e reads the shards in a seeded order,
  rank r taking every W-th one, mixes samples through a seeded shuffle buffer, and restarts at
  `start` by skipping (reading splats is cheap; no JPEG decoding is involved).
"""
from __future__ import annotations

import random
from typing import Callable, Iterator, Sequence

import torch

from ..data.shards import shuffle_buffer

__all__ = ["IndexedSource", "ShardSource", "epoch_seed"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(rank) * 104_729) % (2 ** 63 - 1)


class IndexedSource:
    def __init__(self, dataset, collate: Callable[[list], dict], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        n = len(dataset)
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if n < batch_size * world_size:
            raise ValueError(f"dataset has {n} samples, fewer than one global batch "
                             f"({batch_size} x {world_size} ranks)")
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.seed, self.rank, self.world_size, self.shuffle = batch_size, seed, rank, world_size, shuffle

    def __len__(self) -> int:
        """Micro-batches per epoch (the incomplete last global batch is dropped)."""
        return len(self.dataset) // (self.batch_size * self.world_size)

    def left_out(self) -> dict:
        """{"skipped_samples": {(url, key)}, "damaged_shards": {url}} left out when the data was read
        (set by build_memory_source)."""
        return {k: set(v) for k, v in getattr(self, "left_out_sets", {}).items()}

    def skipped(self) -> dict:
        """Counts of what left_out() names."""
        return {k: len(v) for k, v in self.left_out().items()}

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

    def skipped(self) -> dict:
        """Counts of what left_out() names."""
        return {k: len(v) for k, v in self.left_out().items()}

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
