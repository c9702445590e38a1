"""Dynamic batching of concurrent image requests to one model: requests' fitted images wait a bounded time for
others, are concatenated into one forward pass, and each request gets its own rows back.

A ``Batcher`` lives on one event loop. Its drain task runs while requests wait and ends when none are left, so
an idle model holds no task. One batch per model runs at a time; requests that arrive meanwhile form the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    images: np.ndarray
    future: asyncio.Future[np.ndarray]
    arrived: float


@dataclass
class BatchStats:
    """What the batcher has run: forward passes and the number of images in each (the last ``keep`` of them)."""

    batches: int = 0
    images: int = 0
    sizes: list[int] = field(default_factory=list)
    keep: int = 1000

    def add(self, size: int) -> None:
        self.batches += 1
        self.images += size
        self.sizes.append(size)
        del self.sizes[: -self.keep]


class Batcher:
    """Runs ``forward`` (awaited; it should hand the work to a thread) on batches of at most ``max_images``
    images, made of whole requests that arrived at most ``wait_seconds`` after the batch's oldest request. A
    request larger than ``max_images`` runs as a batch of its own. ``forward`` maps (N, ...) inputs to (N, ...)
    outputs row for row; if it raises, every request of that batch gets the exception."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], Awaitable[np.ndarray]],
        *,
        max_images: int,
        wait_seconds: float,
    ) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        if wait_seconds < 0:
            raise ValueError(f"wait_seconds must not be negative, got {wait_seconds}")
        self.forward = forward
        self.max_images = max_images
        self.wait_seconds = wait_seconds
        self.stats = BatchStats()
        self._waiting: list[_Request] = []
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self._task is None and not self._waiting

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """The outputs of ``images`` (N, ...), computed in a batch with whatever other requests join it."""
        loop = asyncio.get_running_loop()
        request = _Request(images, loop.create_future(), loop.time())
        self._waiting.append(request)
        if self._arrival is not None:
            self._arrival.set()
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await request.future

    def _waiting_images(self) -> int:
        return sum(len(r.images) for r in self._waiting)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                # The oldest request waits at most wait_seconds for others (it may have waited already, behind
                # the previous batch, in which case it goes at once with whatever has queued up).
                deadline = self._waiting[0].arrived + self.wait_seconds
                while self._waiting_images() < self.max_images and (left := deadline - loop.time()) > 0:
                    self._arrival = asyncio.Event()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), left)
                    except TimeoutError:
                        break
                    finally:
                        self._arrival = None
                batch = self._take()
                await self._run(batch)
        finally:
            self._task = None
            for request in self._waiting:  # only when the loop is shutting down and cancelled us
                if not request.future.done():
                    request.future.cancel()

    def _take(self) -> list[_Request]:
        """Whole requests, oldest first, up to ``max_images`` images (at least the oldest request)."""
        taken: list[_Request] = []
        count = 0
        while self._waiting and (not taken or count + len(self._waiting[0].images) <= self.max_images):
            request = self._waiting.pop(0)
            taken.append(request)
            count += len(request.images)
        return taken

    async def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a client gone before its turn costs nothing
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([r.images for r in live])
        self.stats.add(len(images))
        try:
            outputs = await self.forward(images)
        except BaseException as exc:
            for request in live:
                if request.future.done():
                    continue
                if isinstance(exc, Exception):
                    request.future.set_exception(exc)
                else:  # cancelled with the loop: the requests go with it
                    request.future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for request in live:
            end = start + len(request.images)
            if not request.future.done():
                request.future.set_result(outputs[start:end])
            start = end
