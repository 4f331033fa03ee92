"""Reading splat shards (made by `gsv convert`) into batches: the project's one sample decoder.

    loader = splat_loader("out/{000000..000127}.tar", batch_size=256, shuffle=True, num_workers=4)
    for batch in loader:
        batch["splats"]   # Splats: means [B, N, 2], chol [B, N, 3], colors [B, N, 3] (float32),
                          #   padded to the batch's largest N; counts [B] (int64) = valid Gaussians;
                          #   samples of other image sizes expressed in the batch's largest (collate)
        batch["text"]     # list[str] of B captions, stripped ("" when the source had none)
        batch["key"]      # list[str] of B sample keys
        batch["image"]    # only with with_images=True: [B, 3, H, W] float32 in [0, 1], the source
                          #   image resized and center-cropped exactly as for fitting (H, W = the
                          #   splats' size; a list of B [3, H, W] where sizes differ, see collate);
                          #   needs shards converted with --keep-image
This dict is the contract with the training code; keep it stable.

One decoding for every reader of tar samples, so that `splat_loader` and `gsv train` see the same
tensors: `decode_sample` (format.decode for the .gsv, data.images.load_image for the image),
`collate` (Splats.stack), and `SampleReader`, which reads one shard through data.shards.samples_until_damage
and applies the one skip policy (below), counting what it leaves out. The trainer's deterministic
sources (train/batches.py) and `SplatShards` here differ only in the order they deal shards and
samples: the DataLoader-friendly order of a user's loop here, the resumable order of the trainer
there.

Splitting (`SplatShards`): shards are dealt to (DDP rank, DataLoader worker) slots round-robin
(rank and world size from torch.distributed when initialized, else $RANK / $WORLD_SIZE), so every
sample is read once per epoch over the whole job. With shuffle, the shard order is permuted per
epoch with the same seed on every rank (call `set_epoch(e)` or pass epoch=), and samples go through
a shuffle buffer of `buffer` samples. For DDP, give every rank the same number of shards of equal
size (convert's shards are) or use drop_last, so ranks see equal batch counts.

Skipping: a sample that does not decode (a broken .gsv, a multi-image .gsv, a broken image) is
left out, as is the rest of a truncated or corrupt shard (the samples before the damage are kept).
A sample the tar reader flags (a member not read, cut by the damage) is left out by the trainer;
splat_loader keeps it when its members are all there, saying what it lost. A sample lacking a
member the reading needs (.gsv, the image, .neg.txt) stops the reading (MissingMember), unless the
tar reader flagged it (then the member was lost, and the sample is left out); the members are
checked before anything is decoded, so a lacking member stops the reading even where another
member would not have decoded. splat_loader warns
about each problem (on_error="raise" to stop instead) and counts them in `problems`.
"""
from __future__ import annotations

import os
import random
import warnings
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gaussianvision.data.images import ImageLoadError, image_member, load_image
from gaussianvision.data.inputs import expand_urls, rank_world
from gaussianvision.data.shards import samples_until_damage, shuffle_buffer
from gaussianvision.splats import format as fmt
from gaussianvision.splats.format import FormatError
from gaussianvision.splats.types import Splats

__all__ = ["DataError", "MissingMember", "BadSample", "require_members", "caption_text", "decode_sample", "collate",
           "SampleReader", "SplatShards", "collate_splats", "splat_loader", "batch_frame", "stack_in_frame"]


class DataError(ValueError):
    """Training data missing or lacking what the reading needs."""


class MissingMember(DataError, FileNotFoundError):
    """A sample lacks a member the reading needs (the data is not what was asked for): a DataError,
    and a FileNotFoundError as splat_loader has always raised it."""


class BadSample(ValueError):
    """One sample cannot be used (does not decode); readers leave it out. The message says which and why."""


def caption_text(raw: dict) -> str:
    """A raw sample's caption as the readers take it: its .txt member decoded (bad bytes replaced) and stripped,
    "" where it has none."""
    return raw.get("txt", b"").decode("utf-8", "replace").strip()


def require_members(raw: dict, need: tuple[str, ...], where: str | None = None) -> None:
    """MissingMember, naming the sample, when raw lacks a member the fields in `need` are read from
    (a look at the member names only, nothing decoded)."""
    where = where or f"{raw.get('__shard__', '?')}:{raw.get('__key__', '')}"
    if "splats" in need and "gsv" not in raw:
        raise MissingMember(f"{where}: sample has no .gsv member (give splat shards written by `gsv convert`)")
    if "image" in need and image_member(raw) is None:
        raise MissingMember(f"{where}: no source image in this sample, and the reading needs every sample's image "
                            "(shards converted with --keep-image hold one in each; mend or leave out this sample's "
                            "shard, or give the image shards)")
    if "negative" in need and "neg.txt" not in raw:
        raise MissingMember(f"{where}: no .neg.txt member (hard negatives need one false caption per "
                            "sample, as the synthetic world writes them)")


