"""Evaluation data that goes on past what cannot be read: a corrupt image, a sample without its label,
a damaged or missing shard is recorded (where and why) and left out, and every other sample is read.

A batch of an evaluation loader is (batch or None, [Unreadable, ...]): the samples that were read,
collated as clip_benchmark collates them (None when none was), and those that were not. ReadGuard
(datasets.py) takes the records off and hands clip_benchmark's metrics the batches alone.

  map-style datasets (clip_benchmark's torchvision ones)   SkipUnreadable(ds) + Skipping(collate)
  webdataset folders (wds/NAME)                            wds_batches(urls, transform, batch_size)

Both work with DataLoader workers: the records travel in the batches, not in a worker's memory.
"""
from __future__ import annotations

import io
from typing import NamedTuple

import torch

__all__ = ["Unreadable", "SkipUnreadable", "Skipping", "wds_batches", "is_read_error", "read_error", "IMAGE_KEYS"]

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # the image members clip_benchmark's wds datasets read, first found


class Unreadable(NamedTuple):
    """A sample (or, with shard, a shard or its remainder: samples not counted) that could not be read: where
    it is, and why."""
    where: str
    why: str
    shard: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.why}"


def is_read_error(e: BaseException) -> bool:
    """An error of reading the data: a shard's damage or an OSError (data/tar_members.SHARD_ERRORS; PIL's
    UnidentifiedImageError is an OSError), EOFError, an image that cannot be made RGB, tarfile's errors (by
    module: data/tar_members.py is the one place that imports tarfile)."""
    from gaussianvision.data.images import ImageLoadError
    from gaussianvision.data.tar_members import SHARD_ERRORS
    return isinstance(e, (*SHARD_ERRORS, EOFError, ImageLoadError)) or type(e).__module__ == "tarfile"


def read_error(e: BaseException) -> str:
    """Why (and where, when the error says) reading failed, one line: a DataLoader worker's error is its whole
    traceback, which ends with the cause; an error naming a file among its args names it."""
    if "Original Traceback" in str(e):  # regression: six lines, the cause cut off
        return str(e).strip().splitlines()[-1].strip()[:400]
    if isinstance(e, OSError) and e.strerror:  # (errno, strerror): the file is named by the record's `where`
        return f"{type(e).__name__}: {e.strerror}"
    urls = [a for a in e.args[1:] if isinstance(a, str)]
    first = e.args[0] if e.args else ""
    return f"{urls[-1] + ': ' if urls else ''}{type(e).__name__}: {first}"[:400]


def _no_address(text: str) -> str:
    """`text` without Python's object reprs (PIL: "cannot identify image file <_io.BytesIO object at 0x7f..>")."""
    import re
    return re.sub(r" ?<[^<>]* object at 0x[0-9a-fA-F]+>", "", text)


def _sample_name(dataset, i: int) -> str:
    """A map-style sample's file where the dataset lists them (torchvision's ImageFolder: .samples), else its index."""
    try:
        return str(dataset.samples[i][0])
    except Exception:
        return f"sample {i}"


class SkipUnreadable(torch.utils.data.Dataset):
    """`dataset` whose samples that fail to read come back as Unreadable (other errors pass unchanged);
    its other attributes (classes, templates, ...) are the dataset's."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except Exception as e:
            if not is_read_error(e):
                raise
            return Unreadable(_sample_name(self.dataset, i), read_error(e))

    def __getattr__(self, name):
        if name == "dataset":  # not set yet (unpickling in a worker): no endless lookup
            raise AttributeError(name)
        return getattr(self.dataset, name)


class Skipping:
    """A collate function over samples and Unreadables: (collate(samples) or None, [Unreadable, ...])."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        bad = [x for x in items if isinstance(x, Unreadable)]
        good = [x for x in items if not isinstance(x, Unreadable)]
        return (self.collate(good) if good else None), bad


def _open_shard(url: str):
    if "://" in url:  # a remote dataset's shard, streamed
        import urllib.request
        return urllib.request.urlopen(url, timeout=60)
    return open(url, "rb")


