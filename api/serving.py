"""Serving trained models: a small LRU cache of embedders, predictors and indexes, a bounded pool that decodes
request images and runs models off the event loop, a batcher per loaded model that runs concurrent requests'
images in one forward pass, and request-image decoding.

Memory of one request: its body (at most the 64 MiB small-body limit; with JSON, also its parsed strings), one
image decoded at a time (at most ``max_image_pixels`` × 4 bytes, and its converted copy) and the images fitted to
the model's stored size (N × C × H × W bytes), then the forward pass; ``inference_concurrency`` requests at once.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from api.batching import Batcher
from api.core.images import ImageRefused, decode_fitted, open_image
from api.core.knn_index import KnnIndex
from api.core.problems import Problem, field_error
from api.schemas import b64decode
from ssl_core.device import resolve_device
from ssl_core.encoder import Embedder, Predictor, load_classifier, load_encoder

T = TypeVar("T")


class LRUCache(Generic[T]):
    """Thread-safe LRU keyed by resource id; ``load`` runs outside the lock's fast path only once per key."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T]) -> T:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self._items[key] = value
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return value

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class ServingCache:
    """Models and indexes kept loaded, and the pool of ``concurrency`` threads that serving work runs on."""

    def __init__(
        self,
        device_name: str,
        capacity: int = 4,
        concurrency: int = 2,
        max_pending: int = 8,
        batch_max_images: int = 64,
        batch_wait_seconds: float = 0.002,
    ) -> None:
        self.device = resolve_device(device_name)
        self.max_pending = max_pending
        self.batch_max_images = batch_max_images
        self.batch_wait_seconds = batch_wait_seconds
        self.capacity = capacity
        # Batchers wait on one event loop's futures: one set per loop (a test client may start several).
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Batcher]] = (
            weakref.WeakKeyDictionary()
        )
        self.pending = 0  # only touched on the event loop
        self.embedders: LRUCache[Embedder] = LRUCache(capacity)
        self.predictors: LRUCache[Predictor] = LRUCache(capacity)
        self.indexes: LRUCache[KnnIndex] = LRUCache(capacity)
        # One forward pass at a time per process: requests queue here instead of oversubscribing cores.
        self.inference_lock = threading.Lock()
        # Not Starlette's pool of 40: each request here may hold its images' decoded pixels.
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="serving")

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """A place among the ``max_pending`` image requests this process serves at once, taken before their body
        is read (each may hold up to 64 MiB while it waits for the pool); past them, a 503 to retry."""
        if self.pending >= self.max_pending:
            raise Problem(
                503,
                "overloaded",
                f"this process is serving {self.max_pending} image requests already; retry after a second",
                headers={"Retry-After": "1"},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on the serving pool, waiting for a free thread without holding the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, work)

    def embedder(self, model_id: str, path: Path) -> Embedder:
        return self.embedders.get(model_id, lambda: Embedder(*load_encoder(path, self.device), self.device))

    def predictor(self, model_id: str, path: Path) -> Predictor:
        """The classifier in a model file; ``ValueError`` for an encoder's."""
        return self.predictors.get(model_id, lambda: Predictor(*load_classifier(path, self.device), self.device))

    def index(self, index_id: str, directory: Path) -> KnnIndex:
        return self.indexes.get(index_id, lambda: KnnIndex.load(directory))

    def forget_model(self, model_id: str) -> None:
        """Drop a deleted model from this process's caches."""
        self.embedders.forget(model_id)
        self.predictors.forget(model_id)

    def embed(self, embedder: Embedder, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 images fitted to the embedder's stored size → (N, D) embeddings. Raises ``Problem``
        (422) if any is not finite."""
        return check_embeddings(self._embed_rows(embedder, images))

    def predict(self, predictor: Predictor, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 images fitted to the predictor's stored size → (N, classes) probabilities. Raises
        ``Problem`` (422) if any is not finite."""
        return check_probabilities(self._predict_rows(predictor, images))

    def _embed_rows(self, embedder: Embedder, images: np.ndarray) -> np.ndarray:
        with self.inference_lock, torch.inference_mode():
            return embedder.embed_arrays(images)

    def _predict_rows(self, predictor: Predictor, images: np.ndarray) -> np.ndarray:
        with self.inference_lock, torch.inference_mode():
            return predictor.predict_arrays(images)

    async def embed_batched(self, model_id: str, path: Path, images: np.ndarray) -> np.ndarray:
        """``embed`` in a forward pass shared with other requests to the same model (see ``Batcher``). Raises
        ``Problem`` (422) if any of these images' embeddings is not finite; other requests are unaffected."""

        async def forward(batch: np.ndarray) -> np.ndarray:
            return await self.run(lambda: self._embed_rows(self.embedder(model_id, path), batch))

        return check_embeddings(await self.batcher("embed", model_id, forward).submit(images))

    async def predict_batched(self, model_id: str, path: Path, images: np.ndarray) -> np.ndarray:
        """``predict`` in a forward pass shared with other requests to the same classifier."""

        async def forward(batch: np.ndarray) -> np.ndarray:
            return await self.run(lambda: self._predict_rows(self.predictor(model_id, path), batch))

        return check_probabilities(await self.batcher("predict", model_id, forward).submit(images))

    def batcher(
        self, kind: str, model_id: str, forward: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None
    ) -> Batcher:
        """This loop's batcher of ``kind`` requests to ``model_id``, made with ``forward`` if there is none yet
        (the model is looked up in the LRU on each pass, so an evicted model is not kept alive by its batcher)."""
        batchers = self._batchers.setdefault(asyncio.get_running_loop(), {})
        found = batchers.get((kind, model_id))
        if found is None:
            if forward is None:
                raise LookupError(f"no {kind} batcher for {model_id}")
            if len(batchers) >= 4 * self.capacity:  # forget idle ones rather than grow with every model served
                for name in [name for name, b in batchers.items() if b.idle]:
                    del batchers[name]
            found = batchers[(kind, model_id)] = Batcher(
                forward, max_images=self.batch_max_images, wait_seconds=self.batch_wait_seconds
            )
        return found


def check_embeddings(vectors: np.ndarray) -> np.ndarray:
    """``vectors``, or a 422 naming the first image whose embedding is not finite."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):  # JSON has no NaN, and FAISS silently drops NaN queries
        raise Problem(422, "non_finite_embedding", f"the model gave a non-finite embedding for image {int(bad[0])}")
    return vectors


def check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """``probabilities``, or a 422 naming the first image whose class probabilities are not finite."""
    bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if len(bad):
        raise Problem(
            422, "non_finite_prediction", f"the model gave non-finite class probabilities for image {int(bad[0])}"
        )
    return probabilities


def open_request_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """One image sent by a client, its header read and no pixel decoded yet, or a 4xx naming ``field``."""
    if not data:
        raise field_error(field, "is empty")
    if len(data) > max_bytes:
        raise field_error(field, f"is larger than {max_bytes} bytes", status=413, code="image_too_large")
    try:
        return open_image(data, max_pixels)
    except ImageRefused as exc:
        raise field_error(field, str(exc)) from None


def fit_request_image(data: bytes, field: str, embedder: Embedder, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """One image sent by a client, decoded and fitted to what the embedder's model was trained on: (C, H, W)
    uint8, the full-size decode dropped on return. Raises ``Problem`` naming ``field``."""
    image = open_request_image(data, field, max_bytes, max_pixels)
    try:
        return decode_fitted(image, embedder.info.channels, embedder.info.stored_size)
    except ImageRefused as exc:
        raise field_error(field, str(exc)) from None


def fit_request_images(
    images: Sequence[object], field: str, embedder: Embedder, *, max_bytes: int, max_pixels: int
) -> np.ndarray:
    """(N, C, H, W) uint8 from ``images`` (bytes, or base64 strings from JSON), each decoded and fitted before the
    next is read, so one full-size image is held at a time. Raises ``Problem`` naming ``field[i]``."""
    fitted = np.empty((len(images), embedder.info.channels, *embedder.info.stored_size), dtype=np.uint8)
    for i, value in enumerate(images):
        name = f"{field}[{i}]"
        data = value if isinstance(value, bytes) else decode_base64(value, name)
        fitted[i] = fit_request_image(data, name, embedder, max_bytes=max_bytes, max_pixels=max_pixels)
    return fitted


def decode_base64(value: object, field: str) -> bytes:
    """``b64decode``, or a 422 naming ``field``."""
    try:
        return b64decode(value)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None