def _splats(raw: dict, where: str) -> Splats:
    try:
        splats = fmt.decode(raw["gsv"], name=where)
    except FormatError as e:
        raise BadSample(str(e)) from None
    if splats.batch_size != 1:
        raise BadSample(f"{where}: a dataset sample must hold one image, this file holds {splats.batch_size}")
    return splats


def _image(raw: dict, where: str, size: int | None, splats: Splats | None) -> torch.Tensor:
    ext = image_member(raw)
    if size is None and splats is not None:
        if splats.height != splats.width:
            raise DataError(f"{where}: reading the images beside splats needs square splats, "
                            f"got {splats.height}x{splats.width}")
        size = splats.height  # the source image as the fitter saw it
    try:
        return load_image(raw[ext], size=size or 224, name=where)
    except ImageLoadError as e:
        raise BadSample(str(e)) from None


def decode_sample(raw: dict, need: tuple[str, ...], image_size: int | None = None) -> dict:
    """One raw tar sample (read_samples) -> {"key"} and the fields in `need`: "splats" (Splats, one
    image), "image" ([3, S, S] in [0, 1]; S = image_size, else the splats' size, else 224), "text"
    (the caption, stripped), "negative" (the hard-negative caption of KEY.neg.txt).

    Raises BadSample for a sample that does not decode, MissingMember for one lacking a member."""
    key = str(raw.get("__key__", ""))
    where = f"{raw.get('__shard__', '?')}:{key}"
    out: dict = {"key": key}
    require_members(raw, need, where)
    if "splats" in need:
        out["splats"] = _splats(raw, where)
    if "image" in need:
        out["image"] = _image(raw, where, image_size, out.get("splats"))
    if "text" in need:
        out["text"] = caption_text(raw)
    if "negative" in need:
        out["negative"] = raw["neg.txt"].decode("utf-8", "replace").strip()
    return out


def collate(items: list[dict]) -> dict:
    """Decoded samples -> a batch: "key", and those of "splats" (Splats.stack: padded, counts),
    "image" ([B, 3, S, S]), "text", "negative" (lists) the samples hold.

    Samples of different image sizes (shards converted at two --size values) are batched too: their
    splats are expressed in the batch's largest frame (batch_frame) with Splats.scaled, which the
    encoder cannot tell apart (models.stem reads positions and shapes in normalized coordinates, so
    the features agree to float rounding), and "image" is then a list of B [3, H, W] images, each as
    the fitter saw it (train.stages.pixel_input resizes each straight to the tower's input)."""
    batch: dict = {"key": [it["key"] for it in items]}
    if "splats" in items[0]:
        batch["splats"] = stack_in_frame([it["splats"] for it in items])
    if "image" in items[0]:
        images = [it["image"] for it in items]
        batch["image"] = torch.stack(images) if all(im.shape == images[0].shape for im in images) else images
    for field in ("text", "negative"):
        if field in items[0]:
            batch[field] = [it[field] for it in items]
    return batch


