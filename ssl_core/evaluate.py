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
) -> torch.Tensor:
    """L2-normalised features of (N, C, H, W) uint8 images under the eval transform → (N, D) float32 CPU:
    of the whole image, or with ``patches`` the mean of its tiles' features."""
    was_training = backbone.training
    backbone.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
        x = eval_transform(x, image_size)
        features = backbone.features(x) if patches is None else patches.features(backbone, x)
        out.append(F.normalize(features.float(), dim=1).cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def pixel_features(images: np.ndarray, image_size: int) -> torch.Tensor:
    """The raw-pixel baseline: eval-transformed pixels, flattened and L2-normalised → (N, 3·size²)."""
    out = []
    for start in range(0, len(images), 1024):
        x = eval_transform(torch.from_numpy(np.array(images[start : start + 1024])), image_size)
        out.append(F.normalize(x.flatten(1), dim=1))
    return torch.cat(out)


def knn_predict(
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
    (M, D), bank_labels (M,) int64, queries (Q, D) → (Q,). Raises ``ValueError`` on bad k, temperature or shapes."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if bank.shape[0] == 0:
        raise ValueError("the kNN bank is empty")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank has dimension {bank.shape[1]}, queries {queries.shape[1]}")
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


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