def _shard_samples(shards):
    """The samples of each shard in turn, read by the project's one tar reader (data/shards.read_samples); a
    shard that cannot be opened or read to its end adds one Unreadable (its samples before the damage are
    kept: webdataset's reader ended a shard cut in a header without a word) and the next shard is read."""
    from gaussianvision.data.shards import read_samples
    for shard in shards:
        url, n = str(shard["url"]), 0
        try:
            with _open_shard(url) as f:
                for sample in read_samples(url, fileobj=f):
                    n += 1
                    yield sample
        except Exception as e:
            if not is_read_error(e):
                raise
            why = read_error(e)
            if why.startswith(f"ShardDamage: {url}: "):  # the damage's message names the shard: once is enough
                why = why[len(f"ShardDamage: {url}: "):]
            after = f" (read up to the damage: {n} sample(s) before it kept)" if n else ""
            yield Unreadable(url, f"{why}{after}", shard=True)


class _Decode:
    """A webdataset sample -> (transformed image, label) as clip_benchmark's wds datasets give them (the label
    member by the dataset's kind: the class index of `cls`, the caption lines of `txt` for retrieval, the `npy`
    array for multi-label), or an
    Unreadable naming the shard and sample. Arrays are read without pickle (nothing read may run code). With
    n_classes (classnames.txt's), a class index outside 0..n_classes-1, or a multi-label array of another
    length, is the sample's error too (regression: a `cls` of 7 among 3 classes was scored as a miss)."""

    LABELS = {"retrieval": "txt", "multilabel": "npy"}  # the label member by dataset_type.txt; else cls

    def __init__(self, transform, kind: str, n_classes: int | None = None):
        self.transform, self.label, self.n_classes = transform, self.LABELS.get(kind, "cls"), n_classes

    def __call__(self, sample):
        if isinstance(sample, Unreadable):
            return sample
        where = f"{sample.get('__shard__')}, sample {sample.get('__key__')}"
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            lost = "; ".join(sample.get("__skipped__", []))
            return Unreadable(where, f"no image member ({', '.join(IMAGE_KEYS)})" + (f": {lost}" if lost else ""))
        try:
            image, label = self._image(sample[key]), self._label(sample)
        except Exception as e:  # PIL and numpy parse untrusted bytes: any failure is this sample's
            return Unreadable(where, _no_address(f"{type(e).__name__}: {e}")[:400])
        try:  # (build_loader gives every wds pipeline its transform)
            return self.transform(image), label
        except Exception as e:  # a mode the pixels cannot be made RGB from (the model's errors pass)
            if not is_read_error(e):
                raise
            return Unreadable(where, str(e)[:400])

    @staticmethod
    def _image(data: bytes):
        from gaussianvision.data.images import open_image
        im = open_image(io.BytesIO(data))  # the project's formats only (no PostScript: Ghostscript)
        im.load()
        return im

    def _label(self, sample):
        if self.label not in sample:
            raise ValueError(f"no {self.label} member (its {'captions' if self.label == 'txt' else 'label'})")
        data = sample[self.label]
        if self.label == "txt":
            return data.decode("utf-8").splitlines()
        if self.label == "npy":
            import numpy as np
            labels = np.load(io.BytesIO(data), allow_pickle=False)
            if self.n_classes is not None and labels.shape != (self.n_classes,):
                raise ValueError(f"npy label of shape {labels.shape}: one entry per class ({self.n_classes})")
            return labels
        label = int(data.decode("utf-8").strip())
        if self.n_classes is not None and not 0 <= label < self.n_classes:
            raise ValueError(f"cls {label} is outside the {self.n_classes} classes (0..{self.n_classes - 1})")
        return label


def wds_batches(urls, transform, batch_size: int, kind: str = "classification", n_classes: int | None = None):
    """A webdataset pipeline over the shards `urls` (local paths or http(s) URLs) in order, split among
    DataLoader workers, whose items are Skipping's (batch or None, [Unreadable, ...]) of `batch_size` samples
    (webdataset's collation, as clip_benchmark's wds datasets batch); labels checked against n_classes."""
    import webdataset as wds
    from webdataset.filters import default_collation_fn
    return wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.split_by_worker, _shard_samples,
                            wds.map(_Decode(transform, kind, n_classes)),
                            wds.batched(batch_size, collation_fn=Skipping(default_collation_fn), partial=True))
