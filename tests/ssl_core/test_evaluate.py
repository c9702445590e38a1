"""Weighted kNN against a brute-force reference, and the seeded bank/query split of ``KnnProtocol``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_core.config import TrainConfig
from ssl_core.evaluate import (
    KnnProtocol,
    can_evaluate,
    classification_metrics,
    evaluate_knn,
    knn_classification,
    knn_predict,
    knn_votes,
)
from ssl_core.methods.base import DataInfo
from ssl_core.train import build_method


def knn_reference(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int, k: int, temperature: float
) -> list[int]:
    """Per query: sort the bank by cosine similarity, let the top k vote with exp(sim / T), take the best class."""
    predictions = []
    for q in queries.tolist():
        sims = [
            (sum(a * b for a, b in zip(q, item, strict=True)), label)
            for item, label in zip(bank.tolist(), bank_labels.tolist(), strict=True)
        ]
        sims.sort(key=lambda pair: pair[0], reverse=True)
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return predictions


def _data(m: int, q: int, d: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bank = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, num_classes, (m,), generator=g)
    queries = F.normalize(torch.randn(q, d, generator=g, dtype=torch.float64), dim=1)
    return bank, labels, queries


@pytest.mark.parametrize("chunk", [4, 1024])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("k", [1, 5, 30, 100])  # 30 and 100 exceed the bank of 30 items
@pytest.mark.parametrize("d", [2, 8])
def test_matches_brute_force_reference(d: int, k: int, temperature: float, chunk: int) -> None:
    num_classes = 4
    bank, labels, queries = _data(30, 11, d, num_classes, seed=d * 10 + k)
    got = knn_predict(bank, labels, queries, num_classes, k=k, temperature=temperature, chunk=chunk)
    assert got.shape == (11,)
    assert got.tolist() == knn_reference(bank, labels, queries, num_classes, k, temperature)


def test_nearest_item_decides_with_k_1() -> None:
    bank, labels, _ = _data(12, 0, 8, 3, seed=0)
    got = knn_predict(bank, labels, bank.clone(), 3, k=1)
    assert got.tolist() == labels.tolist()


def test_low_temperature_lets_the_closest_neighbour_outvote_the_rest() -> None:
    """Two far neighbours of class 0 against one close neighbour of class 1: T decides."""
    bank = F.normalize(torch.tensor([[1.0, 0.1], [0.5, 1.0], [0.5, -1.0]]), dim=1)
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.01).item() == 1
    assert knn_predict(bank, labels, query, 2, k=3, temperature=100.0).item() == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(k=0), "k must be"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
    ],
)
def test_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    bank, labels, queries = _data(5, 2, 4, 2, seed=0)
    with pytest.raises(ValueError, match=message):
        knn_predict(bank, labels, queries, 2, **kwargs)


def test_refuses_empty_bank() -> None:
    with pytest.raises(ValueError, match="empty"):
        knn_predict(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.randn(2, 4), 2)


def test_refuses_dimension_mismatch() -> None:
    bank, labels, _ = _data(5, 0, 4, 2, seed=0)
    with pytest.raises(ValueError, match="dimension"):
        knn_predict(bank, labels, torch.randn(2, 5, dtype=torch.float64), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_inputs_device() -> None:
    bank, labels, queries = (t.cuda() for t in _data(10, 3, 4, 2, seed=0))
    assert knn_predict(bank, labels, queries, 2, k=3).device.type == "cuda"


def _labels(n: int = 100, unlabelled_every: int = 4) -> np.ndarray:
    labels = np.arange(n) % 5
    labels[::unlabelled_every] = -1
    return labels


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("query_fraction", [0.1, 0.2, 0.5])
def test_split_is_a_disjoint_partition_of_the_labelled_items(seed: int, query_fraction: float) -> None:
    labels = _labels()
    labelled = set(np.flatnonzero(labels >= 0).tolist())
    bank, queries = KnnProtocol(seed=seed, query_fraction=query_fraction).split(labels)
    assert set(bank.tolist()).isdisjoint(queries.tolist())
    assert set(bank.tolist()) | set(queries.tolist()) == labelled
    assert len(queries) == round(len(labelled) * query_fraction)
    assert (np.diff(bank) > 0).all()
    assert (np.diff(queries) > 0).all()


def test_split_ignores_unlabelled_items() -> None:
    labels = _labels()
    bank, queries = KnnProtocol().split(labels)
    assert (labels[bank] >= 0).all()
    assert (labels[queries] >= 0).all()


def test_split_is_seeded() -> None:
    labels = _labels()
    first, again, other = (
        KnnProtocol(seed=3).split(labels),
        KnnProtocol(seed=3).split(labels),
        KnnProtocol(seed=4).split(labels),
    )
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_split_respects_max_queries_and_max_bank() -> None:
    labels = _labels()  # 75 labelled items
    bank, queries = KnnProtocol(query_fraction=0.5, max_queries=5).split(labels)
    assert (len(bank), len(queries)) == (70, 5)
    bank, queries = KnnProtocol(query_fraction=0.2, max_bank=10).split(labels)
    assert (len(bank), len(queries)) == (10, 15)


def test_split_keeps_at_least_one_query() -> None:
    bank, queries = KnnProtocol(query_fraction=0.01).split(np.array([0, 1, 0, 1, -1]))
    assert (len(bank), len(queries)) == (3, 1)


def test_evaluate_knn_on_separable_features() -> None:
    """Each class is a tight cluster around its own axis: every query is classified correctly."""
    labels = np.repeat(np.arange(4), 10)
    labels[::7] = -1
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.eye(4)[labels.clip(0)] + 0.05 * torch.randn(40, 4, generator=g), dim=1)
    assert evaluate_knn(features, labels, KnnProtocol(k=5)) == 1.0


def test_can_evaluate_needs_two_classes_and_enough_labelled_items() -> None:
    assert can_evaluate(np.array([0, 1] * 5))
    assert not can_evaluate(None)
    assert not can_evaluate(np.array([0] * 20))  # one class
    assert not can_evaluate(np.array([0, 1] * 4 + [-1] * 10))  # too few labelled items


def _reference_patch_embedding(
    backbone: torch.nn.Module, images: np.ndarray, size: int, tile: int, tile_input: int
) -> torch.Tensor:
    """A hand-written patch embedding: per image, the nine centred tiles of the eval-transformed image, each
    standardised by the formula and resized, their features averaged, then L2-normalised."""
    import torch.nn.functional as F

    from ssl_core.augment import eval_transform

    out = []
    with torch.no_grad():
        for image in images:
            x = eval_transform(torch.from_numpy(image)[None], size)[0]
            cell, offset = size // 3, (size // 3 - tile) // 2
            features = []
            for r in range(3):
                for c in range(3):
                    t = x[:, r * cell + offset : r * cell + offset + tile, c * cell + offset : c * cell + offset + tile]
                    mean = t.mean(dim=(1, 2), keepdim=True)
                    std = ((t - mean) ** 2).mean(dim=(1, 2), keepdim=True).sqrt()
                    t = F.interpolate(
                        ((t - mean) / (std + 1e-5))[None],
                        size=(tile_input, tile_input),
                        mode="bilinear",
                        align_corners=False,
                    )
                    features.append(backbone.features(t)[0])
            out.append(F.normalize(torch.stack(features).mean(dim=0), dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["jigsaw", "relative_position"])
def test_methods_trained_on_tiles_embed_an_image_by_its_tiles(name: str, cpu: torch.device) -> None:
    from ssl_core.evaluate import embed_images

    method = build_method(TrainConfig(method=name, image_size=32, stem="standard"), {}, DataInfo(4, 1))
    grid = method.patch_grid
    assert grid is not None
    assert (grid.grid, grid.tile, grid.tile_input) == (3, method.tile, method.tile_input)
    backbone = method.encoder().eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    got = embed_images(backbone, images, 32, cpu, patches=grid)
    want = _reference_patch_embedding(backbone, images, 32, method.tile, method.tile_input)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, embed_images(backbone, images, 32, cpu), atol=1e-2)


def test_votes_match_the_reference_up_to_a_common_factor() -> None:
    bank, labels, queries = _data(25, 6, 4, 5, seed=11)
    votes = knn_votes(bank, labels, queries, 5, k=7, temperature=0.2)
    for q, row in zip(queries.tolist(), votes.tolist(), strict=True):
        sims = sorted(
            (
                (sum(a * b for a, b in zip(q, item, strict=True)), lab)
                for item, lab in zip(bank.tolist(), labels.tolist(), strict=True)
            ),
            reverse=True,
        )[:7]
        expected = [0.0] * 5
        for sim, lab in sims:
            expected[lab] += math.exp(sim / 0.2)
        scale = math.exp(-1 / 0.2)  # votes are exp((sim - 1) / T)
        assert row == pytest.approx([e * scale for e in expected], rel=1e-9)


def test_classification_metrics_by_hand() -> None:
    # Five classes, four images: scores rank the classes; truth 0, 1, 2, 2.
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # top-1 0: right
            [0.5, 0.4, 0.3, 0.2, 0.1],  # top-1 0, truth 1 in top-5
            [0.1, 0.2, 0.3, 0.4, 0.5],  # top-1 4, truth 2 in top-5
            [0.0, 0.0, 0.9, 0.0, 0.0],  # right
        ]
    )
    labels = np.array([0, 1, 2, 2])
    m = classification_metrics(scores, labels, ["a", "b", "c", "d", "e"])
    assert m["top1"] == 0.5
    assert m["top5"] == 1.0
    assert m["per_class_accuracy"] == {"a": 1.0, "b": 0.0, "c": 0.5, "d": None, "e": None}
    assert m["confusion_matrix"] == [
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
    assert m["num_test_images"] == 4


def test_top5_is_left_out_with_fewer_than_five_classes_and_ties_go_to_the_lower_class() -> None:
    m = classification_metrics(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), np.array([1, 0]), ["a", "b"])
    assert "top5" not in m
    assert m["top1"] == 0.5  # both images predict class 0


def test_knn_classification_normalises_the_features_it_is_given() -> None:
    bank, labels, queries = _data(20, 6, 4, 5, seed=12)
    truth = np.arange(6) % 5
    scaled = knn_classification(bank * 7.0, labels.numpy(), queries * 0.3, truth, list("abcde"), 5, 0.1)
    votes = knn_votes(bank, labels, queries, 5, k=5, temperature=0.1)
    assert scaled == classification_metrics(votes, truth, list("abcde"))
