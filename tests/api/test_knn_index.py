"""The FAISS index finds what a brute force finds, and survives a save and a load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from api.core.knn_index import KnnIndex


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
    from api.core.knn_index import KnnIndex

    vectors = np.eye(3, dtype=np.float32)
    vectors[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"1 of 3 embeddings are not finite \(first: item 1"):
        KnnIndex.build(vectors, [None] * 3, ["a", "b", "c"])


# Approximate indexes: what is built past the threshold, how well it finds the exact neighbours, and what it saves.


def _clustered(n: int, d: int = 32, clusters: int = 40, spread: float = 0.35, seed: int = 1) -> np.ndarray:
    """Unit vectors around ``clusters`` random unit centres: neighbours are mostly in the same cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_top(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries.astype(np.float64) @ base.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def _unnamed(n: int) -> tuple[list[str | None], list[str]]:
    return [None] * n, [f"img{i}.png" for i in range(n)]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_recall_at_10_against_brute_force_on_clustered_data(kind: str) -> None:
    drawn = _clustered(4300)
    base, queries = drawn[:4000], drawn[4000:]  # queries: fresh draws of the same clusters, not in the index
    index = KnnIndex.build(base, *_unnamed(len(base)), index_type="auto", ann_threshold=1000)
    assert index.info.type == "ivf"  # auto's approximate kind
    index = KnnIndex.build(base, *_unnamed(len(base)), index_type=kind)  # type: ignore[arg-type]
    assert index.info.type == kind
    exact = _brute_top(queries, base, 10)
    found = index.search_many(queries, 10)
    recall = np.mean(
        [len({h.item for h in hits} & set(row.tolist())) / 10 for hits, row in zip(found, exact, strict=True)]
    )
    assert recall >= 0.95
    assert index.info.recall_at_10 is not None
    assert index.info.recall_at_10 >= 0.95
    assert index.info.validation_recall_at_10 is not None
    assert index.info.validation_recall_at_10 >= 0.99
    assert index.info.recall_queries == 500
    assert set(index.info.params) == ({"nlist", "nprobe"} if kind == "ivf" else {"M", "efConstruction", "efSearch"})


def test_recall_at_counts_the_shared_neighbours() -> None:
    from api.core.knn_index import recall_at

    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [-1, -1, -1]])  # 2 of 3, then nothing (-1: FAISS found no neighbour)
    assert recall_at(found, exact, k=3) == pytest.approx(2 / 6)


@pytest.mark.parametrize(("n", "expected"), [(999, "flat"), (1000, "flat"), (1001, "ivf")])
def test_auto_switches_to_approximate_past_the_threshold(n: int, expected: str) -> None:
    from api.core.knn_index import choose_type

    assert choose_type("auto", n, ann_threshold=1000) == expected
    assert choose_type("flat", 10**9) == "flat"
    assert choose_type("hnsw", 5) == "hnsw"
    index = KnnIndex.build(_clustered(n), *_unnamed(n), index_type="auto", ann_threshold=1000)
    assert index.info.type == expected
    assert index.info.requested == "auto"
    assert index.info.ann_threshold == 1000
    assert type(faiss_index_of(index)).__name__ == ("IndexFlatIP" if expected == "flat" else "IndexIVFFlat")


def faiss_index_of(index: KnnIndex) -> object:
    import faiss

    return faiss.downcast_index(index.index)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_metadata_and_search_parameter_round_trip_through_save_and_load(kind: str, tmp_path: Path) -> None:
    base = _clustered(2000)
    built = KnnIndex.build(base, *_unnamed(len(base)), index_type=kind)  # type: ignore[arg-type]
    built.save(tmp_path)
    loaded = KnnIndex.load(tmp_path)
    assert loaded.info == built.info
    assert loaded.info.build_seconds is not None
    assert loaded.info.build_seconds >= 0
    queries = _clustered(2050)[2000:]
    before = [[(h.item, h.score) for h in hits] for hits in built.search_many(queries, 10)]
    after = [[(h.item, h.score) for h in hits] for hits in loaded.search_many(queries, 10)]
    assert after == before  # same nprobe / efSearch after loading
    np.testing.assert_allclose(loaded.vector(17), base[17], rtol=0, atol=1e-7)


