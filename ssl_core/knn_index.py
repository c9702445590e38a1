"""Nearest-neighbour indexes over L2-normalised embeddings (FAISS; inner product = cosine similarity)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass
class SearchHit:
    item: int
    score: float


class KnnIndex:
    """An exact (flat inner-product) index with per-item labels and file names."""

    def __init__(self, index: faiss.Index, labels: list[str | None], filenames: list[str]) -> None:
        self.index = index
        self.labels = labels
        self.filenames = filenames

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, embeddings: np.ndarray, labels: list[str | None], filenames: list[str]) -> KnnIndex:
        """embeddings: (N, D) float32, L2-normalised. Refuses non-finite rows (FAISS would never return them)."""
        bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        if len(bad):
            raise ValueError(f"{len(bad)} of {len(embeddings)} embeddings are not finite (first: item {bad[0]})")
        index = faiss.IndexFlatIP(embeddings.shape[1])
        index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        return cls(index, labels, filenames)

    def save(self, directory: Path) -> None:
        faiss.write_index(self.index, str(directory / "index.faiss"))
        (directory / "items.json").write_text(json.dumps({"labels": self.labels, "filenames": self.filenames}))

    @classmethod
    def load(cls, directory: Path) -> KnnIndex:
        items = json.loads((directory / "items.json").read_text())
        return cls(faiss.read_index(str(directory / "index.faiss")), items["labels"], items["filenames"])

    def vector(self, item: int) -> np.ndarray:
        return np.asarray(self.index.reconstruct(int(item)), dtype=np.float32)

    def search(self, query: np.ndarray, k: int, exclude: int | None = None) -> list[SearchHit]:
        """query: (D,) float32 (normalised here). Returns up to k hits, best first; ``exclude`` drops an item
        (the query itself when searching by item number)."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        norm = np.linalg.norm(q)
        if norm > 0:
            q = q / norm
        extra = 1 if exclude is not None else 0
        scores, ids = self.index.search(q, min(k + extra, len(self)))
        hits = [SearchHit(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i != exclude]
        return hits[:k]
