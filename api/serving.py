"""Serving trained models: a small LRU cache of embedders, predictors and indexes, and request-image decoding."""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image

from api.core.problems import Problem, field_error
from ssl_core.device import resolve_device
from ssl_core.encoder import Embedder, Predictor, load_classifier, load_encoder
from ssl_core.knn_index import KnnIndex

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


class ServingCache:
    def __init__(self, device_name: str, capacity: int = 4) -> None:
        self.device = resolve_device(device_name)
        self.embedders: LRUCache[Embedder] = LRUCache(capacity)
        self.predictors: LRUCache[Predictor] = LRUCache(capacity)
        self.indexes: LRUCache[KnnIndex] = LRUCache(capacity)
        # One forward pass at a time per process: requests queue here instead of oversubscribing cores.
        self.inference_lock = threading.Lock()

    def embedder(self, model_id: str, path: Path) -> Embedder:
        return self.embedders.get(model_id, lambda: Embedder(*load_encoder(path, self.device), self.device))

    def predictor(self, model_id: str, path: Path) -> Predictor:
        """The classifier in a model file; ``ValueError`` for an encoder's."""
        return self.predictors.get(model_id, lambda: Predictor(*load_classifier(path, self.device), self.device))

    def index(self, index_id: str, directory: Path) -> KnnIndex:
        return self.indexes.get(index_id, lambda: KnnIndex.load(directory))

    def embed(self, embedder: Embedder, images: list[Image.Image]) -> np.ndarray:
        with self.inference_lock, torch.inference_mode():
            vectors = embedder.embed_pil(images)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):  # JSON has no NaN, and FAISS silently drops NaN queries
            raise Problem(422, "non_finite_embedding", f"the model gave a non-finite embedding for image {int(bad[0])}")
        return vectors

    def predict(self, predictor: Predictor, images: list[Image.Image]) -> np.ndarray:
        """(N, classes) probabilities. Raises ``Problem`` (422) if any is not finite."""
        with self.inference_lock, torch.inference_mode():
            probabilities = predictor.predict_pil(images)
        bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
        if len(bad):
            raise Problem(
                422, "non_finite_prediction", f"the model gave non-finite class probabilities for image {int(bad[0])}"
            )
        return probabilities


def decode_request_image(data: bytes, field: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode one image sent by a client, or raise a 422 naming ``field``."""
    if not data:
        raise field_error(field, "is empty")
    if len(data) > max_bytes:
        raise field_error(field, f"is larger than {max_bytes} bytes", status=413, code="image_too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > max_pixels:
                raise field_error(field, f"has too many pixels ({im.width}×{im.height} > {max_pixels})")
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise field_error(field, f"is not a readable image ({type(exc).__name__})") from None
    return im


def b64decode(value: object) -> bytes:
    """Bytes from a base64 string, also a ``data:`` URL. Raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


def decode_base64(value: object, field: str) -> bytes:
    """``b64decode``, or a 422 naming ``field``."""
    try:
        return b64decode(value)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None
