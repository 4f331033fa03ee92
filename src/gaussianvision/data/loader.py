"""Loading splat shards (made by `gsv convert`) for training: a torch IterableDataset.

    loader = splat_loader("out/{000000..000127}.tar", batch_size=256, shuffle=True, num_workers=4)
    for batch in loader:
        batch["splats"]   # Splats: means [B, N, 2], chol [B, N, 3], colors [B, N, 3] (float32),
                          #   padded to the batch's largest N; counts [B] (int64) = valid Gaussians
        batch["text"]     # list[str] of B captions ("" when the source had none)
        batch["key"]      # list[str] of B sample keys
        batch["image"]    # only with with_images=True: [B, 3, H, W] float32 in [0, 1], the source
                          #   image resized and center-cropped exactly as for fitting (H, W = the
                          #   splats' size); needs shards converted with --keep-image
This dict is the contract with the training code; keep it stable.

Splitting: shards are dealt to (DDP rank, DataLoader worker) slots round-robin (rank and world
size from torch.distributed when initialized, else $RANK / $WORLD_SIZE), so every sample is read
once per epoch over the whole job. With shuffle, the shard order is permuted per epoch with the
same seed on every rank (call `set_epoch(e)` or pass epoch=), and samples go through a shuffle
buffer of `buffer` samples. For DDP, give every rank the same number of shards of equal size
(convert's shards are) or use drop_last, so ranks see equal batch counts.

A sample that does not decode is skipped with a warning (on_error="raise" to stop instead);
so is the rest of a truncated or corrupt shard (the samples before the damage are kept), and a
member the reader did not read (a link, a device) is warned about; `problems` counts the
warnings of this process.
"""
from __future__ import annotations

import os
import random
import tarfile
import warnings
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gaussianvision.splats import format as fmt
from gaussianvision.splats.format import FormatError
from gaussianvision.splats.types import Splats
from gaussianvision.data.images import ImageLoadError, load_image
from gaussianvision.data.shards import read_samples, shuffle_buffer
from gaussianvision.data.inputs import IMAGE_EXTS, expand_urls

__all__ = ["SplatShards", "collate_splats", "splat_loader"]


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class SplatShards(IterableDataset):
    """Samples {"splats": decoded rows (internal; collate_splats makes the Splats batch), "text",
    "key"[, "image"]} from splat tar shards."""

    def __init__(self, urls, shuffle: bool = False, buffer: int = 1000, with_images: bool = False,
                 seed: int = 0, epoch: int = 0, rank: int | None = None, world_size: int | None = None,
                 on_error: str = "warn"):
        self.urls = expand_urls(urls)
        if not self.urls:
            raise FileNotFoundError(f"{urls}: no splat shards (.tar) found")
        missing = [u for u in self.urls if not os.path.isfile(u)]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: no such splat shard")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.shuffle, self.buffer, self.with_images = shuffle, max(1, buffer), with_images
        self.seed, self.epoch, self.on_error = seed, epoch, on_error
        self.rank, self.world_size = rank, world_size
        self.problems = 0  # problems reported (warned) so far in this process: samples skipped, shards cut short

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self) -> list[str]:
        rank, world = _dist_rank_world()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = list(self.urls)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        slots = world * nw
        if len(order) < slots and self.epoch == 0 and wid == 0:
            warnings.warn(f"{len(order)} shards for {slots} rank x worker slots: some will read nothing")
        return order[rank * nw + wid:: slots]

    def _problem(self, msg: str) -> None:
        self.problems += 1
        if self.on_error == "raise":
            raise FormatError(msg)
        warnings.warn(msg)

    def _decode(self, raw: dict) -> dict | None:
        where = f"{raw['__shard__']}:{raw['__key__']}"
        skipped = "; ".join(raw.get("__skipped__", ()))
        if "gsv" not in raw:
            self._problem(f"{where}: sample has no .gsv member" + (f" ({skipped})" if skipped else ""))
            return None
        if skipped:  # kept: its .gsv is whole; what it lost is said
            self._problem(f"{where}: {skipped}")
        try:
            splats = _decode_one(raw["gsv"], where)
        except FormatError as e:
            self._problem(str(e))
            return None
        item = {"splats": splats, "text": raw.get("txt", b"").decode("utf-8", errors="replace"),
                "key": raw["__key__"]}
        if self.with_images:
            ext = next((e for e in IMAGE_EXTS if e in raw), None)
            if ext is None:
                raise FileNotFoundError(f"{where}: no source image in the shard; convert with --keep-image "
                                        f"to train with images")
            h, w = splats[3], splats[4]
            if h != w:
                raise ValueError(f"{where}: with_images needs square splats, got {h}x{w}")
            try:  # the source image as the fitter saw it: shorter side to the splats' size, center crop
                item["image"] = load_image(raw[ext], size=h, name=where)
            except ImageLoadError as e:
                self._problem(str(e))
                return None
        return item

    def _samples(self) -> Iterator[dict]:
        for url in self.my_shards():
            it = read_samples(url)
            while True:
                try:  # only the tar reading is guarded: decoding problems are reported per sample
                    raw = next(it)
                except StopIteration:
                    break
                except (tarfile.TarError, OSError, EOFError) as e:
                    self._problem(f"{url}: truncated or corrupt shard ({e}); rest of the shard skipped")
                    break
                item = self._decode(raw)
                if item is not None:
                    yield item

    def __iter__(self) -> Iterator[dict]:
        if not self.shuffle:
            yield from self._samples()
            return
        info = get_worker_info()
        rank, _ = _dist_rank_world()
        rng = random.Random(hash((self.seed, self.epoch, rank, info.id if info else 0)))
        yield from shuffle_buffer(self._samples(), self.buffer, rng)


