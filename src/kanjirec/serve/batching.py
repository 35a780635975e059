"""Concurrent requests answered by one model call.

Each request puts its image on an asyncio queue and awaits its own future. One worker task takes
the first waiting image, then keeps collecting until it holds ``max_batch`` images or ``max_wait_ms``
has passed since the first, runs the model once on the stack (in its own thread, so the event loop
keeps accepting requests meanwhile) and hands each request its row. ``max_batch=1`` turns batching
off: every request is one model call, in arrival order.

A batch is padded (with copies of its last image) to the next power of two, at most ``max_batch``,
and the model runs once on each of these sizes at start-up: CPU runtimes build their kernels per
input shape on first use, which would otherwise land on the first requests of every new size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batcher:
    """Batches images for ``run_batch`` ((B, S, S) uint8 -> (B, C) array); start it inside the loop."""

    def __init__(
        self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_wait_ms: float = 2.0
    ):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.batches = 0  # model calls made, and requests answered by them
        self.requests = 0
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        # One model call at a time: the model uses its own threads for the batch.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kanjirec-model")

    def sizes(self) -> list[int]:
        """The batch sizes the model is run at: powers of two below ``max_batch``, and ``max_batch``."""
        return [1 << k for k in range(self.max_batch.bit_length()) if 1 << k < self.max_batch] + [
            self.max_batch
        ]

    def _run_padded(self, images: np.ndarray) -> np.ndarray:
        size = next(s for s in self.sizes() if s >= len(images))
        padded = np.concatenate([images, np.repeat(images[-1:], size - len(images), axis=0)])
        return self.run_batch(padded)[: len(images)]

    async def start(self, example: np.ndarray) -> None:
        """Warm the model up at every batch size on ``example`` (one (S, S) image), then take requests."""
        loop = asyncio.get_running_loop()
        for size in self.sizes():
            await loop.run_in_executor(self._executor, self.run_batch, np.repeat(example[None], size, axis=0))
        self._queue = asyncio.Queue()
        self._worker = loop.create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """The model's output row for one (S, S) image."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(image, future) for image, future in batch if not future.cancelled()]  # client gone
            if not live:
                continue
            try:
                rows = await loop.run_in_executor(
                    self._executor, self.run_batch, np.stack([i for i, _ in live])
                )
            except Exception as e:  # a model failure is every waiting request's answer, not the worker's end
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.requests += len(live)
            for (_, future), row in zip(live, rows, strict=True):
                if not future.done():
                    future.set_result(row)