def test_an_index_saved_before_metadata_existed_loads_as_flat(tmp_path: Path) -> None:
    import json

    import faiss

    emb = _embeddings()
    old = faiss.IndexFlatIP(emb.shape[1])  # what the previous version wrote: index.faiss and items.json only
    old.add(emb)
    faiss.write_index(old, str(tmp_path / "index.faiss"))
    (tmp_path / "items.json").write_text(json.dumps({"labels": [None] * 20, "filenames": [f"f{i}" for i in range(20)]}))
    index = KnnIndex.load(tmp_path)
    assert index.info.type == "flat"
    assert index.info.recall_at_10 == 1.0
    hits = index.search(emb[5], 3, exclude=5)
    assert [h.item for h in hits] == [i for i in np.argsort(-(emb @ emb[5]), kind="stable").tolist() if i != 5][:3]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_search_by_item_with_an_approximate_index_leaves_the_item_out(kind: str) -> None:
    base = _clustered(3000)
    index = KnnIndex.build(base, *_unnamed(len(base)), index_type=kind)  # type: ignore[arg-type]
    items = list(range(0, 3000, 150))
    batched = index.search_many(np.stack([index.vector(i) for i in items]), 10, exclude=list(items))
    for item, hits in zip(items, batched, strict=True):
        assert item not in [h.item for h in hits]
        assert len(hits) == 10
        exact = [i for i in _brute_top(base[item][None], base, 11)[0].tolist() if i != item][:10]
        assert len({h.item for h in hits} & set(exact)) >= 8
        assert [(h.item, h.score) for h in hits] == [(h.item, h.score) for h in index.search(base[item], 10, item)]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_k_larger_than_the_tuned_search_reaches_still_gets_k_hits(kind: str) -> None:
    base = _clustered(3000)
    index = KnnIndex.build(base, *_unnamed(len(base)), index_type=kind)  # type: ignore[arg-type]
    if kind == "ivf":  # the probed lists hold fewer than k vectors
        assert index.info.params["nprobe"] * len(base) / index.info.params["nlist"] < 1000
    else:  # the search list is shorter than k
        assert index.info.params["efSearch"] < 1000
    hits = index.search(base[0], 1000)
    assert len(hits) == 1000
    assert len(index.search(base[0], 999, exclude=0)) == 999
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_search_many_matches_one_search_per_query(tmp_path: Path) -> None:
    emb = _embeddings()
    index = _saved_and_loaded(tmp_path, emb)
    queries = np.stack([emb[2] * 3.0, emb[9], emb[0] + emb[1]])
    many = index.search_many(queries, 4, exclude=[2, None, 0])
    singles = [index.search(queries[0], 4, 2), index.search(queries[1], 4), index.search(queries[2], 4, 0)]
    assert [[(h.item, h.score) for h in hits] for hits in many] == [[(h.item, h.score) for h in s] for s in singles]


# Building a chunk at a time ---------------------------------------------------------------------------------------


def test_exact_knn_over_chunks_matches_one_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    import api.core.knn_index as knn

    base, queries = _embeddings(103, seed=1), _embeddings(9, seed=2)
    monkeypatch.setattr(knn, "BUILD_CHUNK", 10)  # eleven chunks, the last of 3 rows (fewer than k)
    scores, ids = knn.exact_knn(queries, base, 7)
    expected = _brute_top(queries, base, 7)
    assert (ids == expected).all()
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ base.T, expected, 1), rtol=1e-5)
    assert knn.exact_knn(queries, base[:4], 7)[1].shape == (9, 4)  # k past the rows: all of them


def test_non_finite_rows_are_found_in_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import api.core.knn_index as knn

    x = _embeddings(25)
    x[[3, 17, 24], 1] = [np.nan, np.inf, -np.inf]
    monkeypatch.setattr(knn, "BUILD_CHUNK", 8)
    assert knn.non_finite_rows(x).tolist() == [3, 17, 24]
    with pytest.raises(ValueError, match=r"3 of 25 embeddings are not finite \(first: item 3\)"):
        KnnIndex.build(x, *_unnamed(25))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_an_index_built_from_a_mapped_file_in_chunks_is_the_one_built_in_memory(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.core.knn_index as knn

    drawn = _clustered(3050)
    x, queries = drawn[:3000], drawn[3000:]
    in_memory = KnnIndex.build(x, *_unnamed(len(x)), index_type=kind)  # type: ignore[arg-type]
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    monkeypatch.setattr(knn, "BUILD_CHUNK", 512)
    chunked = KnnIndex.build(mapped, *_unnamed(len(x)), index_type=kind)  # type: ignore[arg-type]
    found = [[h.item for h in hits] for hits in chunked.search_many(queries, 10)]
    if kind == "hnsw":  # FAISS inserts into the graph on several threads: the same vectors, not the same graph
        assert chunked.info.recall_at_10 is not None
        assert chunked.info.recall_at_10 >= 0.95
        overlap = np.mean(
            [len(set(f) & set(e.tolist())) / 10 for f, e in zip(found, _brute_top(queries, x, 10), strict=True)]
        )
        assert overlap >= 0.95
        return
    assert chunked.info.params == in_memory.info.params
    assert chunked.info.recall_at_10 == in_memory.info.recall_at_10
    assert found == [[h.item for h in hits] for hits in in_memory.search_many(queries, 10)]
