"""Server-side batching: requests arriving together go through the model in one forward.

The first request of a batch waits at most `window_s` for others to join, or until the batch
holds `max_batch` images; the batch then runs on the one worker thread (the event loop keeps
answering /health, /metrics and refusals meanwhile) and each request gets its own rows back.
While a forward runs, new requests queue; the next batch takes them at once. A request larger
than `max_batch` images is a batch of its own (the engine splits its forwards)."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import torch

from gaussianvision.splats.types import Splats

from .engine import Engine
from .metrics import Metrics

__all__ = ["Batcher"]


@dataclass
class _Job:
    images: list[Splats]
    done: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(self, engine: Engine, metrics: Metrics, window_s: float, max_batch: int):
        self.engine, self.metrics = engine, metrics
        self.window_s, self.max_batch = window_s, max_batch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gsv-model")
        # the text tower's work (a new label set's classifier: seconds) on a thread of its own, so that it never
        # holds up the image batches (regression: one first use of imagenet1k kept every /embed waiting 23 s)
        self._text = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gsv-text")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._held: _Job | None = None  # a job that did not fit the last batch: it opens the next

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)
        self._text.shutdown(wait=True)

    async def run(self, fn: Callable, *args):
        """fn(*args) on the model's worker thread (the image batches)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run_text(self, fn: Callable, *args):
        """fn(*args) on the text tower's thread: one at a time (a label set asked twice at once is built once and
        then found in the engine's cache), beside the image batches."""
        return await asyncio.get_running_loop().run_in_executor(self._text, fn, *args)

    async def embed(self, images: list[Splats]) -> torch.Tensor:
        """[len(images), D] embeddings, computed in a batch with whatever arrives together."""
        job = _Job(images, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.done

    async def _gather(self) -> list[_Job]:
        first = self._held or await self._queue.get()
        self._held = None
        jobs, n = [first], len(first.images)
        deadline = asyncio.get_running_loop().time() + self.window_s
        while n < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            try:
                job = self._queue.get_nowait() if left <= 0 else await asyncio.wait_for(self._queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if n + len(job.images) > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            n += len(job.images)
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._gather()
            images = [s for job in jobs for s in job.images]
            forwards: list[list[int]] = []  # each forward's images, as the engine grouped them
            try:
                emb = await self.run(self.engine.embed, images, self.max_batch, forwards)
            except Exception as e:  # the model failed: every request of the batch hears it
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(e)
                continue
            owner = [j for j, job in enumerate(jobs) for _ in job.images]
            for group in forwards:  # per forward: its images and the requests they came from
                self.metrics.batch(len(group), len({owner[i] for i in group}))
            at = 0
            for job in jobs:
                if not job.done.done():  # a client that went away cancelled its future
                    job.done.set_result(emb[at: at + len(job.images)])
                at += len(job.images)
