"""The FAISS index finds what a brute force finds, and survives a save and a load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssl_core.knn_index import KnnIndex


def _embeddings(n: int = 20, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _saved_and_loaded(tmp_path: Path, embeddings: np.ndarray) -> KnnIndex:
    labels: list[str | None] = [None if i % 3 == 0 else f"class{i % 2}" for i in range(len(embeddings))]
    filenames = [f"img{i:03d}.png" for i in range(len(embeddings))]
    KnnIndex.build(embeddings, labels, filenames).save(tmp_path)
    index = KnnIndex.load(tmp_path)
    assert index.labels == labels
    assert index.filenames == filenames
    return index


def test_a_saved_index_loads_with_its_items_and_labels(tmp_path: Path) -> None:
    emb = _embeddings()
    index = _saved_and_loaded(tmp_path, emb)
    assert len(index) == 20
    assert index.dim == 16
    np.testing.assert_allclose(index.vector(7), emb[7], rtol=0, atol=1e-7)


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_search_finds_the_item_itself_first_then_the_brute_force_neighbours(k: int, tmp_path: Path) -> None:
    emb = _embeddings()
    index = _saved_and_loaded(tmp_path, emb)
    for item in range(len(emb)):
        hits = index.search(index.vector(item), k)
        assert len(hits) == min(k, 20)
        assert hits[0].item == item
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        brute = np.argsort(-(emb @ emb[item]), kind="stable")[:k]
        assert [h.item for h in hits] == brute.tolist()
        np.testing.assert_allclose(scores, (emb @ emb[item])[brute], rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 4, 19, 30])
def test_search_with_exclude_drops_the_query_item(k: int, tmp_path: Path) -> None:
    emb = _embeddings()
    index = _saved_and_loaded(tmp_path, emb)
    for item in (0, 11):
        hits = index.search(index.vector(item), k, exclude=item)
        assert item not in [h.item for h in hits]
        assert len(hits) == min(k, 19)
        with_self = index.search(index.vector(item), k + 1)
        assert [h.item for h in hits] == [h.item for h in with_self[1:]]


def test_search_normalises_the_query(tmp_path: Path) -> None:
    emb = _embeddings()
    index = _saved_and_loaded(tmp_path, emb)
    plain = index.search(emb[3], 5)
    scaled = index.search(emb[3] * 7.5, 5)
    assert [h.item for h in plain] == [h.item for h in scaled]
    np.testing.assert_allclose([h.score for h in plain], [h.score for h in scaled], rtol=1e-5)


def test_index_refuses_non_finite_embeddings() -> None:
    from ssl_core.knn_index import KnnIndex

    vectors = np.eye(3, dtype=np.float32)
    vectors[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of 3 embeddings are not finite \(first: item 1"):
        KnnIndex.build(vectors, [None] * 3, ["a", "b", "c"])
