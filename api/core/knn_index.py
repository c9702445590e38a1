"""Nearest-neighbour indexes over L2-normalised embeddings (FAISS; inner product = cosine similarity).

Small indexes search exactly (``flat``). Past ``ann_threshold`` vectors an approximate index is built instead:
``ivf`` (inverted lists over spherical k-means cells) or ``hnsw`` (a navigable small-world graph). Its search
parameter (``nprobe`` or ``efSearch``) is tuned at build time on validation queries to reach ``target_recall``,
then recall@10 against exact search is measured on separate test queries; both kinds of queries are items of
the index perturbed by noise (see ``held_out_queries``), so none of them is itself in the index.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from ssl_core.data import read_rows, rows_at

IndexType = Literal["flat", "hnsw", "ivf"]
RequestedType = Literal["auto", "flat", "hnsw", "ivf"]
INDEX_TYPES: tuple[str, ...] = ("flat", "hnsw", "ivf")
#: Past this many vectors ``auto`` builds an approximate index; exact search below it is fast enough.
DEFAULT_ANN_THRESHOLD = 100_000
#: ``auto``'s approximate kind, chosen by bench/search.py: at 1 M × 512 IVF reached recall@10 0.995 at nprobe 8
#: with room to spare, while HNSW (M=32) saturated near 0.99 at efSearch 384-512 at a similar speed.
DEFAULT_ANN_TYPE: IndexType = "ivf"
#: Recall@10 the search parameter is tuned to on validation queries.
DEFAULT_TARGET_RECALL = 0.99
RECALL_K = 10
#: Validation and test queries each, at most.
RECALL_QUERIES = 500
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
#: Vectors per k-means training centroid: enough for stable cells, and training stays a minute at 1 M × 512.
IVF_TRAIN_PER_LIST = 64
#: k-means iterations: recall barely moves past 10 and training time is linear in them (faiss' default: 25).
IVF_KMEANS_ITERATIONS = 10
METADATA_VERSION = 1
#: Vectors read and added per step of a build: besides the index, a build holds one chunk, never a second copy
#: of every vector (the embeddings may be a memory-mapped file).
BUILD_CHUNK = 1 << 14


@dataclass
class SearchHit:
    item: int
    score: float


@dataclass
class IndexInfo:
    """What was built: saved beside the index (``index.json``) and shown by the API."""

    type: str
    params: dict[str, int] = field(default_factory=dict)
    requested: str = "flat"
    ann_threshold: int | None = None
    build_seconds: float | None = None
    #: Of ``build_seconds``, the time spent making held-out queries, their exact neighbours and tuning.
    tuning_seconds: float | None = None
    #: Recall@10 of this index against exact search on ``recall_queries`` held-out test queries (1.0 for flat).
    recall_at_10: float | None = None
    recall_queries: int = 0
    recall_query_kind: str | None = None
    #: The validation recall@10 the search parameter was tuned to reach, and what it reached.
    target_recall: float | None = None
    validation_recall_at_10: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"version": METADATA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def choose_type(requested: str, n: int, ann_threshold: int = DEFAULT_ANN_THRESHOLD) -> IndexType:
    """The index kind for ``n`` vectors: ``auto`` is exact up to ``ann_threshold`` and approximate past it."""
    if requested == "auto":
        return DEFAULT_ANN_TYPE if n > ann_threshold else "flat"
    if requested not in INDEX_TYPES:
        raise ValueError(f"unknown index type {requested!r}")
    return requested  # type: ignore[return-value]


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the usual ~4·√n, at least 1, and at least 39 training points each."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def recall_at(found: np.ndarray, exact: np.ndarray, k: int = RECALL_K) -> float:
    """Mean share of each row's exact top ``k`` that ``found``'s top ``k`` holds."""
    hits = sum(len(set(f[:k].tolist()) & set(e[:k].tolist()) - {-1}) for f, e in zip(found, exact, strict=True))
    return hits / (k * len(exact))


def chunks(x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` of ``x``, ``BUILD_CHUNK`` rows at a time, as contiguous float32 in memory (file reads
    for a memory-mapped file)."""
    size = BUILD_CHUNK
    for start in range(0, len(x), size):
        yield start, np.ascontiguousarray(read_rows(x, start, start + size), dtype=np.float32)