def _decode_one(data: bytes, where: str) -> tuple:
    """A one-image .gsv -> (rows [n, 8] float32 as stored, n, counts, height, width).

    The per-sample path of a training loader, kept in numpy (one torch conversion per batch);
    the checks are those of format.decode, which handles multi-image files."""
    view = memoryview(data).cast("B")
    hdr = fmt.read_header(view, where)
    if hdr.n_images != 1:
        raise FormatError(f"{where}: a dataset sample must hold one image, this file holds {hdr.n_images}")
    try:
        rows = fmt.LAYOUTS[hdr.layout].decode(view[fmt.HEADER_SIZE:], hdr.n_total, hdr.dtype)
    except FormatError:
        raise
    except Exception as e:
        raise FormatError(f"{where}: payload does not decode: {e}") from e
    if rows.shape != (hdr.n_total, 8):
        raise FormatError(f"{where}: payload decoded to {rows.shape[0]} rows, header says {hdr.n_total}")
    if not np.isfinite(rows).all():
        raise FormatError(f"{where}: non-finite value in a Gaussian")
    if (rows[:, [2, 4]] <= 0).any():
        raise FormatError(f"{where}: a Gaussian has a non-positive Cholesky diagonal")
    return rows, hdr.n_total, None, hdr.height, hdr.width


def _stack(parts: list[tuple]) -> Splats:
    h, w = parts[0][3], parts[0][4]
    for k, p in enumerate(parts):
        if (p[3], p[4]) != (h, w):
            raise ValueError(f"batch mixes splat sizes: sample {k} is {p[3]}x{p[4]}, sample 0 is {h}x{w}")
    n_max = max(p[1] for p in parts)
    out = np.zeros((len(parts), n_max, 8), dtype=np.float32)
    out[..., 2] = 1.0  # padding keeps a valid (masked) factor
    out[..., 4] = 1.0
    for b, p in enumerate(parts):
        out[b, : p[1]] = p[0]
    t = torch.from_numpy(out)
    means = (t[..., 0:2].double() + 1.0) * 0.5 * torch.tensor([w, h], dtype=torch.float64)
    counts = torch.tensor([p[1] for p in parts], dtype=torch.long)
    return Splats(means.float(), t[..., 2:5].contiguous(), t[..., 5:8].contiguous(), h, w, counts)


def collate_splats(items: list[dict]) -> dict:
    """List of samples -> the batch dict described in the module docstring."""
    batch = {"splats": _stack([it["splats"] for it in items]),
             "text": [it["text"] for it in items], "key": [it["key"] for it in items]}
    if "image" in items[0]:
        batch["image"] = torch.stack([it["image"] for it in items])
    return batch


def splat_loader(urls, batch_size: int, shuffle: bool = False, with_images: bool = False, num_workers: int = 0,
                 drop_last: bool = False, buffer: int = 1000, seed: int = 0, epoch: int = 0,
                 rank: int | None = None, world_size: int | None = None, on_error: str = "warn",
                 **loader_kw) -> DataLoader:
    """A DataLoader of batch dicts over splat shards (a folder, brace pattern, glob or list)."""
    ds = SplatShards(urls, shuffle=shuffle, buffer=buffer, with_images=with_images, seed=seed, epoch=epoch,
                     rank=rank, world_size=world_size, on_error=on_error)
    if num_workers > 0:
        loader_kw.setdefault("persistent_workers", False)
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate_splats, num_workers=num_workers,
                      drop_last=drop_last, **loader_kw)