def batch_frame(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(height, width) the batch's splats share: the largest by area, then height, then width."""
    return max(sizes, key=lambda hw: (hw[0] * hw[1], hw[0], hw[1]))


def stack_in_frame(splats: list[Splats]) -> Splats:
    """Splats of any sizes as one padded batch (Splats.stack) in their batch_frame (Splats.scaled: the
    same image in another frame, which the encoder reads in normalized coordinates)."""
    h, w = batch_frame([(s.height, s.width) for s in splats])
    return Splats.stack([s.scaled(h, w) for s in splats])


collate_splats = collate  # the name splat_loader's collate_fn had


class SampleReader:
    """url -> its decoded samples (decode_sample), the skip policy of the module docstring applied.

    Records what it leaves out: `bad_samples` {(url, key)}, `damaged` {url: reason}; `problems`
    counts every problem met (samples left out or kept with a loss, shard damage, each time met).
    `on_problem(message)` is called for each problem (may raise to stop); `on_damage(url, reason)`
    once per damaged shard. `keep_flagged`: keep a sample the tar reader flagged when its members
    are all there (splat_loader) instead of leaving it out (the trainer)."""

    def __init__(self, need: tuple[str, ...], image_size: int | None = None, keep_flagged: bool = False,
                 on_problem: Callable[[str], None] | None = None,
                 on_damage: Callable[[str, str], None] | None = None):
        self.need, self.image_size, self.keep_flagged = tuple(need), image_size, keep_flagged
        self.on_problem, self.on_damage = on_problem, on_damage
        self.bad_samples: set[tuple[str, str]] = set()
        self.damaged: dict[str, str] = {}
        self.problems = 0

    def __call__(self, url) -> Iterator[dict]:
        for raw in samples_until_damage(url, lambda e: self._damage(str(url), e)):  # decoding: per sample
            item = self._sample(str(url), raw)
            if item is not None:
                yield item

    def _sample(self, url: str, raw: dict) -> dict | None:
        where = f"{url}:{raw.get('__key__', '')}"
        lost = "; ".join(raw.get("__skipped__", ()))
        if lost and not self.keep_flagged:
            return self._leave_out(url, raw, f"{where}: {lost}")
        try:
            item = decode_sample(raw, self.need, self.image_size)
        except (MissingMember, BadSample) as e:
            if isinstance(e, MissingMember) and not lost:
                raise
            return self._leave_out(url, raw, f"{e} ({lost})" if lost else str(e))
        if lost:  # kept: its members are whole; what it lost is said
            self._problem(f"{where}: {lost}")
        return item

    def _leave_out(self, url: str, raw: dict, message: str) -> None:
        self.bad_samples.add((url, str(raw.get("__key__", ""))))
        self._problem(message)

    def _problem(self, message: str) -> None:
        self.problems += 1
        if self.on_problem is not None:
            self.on_problem(message)

    def _damage(self, url: str, e: BaseException) -> None:
        first = url not in self.damaged
        self.damaged.setdefault(url, f"{type(e).__name__}: {e}")
        if isinstance(e, FileNotFoundError):  # regression: called "truncated or corrupt"
            self._problem(f"{url}: shard missing (removed since the shards were listed); skipped")
        else:
            self._problem(f"{url}: truncated or corrupt shard ({e}); rest of the shard skipped")
        if first and self.on_damage is not None:
            self.on_damage(url, self.damaged[url])

    def left_out(self) -> dict:
        """{"skipped_samples": {(url, key)} samples left out, "damaged_shards": {url} shards cut short}."""
        return {"skipped_samples": set(self.bad_samples), "damaged_shards": set(self.damaged)}

    def skipped(self) -> dict:
        """Counts of what left_out() names."""
        return {k: len(v) for k, v in self.left_out().items()}


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank_world()


class SplatShards(IterableDataset):
    """Decoded samples {"splats", "text", "key"[, "image"]} of splat tar shards, for a DataLoader
    with collate (splat_loader); this process's share of the shards (module docstring)."""

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
        if rank is not None and world_size is not None:  # checked now (with the environment's: when read)
            rank_world(rank, world_size)
        self.rank, self.world_size = rank, world_size
        need = ("splats", "text") + (("image",) if with_images else ())
        self.reader = SampleReader(need, keep_flagged=True, on_problem=self._problem)

    @property
    def problems(self) -> int:
        """Problems reported (warned) so far in this process: samples skipped, shards cut short."""
        return self.reader.problems

    def _problem(self, message: str) -> None:
        if self.on_error == "raise":
            raise FormatError(message)
        warnings.warn(message)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_world(self) -> tuple[int, int]:
        """(rank, world): as given, else the process group's or the environment's. Both given: the environment is
        not read (review finding: WORLD_SIZE set alone refused a caller's own rank=1, world_size=2)."""
        if self.rank is not None and self.world_size is not None:
            return rank_world(self.rank, self.world_size)
        rank, world = _dist_rank_world()
        rank = rank if self.rank is None else self.rank
        world = world if self.world_size is None else self.world_size
        return rank_world(rank, world)  # a rank out of the world (given, or from the environment) is said

    def my_shards(self) -> list[str]:
        rank, world = self._rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = list(self.urls)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        slots = world * nw
        if len(order) < slots and self.epoch == 0 and wid == 0:
            warnings.warn(f"{len(order)} shards for {slots} rank x worker slots: some will read nothing")
        return order[rank * nw + wid:: slots]

    def __iter__(self) -> Iterator[dict]:
        samples = (item for url in self.my_shards() for item in self.reader(url))
        if not self.shuffle:
            yield from samples
            return
        info = get_worker_info()
        rank, _ = self._rank_world()
        rng = random.Random(hash((self.seed, self.epoch, rank, info.id if info else 0)))
        yield from shuffle_buffer(samples, self.buffer, rng)


def splat_loader(urls, batch_size: int, shuffle: bool = False, with_images: bool = False, num_workers: int = 0,
                 drop_last: bool = False, buffer: int = 1000, seed: int = 0, epoch: int = 0,
                 rank: int | None = None, world_size: int | None = None, on_error: str = "warn",
                 **loader_kw) -> DataLoader:
    """A DataLoader of batch dicts over splat shards (a folder, brace pattern, glob or list)."""
    ds = SplatShards(urls, shuffle=shuffle, buffer=buffer, with_images=with_images, seed=seed, epoch=epoch,
                     rank=rank, world_size=world_size, on_error=on_error)
    if num_workers > 0:
        loader_kw.setdefault("persistent_workers", False)
    return DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                      drop_last=drop_last, **loader_kw)
