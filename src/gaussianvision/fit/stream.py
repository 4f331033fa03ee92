"""FitStream: fit a stream of images in batches, and encode them; per item a result or a failure.

    stream = FitStream(n_gaussians=400, config=FitConfig(iters=500), batch_size=16,
                       encoding=Encoding(dtype="float16"))
    for item in stream((key, image) for key, image in ...):   # image [3, H, W] in [0, 1]
        item.key, item.splats, item.metrics, item.data        # or item.error (the reason)

The one batching loop of `gsv fit`, `gsv convert`, `gsv eval`'s splat cache and the demo's
photo step. The rules:
- a batch holds images of one size (height, width): images are never resized here (the
  callers crop or resize before). Each size has its own open batch; a batch is fitted as soon
  as it holds `batch_size` images, and the open ones at the end of the stream, in the order
  their sizes first opened (a size reopened after its batch was fitted comes last).
- every batch is one `fit_images(images, n_gaussians, config=config)` call: the same config
  (so the same seed) for every batch, as each caller always had.
- failures are per item, never raised: a batch whose fit raises is fitted again image by image
  (with `retry`, the default) so one bad image costs only itself; an item whose splats cannot
  be encoded fails alone ("fit result not storable").
- results come in input order (`ordered=True`, the default) or as each batch is done.
- `on_batch(items)` is called after each batch with its results (a progress bar's hook);
  `progress` shows fit_images' own per-iteration bar.

Callers that form their batches themselves (data/conversion.py: batches never cross a shard)
use `fit_batch(keys, images)` for one, or `map_batches` for a stream of them, in a process pool
or here, results in order; uint8 images are read as pixel / 255 on the config's device.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from gaussianvision.fit.config import FitConfig
from gaussianvision.fit.run import fit_images
from gaussianvision.fit.progressive import ENCODING_ORDERS, PREFIX_FRACTIONS, prefix_splats, progressive
from gaussianvision.splats.format import encode
from gaussianvision.splats.types import Splats

__all__ = ["Encoding", "FitItem", "FitStream", "default_batch_size", "default_batch_pixels", "GPU_BATCH_PIXELS",
           "CPU_BATCH_PIXELS"]

GPU_BATCH_PIXELS = 512 * 224 * 224  # a GPU batch's pixels by default: 512 images of 224 px
GPU_BATCH_MAX = 4096  # the largest batch measured on a GPU (docs/gpu.md)
FIT_BYTES_PER_PIXEL = 290  # what a CPU fit holds per pixel of an image (measured: 6.9 GB at 6000 x 4000)
CPU_BATCH_PIXELS = 16 * 512 * 512  # a CPU batch's pixels at most by default: 16 images of 512 px (about 1.2 GB
#                                    at FIT_BYTES_PER_PIXEL; 16 of 2048 px would need 19 GB)


def default_batch_size(device: str, size: int | None) -> int:
    """Images fitted together unless told. On a CPU 16 (its cores are busy with any batch), fewer
    above 512 px so that a batch holds at most CPU_BATCH_PIXELS (1 image from 2048 px on). On a GPU
    as many images of `size` px as GPU_BATCH_PIXELS hold (512 at 224 px; at least 16, at most
    GPU_BATCH_MAX), since a GPU iteration costs about 4 ms of launches whatever the batch: at B=64
    the H200 fitted 24 images/s, at 512 78, at 4096 95 (docs/gpu.md). 16 when the size varies
    (None; FitStream's batch_pixels then caps each size's batch)."""
    if not size:
        return 16
    pixels = int(size) * int(size)
    if not str(device).startswith("cuda"):
        return min(16, max(1, CPU_BATCH_PIXELS // pixels))
    return min(GPU_BATCH_MAX, max(16, GPU_BATCH_PIXELS // pixels))


def default_batch_pixels(device: str) -> int:
    """The most pixels a batch of one image size holds when the batch size was not given (FitStream's
    batch_pixels): a batch of large photos kept at their size (`gsv fit --size 0`) stays within memory."""
    return GPU_BATCH_PIXELS if str(device).startswith("cuda") else CPU_BATCH_PIXELS


@dataclass(frozen=True)
class Encoding:
    """How a fitted image becomes .gsv bytes: splats/format.py's layout and dtype (quantized:
    its zstd choice; the dtype does not apply). progressive: the Gaussians are put in
    progressive order first (fit/progressive.py) and the header says so; the item's splats keep
    the fit's order, its bytes have the new one. order: "nested" (the default) makes a FitStream
    fit nested (its config's prefix_fractions, PREFIX_FRACTIONS when it has none: every prefix
    is fitted to be an image) and keeps the blocks' order; "eliminate" or "greedy" reorder a
    plain fit (cheaper, much worse short prefixes: docs/data.md)."""
    layout: str = "interleaved"
    dtype: str = "float16"
    zstd: bool = False
    progressive: bool = False
    order: str = "nested"
    fractions: tuple = PREFIX_FRACTIONS  # the nested fit's prefix fractions (set by FitStream)

    def __post_init__(self):
        if self.order not in ENCODING_ORDERS:
            raise ValueError(f"Encoding: order must be {', '.join(ENCODING_ORDERS[:-1])} or {ENCODING_ORDERS[-1]}, "
                             f"got {self.order!r}")

    def fit_config(self, config: FitConfig) -> FitConfig:
        """The checked config a FitStream with this encoding fits with: a progressive encoding in nested
        order fits nested (config's prefix_fractions, PREFIX_FRACTIONS where it has none). A ValueError
        where the two do not combine (a nested fit is an MSE fit: no ssim_weight), so that a caller can
        refuse the options before any work."""
        if self.progressive and self.order == "nested" and not config.prefix_fractions:
            return replace(config, prefix_fractions=PREFIX_FRACTIONS).check()
        return config.check()

    def __call__(self, splats: Splats, first: int | None = None) -> bytes:
        """The bytes of `splats`; with `first` (progressive only), of each image's first `first` Gaussians in the
        progressive order: the file a prefix of the whole one is, encoded from the fitted values (a quantized
        layout's ranges are the prefix's own, not a decoded file quantized again: review finding)."""
        if first is not None and not self.progressive:
            raise ValueError("Encoding: first= needs a progressive encoding (a prefix of another is no coarser image)")
        if self.progressive:
            splats = progressive(splats, method=self.order, fractions=tuple(self.fractions))
            if first is not None:
                splats = prefix_splats(splats, first)
        if self.layout == "quantized":
            return encode(splats, layout="quantized", zstd=self.zstd, progressive=self.progressive)
        return encode(splats, layout=self.layout, dtype=self.dtype, progressive=self.progressive)


@dataclass
class FitItem:
    """One image's result. On success: splats [1, n] (on the fit's device), metrics (fit_images'
    per-image dict), data (the encoded bytes, with an Encoding). On failure: error (the reason,
    e.g. "fit failed: RuntimeError: ...") and exception (the error raised; None for encoding)."""
    key: Any
    splats: Splats | None = None
    metrics: dict | None = None
    data: bytes | None = None
    error: str | None = None
    exception: BaseException | None = None
    seconds: float = 0.0   # wall time of the fit_images call / the images in it
    batch_size: int = 0    # images fitted together with this one (1 after a retry)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FitStream:
    n_gaussians: int
    config: FitConfig = field(default_factory=FitConfig)
    batch_size: int = 16
    batch_pixels: int | None = None   # a batch of one size holds at most this many pixels (>= 1 image; None: no cap)
    encoding: Encoding | None = None  # None: no bytes (item.data stays None)
    retry: bool = True                # a failed batch is fitted again image by image
    ordered: bool = True              # False: each batch's items as soon as it is done
    progress: bool = False            # fit_images' per-iteration progress bar

    def __post_init__(self):
        """A progressive encoding in nested order fits nested: the config gets prefix_fractions
        (PREFIX_FRACTIONS unless it has its own) and the encoding the same fractions."""
        enc = self.encoding
        if enc is not None and enc.progressive and enc.order == "nested":
            object.__setattr__(self, "config", enc.fit_config(self.config))  # frozen: set once, here
            object.__setattr__(self, "encoding", replace(enc, fractions=tuple(self.config.prefix_fractions)))

    def __call__(self, items: Iterable[tuple[Any, torch.Tensor]],
                 on_batch: Callable[[list[FitItem]], None] | None = None) -> Iterator[FitItem]:
        """Fit (key, image [3, H, W]) items in batches of one size; yield a FitItem per item."""
        if self.batch_size < 1:
            raise ValueError(f"FitStream: batch_size must be >= 1, got {self.batch_size}")
        open_batches: dict[tuple, list[tuple[int, Any, torch.Tensor]]] = {}
        done: dict[int, FitItem] = {}
        next_out = 0
        for index, (key, image) in enumerate(items):
            shape = tuple(image.shape[-2:])
            batch = open_batches.setdefault(shape, [])
            batch.append((index, key, image))
            if len(batch) < self._batch_of(shape):
                continue
            done.update(self._run(open_batches.pop(shape), on_batch))
            next_out = yield from self._release(done, next_out)
        for shape in list(open_batches):
            done.update(self._run(open_batches.pop(shape), on_batch))
            next_out = yield from self._release(done, next_out)

    def _batch_of(self, shape: tuple) -> int:
        """Images of this shape fitted together: batch_size, fewer where batch_pixels caps it."""
        if self.batch_pixels is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.batch_pixels // (shape[0] * shape[1])))

    def _run(self, batch: list, on_batch) -> dict[int, FitItem]:
        results = self.fit_batch([k for _, k, _ in batch], torch.stack([im for _, _, im in batch]))
        if on_batch is not None:
            on_batch(results)
        return {index: r for (index, _, _), r in zip(batch, results)}

    def _release(self, done: dict[int, FitItem], next_out: int):
        """Yield the finished items that may go out now; returns the next index in order."""
        if not self.ordered:
            for index in sorted(done):
                yield done.pop(index)
            return next_out
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
        return next_out

    def map_batches(self, batches: Iterable[tuple[Any, Any]], executor=None,
                    max_inflight: int = 2) -> Iterator[tuple[Any, list[FitItem] | None]]:
        """(tag, images [B, 3, H, W] or None) in, (tag, a FitItem per image or None) out, in input
        order; a None passes through untouched (a marker, e.g. the end of a shard). With an
        executor (a process pool), up to `max_inflight` batches run there at once and their items
        come back without splats or exception (bytes, metrics, error); without, each runs here."""
        fifo: deque = deque()
        for tag, images in batches:
            job = None
            if images is not None:
                job = executor.submit(_pool_job, self, images) if executor else _Done(self._keyed(images))
            fifo.append((tag, job))
            while fifo and (fifo[0][1] is None or sum(j is not None for _, j in fifo) > max_inflight):
                yield _pop(fifo)
        while fifo:
            yield _pop(fifo)

    def _keyed(self, images) -> list[FitItem]:
        return self.fit_batch(list(range(len(images))), images)

    def fit_batch(self, keys: list, images) -> list[FitItem]:
        """Fit one batch [B, 3, H, W] (float in [0, 1], or uint8 pixels); a FitItem per image,
        failures included (with `retry`, a failed batch is refitted image by image)."""
        images = self._pixels(images)
        try:
            return self._fit(keys, images)
        except Exception as e:
            if not self.retry or len(keys) == 1:
                return [_failed(k, e, images.shape) for k in keys]
        out = []
        for b, key in enumerate(keys):  # one bad image must not cost its batch
            try:
                out.extend(self._fit([key], images[b: b + 1]))
            except Exception as e:
                out.append(_failed(key, e, images.shape))
        return out

    def _pixels(self, images) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if images.dtype == torch.uint8:
            images = images.to(self.config.device or "cpu").float().div_(255.0)
        return images

    def _fit(self, keys: list, images: torch.Tensor) -> list[FitItem]:
        t0 = time.perf_counter()
        with torch.enable_grad():  # a fit is an optimization, also when the caller runs under no_grad
            res = fit_images(images, self.n_gaussians, config=self.config, progress=self.progress)
        seconds = (time.perf_counter() - t0) / len(keys)
        splats = res.splats.detach()
        out = []
        for b, key in enumerate(keys):
            item = FitItem(key, splats[b], res.metrics[b], seconds=seconds, batch_size=len(keys))
            if self.encoding is not None:
                try:
                    item.data = self.encoding(item.splats)
                except Exception as e:  # a diverged fit (NaN) or a value out of the dtype's range
                    item = FitItem(key, error=f"fit result not storable: {e}", seconds=seconds,
                                   batch_size=len(keys))
            out.append(item)
        return out


class _Done:
    """A finished 'future' for a batch fitted here."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def _pop(fifo: deque) -> tuple[Any, list[FitItem] | None]:
    tag, job = fifo.popleft()
    return tag, (None if job is None else job.result())


def _pool_job(stream: FitStream, images) -> list[FitItem]:
    """A batch fitted in a worker process: only what pickles small comes back."""
    items = stream._keyed(images)
    for it in items:
        it.splats, it.exception = None, None
    return items


def _failed(key, e: Exception, shape: tuple) -> FitItem:
    """A failed fit's item; running out of memory is said as such, with the image's size and about
    what it needs (regression: a raw allocator message, 'DefaultCPUAllocator: can't allocate ...')."""
    h, w = int(shape[-2]), int(shape[-1])
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e):
        return FitItem(key, error=f"fit failed: out of memory for a {w}x{h} image (a CPU fit holds about "
                                  f"{FIT_BYTES_PER_PIXEL * h * w / 1e9:.1f} GB for one image of this size); "
                                  f"fit it at a smaller size", exception=e)
    return FitItem(key, error=f"fit failed: {type(e).__name__}: {e}", exception=e)