def non_finite_rows(x: np.ndarray) -> np.ndarray:
    """Row numbers of ``x`` holding a NaN or an infinity, ``x`` read a chunk at a time."""
    found = [start + np.flatnonzero(~np.isfinite(rows).all(axis=1)) for start, rows in chunks(x)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def exact_knn(queries: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` over ``x`` (best first) and their row numbers, ``x`` read a
    chunk at a time."""
    k = min(k, len(x))
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start, rows in chunks(x):
        scores, ids = faiss.knn(queries, rows, min(k, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best_ids, ids + start], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return best_scores, best_ids


def held_out_queries(embeddings: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` unit queries near the data but not in it: random items moved by Gaussian noise whose norm is
    half the item's distance to its 10th nearest neighbour, then normalised."""
    n = len(embeddings)
    items = np.sort(rng.choice(n, size=min(count, n), replace=False))
    base = gather(embeddings, items)
    scores, _ = exact_knn(base, embeddings, RECALL_K + 1)
    # unit vectors: |a - b|² = 2 - 2 a·b; column 0 is the item itself
    radius = np.sqrt(np.maximum(2.0 - 2.0 * scores[:, -1], 1e-12))
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise *= (0.5 * radius / np.linalg.norm(noise, axis=1))[:, None]
    queries = base + noise
    return np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)


def _set_search_param(index: faiss.Index, kind: str, value: int) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = value
    elif kind == "hnsw":
        hnsw: Any = faiss.downcast_index(index)  # the stubs know only faiss.Index
        hnsw.hnsw.efSearch = value


def _ladder(kind: str, index: faiss.Index) -> list[int]:
    """Candidate values of the search parameter, cheapest first."""
    if kind == "ivf":
        nlist = faiss.extract_index_ivf(index).nlist
        values = [v for v in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if v < nlist]
        return [*values, nlist]  # every list: exact
    return [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]


def _tune(index: faiss.Index, kind: str, queries: np.ndarray, exact: np.ndarray, target: float) -> tuple[int, float]:
    """The cheapest search parameter reaching ``target`` recall@10 on ``queries`` (else the largest tried)."""
    value, recall = 0, 0.0
    for value in _ladder(kind, index):
        _set_search_param(index, kind, value)
        recall = recall_at(index.search(queries, RECALL_K)[1], exact)
        if recall >= target:
            break
    return value, recall


def _add(index: faiss.Index, x: np.ndarray) -> None:
    for _, rows in chunks(x):
        index.add(rows)


def gather(x: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Rows ``items`` (ascending) of ``x`` as float32 in memory (``rows_at``: file reads for a mapped file)."""
    out = np.empty((len(items), x.shape[1]), np.float32)  # filled in place: no second copy of a large sample
    done = 0
    for rows in rows_at(x, items):
        out[done : done + len(rows)] = rows
        done += len(rows)
    return out


def _build_ann(kind: IndexType, x: np.ndarray, seed: int) -> tuple[faiss.Index, dict[str, int]]:
    n, dim = x.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        _add(index, x)
        return index, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    nlist = ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical = True  # unit vectors: centroids on the sphere
    ivf.cp.seed = seed
    ivf.cp.niter = IVF_KMEANS_ITERATIONS
    sample = IVF_TRAIN_PER_LIST * nlist
    items = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    ivf.train(gather(x, items))
    _add(ivf, x)
    ivf.make_direct_map()  # reconstruct(item) for search by item
    return ivf, {"nlist": nlist}


class KnnIndex:
    """An inner-product index (exact or approximate) with per-item labels and file names."""

    def __init__(
        self, index: faiss.Index, labels: list[str | None], filenames: list[str], info: IndexInfo | None = None
    ) -> None:
        self.index = index
        self.labels = labels
        self.filenames = filenames
        self.info = info or IndexInfo(type="flat", recall_at_10=1.0)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        labels: list[str | None],
        filenames: list[str],
        *,
        index_type: RequestedType = "flat",
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        target_recall: float = DEFAULT_TARGET_RECALL,
        seed: int = 0,
    ) -> KnnIndex:
        """embeddings: (N, D) float32, L2-normalised, in memory or a memory-mapped file (read a chunk at a
        time). Refuses non-finite rows (FAISS would never return them). ``index_type`` ``auto`` is exact up to
        ``ann_threshold`` vectors and approximate past it."""
        x = embeddings
        bad = non_finite_rows(x)
        if len(bad):
            raise ValueError(f"{len(bad)} of {len(x)} embeddings are not finite (first: item {bad[0]})")
        kind = choose_type(index_type, len(x), ann_threshold)
        info = IndexInfo(type=kind, requested=index_type, ann_threshold=ann_threshold if index_type == "auto" else None)
        started = time.perf_counter()
        if kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(x.shape[1])
            _add(index, x)
            info.build_seconds = round(time.perf_counter() - started, 3)
            info.recall_at_10 = 1.0
            return cls(index, labels, filenames, info)
        index, info.params = _build_ann(kind, x, seed)
        tuning_started = time.perf_counter()
        rng = np.random.default_rng(seed)
        validation = held_out_queries(x, RECALL_QUERIES, rng)
        test = held_out_queries(x, RECALL_QUERIES, rng)
        k = min(RECALL_K, len(x))
        exact = exact_knn(np.concatenate([validation, test]), x, k)[1]  # one pass over x for both
        exact_validation, exact_test = exact[: len(validation)], exact[len(validation) :]
        value, info.validation_recall_at_10 = _tune(index, kind, validation, exact_validation, target_recall)
        info.params["nprobe" if kind == "ivf" else "efSearch"] = value
        info.recall_at_10 = round(recall_at(index.search(test, k)[1], exact_test, k), 4)
        info.validation_recall_at_10 = round(info.validation_recall_at_10, 4)
        info.recall_queries = len(test)
        info.recall_query_kind = "items perturbed by noise of half their 10th-neighbour distance"
        info.target_recall = target_recall
        info.tuning_seconds = round(time.perf_counter() - tuning_started, 3)
        info.build_seconds = round(time.perf_counter() - started, 3)
        return cls(index, labels, filenames, info)

    def save(self, directory: Path) -> None:
        faiss.write_index(self.index, str(directory / "index.faiss"))
        (directory / "items.json").write_text(json.dumps({"labels": self.labels, "filenames": self.filenames}))
        (directory / "index.json").write_text(json.dumps(self.info.as_dict()))

    @classmethod
    def load(cls, directory: Path) -> KnnIndex:
        """Also reads indexes saved before ``index.json`` existed: those are all exact."""
        items = json.loads((directory / "items.json").read_text())
        index = faiss.read_index(str(directory / "index.faiss"))
        meta = directory / "index.json"
        info = IndexInfo.from_dict(json.loads(meta.read_text())) if meta.exists() else None
        if info is not None:
            _set_search_param(index, info.type, info.params.get("nprobe") or info.params.get("efSearch") or 0)
            if info.type == "ivf":
                ivf = faiss.extract_index_ivf(index)
                if ivf.direct_map.no():
                    ivf.make_direct_map()
        return cls(index, items["labels"], items["filenames"], info)

    def vector(self, item: int) -> np.ndarray:
        return np.asarray(self.index.reconstruct(int(item)), dtype=np.float32)

    def search(self, query: np.ndarray, k: int, exclude: int | None = None) -> list[SearchHit]:
        """query: (D,) float32 (normalised here). Returns up to k hits, best first; ``exclude`` drops an item
        (the query itself when searching by item number)."""
        return self.search_many(np.asarray(query).reshape(1, -1), k, [exclude])[0]

    def search_many(
        self, queries: np.ndarray, k: int, exclude: list[int | None] | None = None
    ) -> list[list[SearchHit]]:
        """queries: (Q, D), normalised here; one FAISS call for all of them. ``exclude[i]`` drops an item from
        query i's hits. Returns Q lists of up to k hits, best first."""
        q = np.array(queries, dtype=np.float32, ndmin=2)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.divide(q, norms, out=q, where=norms > 0)
        exclude = exclude if exclude is not None else [None] * len(q)
        extra = 1 if any(e is not None for e in exclude) else 0
        want = min(k + extra, len(self))
        scores, ids = self.index.search(q, want, params=self._search_params(want))
        return [
            [SearchHit(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and i != skip][:k]
            for row_s, row_i, skip in zip(scores, ids, exclude, strict=True)
        ]

    def _search_params(self, k: int) -> faiss.SearchParameters | None:
        """Enough candidates that a large k still gets k hits: for HNSW a search list of at least k, for IVF
        enough lists that they hold about 2k vectors."""
        if self.info.type == "hnsw":
            hnsw: Any = faiss.downcast_index(self.index)
            if hnsw.hnsw.efSearch >= k:
                return None
            wide = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stubs
            wide.efSearch = k
            return wide
        if self.info.type != "ivf":
            return None
        ivf = faiss.extract_index_ivf(self.index)
        per_list = max(1.0, self.index.ntotal / ivf.nlist)
        nprobe = min(ivf.nlist, max(ivf.nprobe, math.ceil(2 * k / per_list)))
        if nprobe == ivf.nprobe:
            return None
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        return params
