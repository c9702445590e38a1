"""Evaluation: embeddings under the eval transform, weighted kNN, and the baselines they are compared to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.augment import eval_transform, grid_tiles, tile_inputs
from ssl_core.backbones import Backbone


@dataclass(frozen=True)
class PatchGrid:
    """How the encoder of a tile-trained method embeds an image: the mean features of a ``grid``×``grid`` grid of
    ``tile``-px tiles, centred in their cells and prepared as in training (Kolesnikov et al. 2019, "Revisiting
    self-supervised visual representation learning"). Saved with the encoder, so serving embeds as evaluated."""

    grid: int
    tile: int
    tile_input: int

    def features(self, backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) evaluation-transformed images → (B, D) mean tile features (not normalised)."""
        tiles = tile_inputs(grid_tiles(x, self.grid, self.tile, jitter=False).flatten(0, 1), self.tile_input)
        features = backbone.features(tiles)
        return features.reshape(x.shape[0], self.grid * self.grid, -1).mean(dim=1)

    def describe(self) -> str:
        return (
            f"the mean of the features of a {self.grid}x{self.grid} grid of {self.tile}-px tiles, each "
            f"centred in its cell, standardised and resized to {self.tile_input} px"
        )


def describe_embedding(patches: PatchGrid | None) -> str:
    """How an encoder embeds an image, in words (job metrics and kNN protocols)."""
    return "the whole image's features" if patches is None else patches.describe()


@torch.no_grad()
def embed_images(
    backbone: Backbone,
    images: np.ndarray,
    image_size: int,
    device: torch.device,
    batch_size: int = 256,
    patches: PatchGrid | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Features of (N, C, H, W) uint8 images under the eval transform → (N, D) float32 CPU, L2-normalised unless
    ``normalize`` is False: of the whole image, or with ``patches`` the mean of its tiles' features."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        x = eval_transform(x, image_size)
        features = backbone.features(x) if patches is None else patches.features(backbone, x)
        features = features.float()
        out.append((F.normalize(features, dim=1) if normalize else features).cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def pixel_features(images: np.ndarray, image_size: int) -> torch.Tensor:
    """The raw-pixel baseline: eval-transformed pixels, flattened and L2-normalised → (N, 3·size²)."""
    out = []
    for start in range(0, len(images), 1024):
        x = eval_transform(torch.from_numpy(np.array(images[start : start + 1024])), image_size)
        out.append(F.normalize(x.flatten(1), dim=1))
    return torch.cat(out)


def knn_votes(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
    §3.4): the k most cosine-similar bank items vote with weight exp(sim / temperature). Shapes: normalised bank
    (M, D), bank_labels (M,) int64, queries (Q, D) → votes (Q, num_classes). Raises ``ValueError`` on bad k,
    temperature or shapes."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if bank.shape[0] == 0:
        raise ValueError("the kNN bank is empty")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank has dimension {bank.shape[1]}, queries {queries.shape[1]}")
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        # Shifting by 1/T before exp leaves the vote ratios as they are and keeps small temperatures finite.
        weights = ((top_sim - 1) / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        out.append(votes.scatter_add_(1, bank_labels[top_idx], weights))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """The class with the most ``knn_votes`` per query → (Q,)."""
    return knn_votes(bank, bank_labels, queries, num_classes, k, temperature, chunk).argmax(dim=1)


def knn_classification(
    bank: torch.Tensor,
    bank_labels: np.ndarray,
    queries: torch.Tensor,
    query_labels: np.ndarray,
    classes: list[str],
    k: int,
    temperature: float,
) -> dict[str, Any]:
    """``classification_metrics`` of weighted kNN (``knn_votes``) over features, L2-normalised here."""
    votes = knn_votes(
        F.normalize(bank, dim=1),
        torch.from_numpy(bank_labels).long(),
        F.normalize(queries, dim=1),
        len(classes),
        k,
        temperature,
    )
    return classification_metrics(votes, query_labels, classes)


def classification_metrics(scores: torch.Tensor, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Top-1 (and top-5 with at least 5 classes) accuracy, per-class accuracy (recall) and the confusion matrix
    (rows: true class, columns: predicted) from (N, C) class scores. Ties go to the lower class index."""
    n, num_classes = scores.shape
    if n == 0:
        raise ValueError("no images to score")
    truth = torch.from_numpy(labels).long()
    # A stable descending sort ranks tied scores by class index, so results do not depend on the kernel.
    ranked = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    top1 = ranked[:, 0]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((truth, top1), torch.ones(n, dtype=torch.long), accumulate=True)
    per_class_total = confusion.sum(dim=1)
    metrics: dict[str, Any] = {"top1": round(float((top1 == truth).float().mean()), 4)}
    if num_classes >= 5:
        metrics["top5"] = round(float((ranked[:, :5] == truth[:, None]).any(dim=1).float().mean()), 4)
    metrics["per_class_accuracy"] = {
        name: (round(float(confusion[c, c] / per_class_total[c]), 4) if per_class_total[c] else None)
        for c, name in enumerate(classes)
    }
    metrics["confusion_matrix"] = confusion.tolist()
    metrics["num_test_images"] = n
    return metrics


@dataclass(frozen=True)
class KnnProtocol:
    """How a kNN accuracy was measured; stored next to every number."""

    k: int = 20
    temperature: float = 0.1
    query_fraction: float = 0.2
    max_bank: int = 10_000
    max_queries: int = 2_000
    seed: int = 0

    def split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bank and query indices: a seeded random split of the labelled items."""
        labelled = np.flatnonzero(labels >= 0)
        order = np.random.default_rng(self.seed).permutation(labelled)
        n_query = min(self.max_queries, max(1, round(len(order) * self.query_fraction)))
        queries, bank = order[:n_query], order[n_query : n_query + self.max_bank]
        return np.sort(bank), np.sort(queries)

    def describe(
        self, n_bank: int, n_queries: int, image_size: int, patches: PatchGrid | None = None
    ) -> dict[str, Any]:
        return {
            "classifier": "weighted kNN, cosine similarity, votes exp(sim/T)",
            "k": self.k,
            "temperature": self.temperature,
            "split": f"seeded random split of the labelled images (seed {self.seed}): "
            f"{n_queries} queries, {n_bank} bank images",
            "bank_size": n_bank,
            "queries": n_queries,
            "image_size": image_size,
            "transform": "resize to image_size, normalise (no augmentation)",
            "embedding": describe_embedding(patches),
        }


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: np.ndarray,
    queries: torch.Tensor,
    query_labels: np.ndarray,
    k: int,
    temperature: float,
) -> float:
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    preds = knn_predict(bank, torch.from_numpy(bank_labels).long(), queries, num_classes, k, temperature)
    return float((preds.numpy() == query_labels).mean())


def evaluate_knn(features: torch.Tensor, labels: np.ndarray, protocol: KnnProtocol) -> float:
    """kNN accuracy of ``features`` ((N, D), L2-normalised, for every item) under ``protocol``'s split."""
    bank, queries = protocol.split(labels)
    return knn_accuracy(
        features[bank], labels[bank], features[queries], labels[queries], protocol.k, protocol.temperature
    )


def can_evaluate(labels: np.ndarray | None) -> bool:
    """kNN needs labels with at least two classes and a handful of labelled items."""
    if labels is None:
        return False
    labelled = labels[labels >= 0]
    return len(labelled) >= 10 and len(np.unique(labelled)) >= 2
