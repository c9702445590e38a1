"""Evaluation splits: a stratified, seeded test split; a class-balanced, seeded labelled subset of the rest; and a
validation split carved out of that subset. Per-class counts follow from class counts alone, so a request that
would leave a class without a training image is refused before any image is read."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _round(x: float) -> int:
    """Half up, not to even: 0.5 of one image is one image."""
    return math.floor(x + 0.5)


class SplitError(ValueError):
    """A split that cannot be made; ``field`` names the setting to change."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ClassCounts:
    test: int
    train: int
    val: int


@dataclass(frozen=True)
class SplitPlan:
    """``test_fraction`` None: the test images come from another dataset. At most one of ``label_fraction`` and
    ``labels_per_class``; neither: every image left after the test split is labelled."""

    test_fraction: float | None = 0.2
    label_fraction: float | None = None
    labels_per_class: int | None = None
    val_fraction: float = 0.1
    seed: int = 0

    def counts(self, class_counts: Sequence[int], class_names: Sequence[str]) -> list[ClassCounts]:
        """Per class: how many images go to test, train and validation. Raises ``SplitError``."""
        out = []
        for n, name in zip(class_counts, class_names, strict=True):
            test = 0
            if self.test_fraction is not None and n >= 2:
                test = min(n - 1, max(1, _round(self.test_fraction * n)))
            pool = n - test
            if self.labels_per_class is not None:
                if self.labels_per_class > pool:
                    raise SplitError(
                        "labels_per_class",
                        f"{self.labels_per_class} is more than class {name!r} has "
                        f"({pool} images besides the test split); at most {self.max_labels_per_class(class_counts)}",
                    )
                labelled = self.labels_per_class
            elif self.label_fraction is not None:
                labelled = min(pool, _round(self.label_fraction * pool))
                if labelled < 1:
                    raise SplitError(
                        "label_fraction",
                        f"{self.label_fraction} of class {name!r} ({pool} images besides the test split) rounds to "
                        f"no training image; use at least {0.5 / max(pool, 1):.3g}, or labels_per_class",
                    )
            else:
                labelled = pool
            if labelled < 1:
                raise SplitError("dataset_id", f"class {name!r} has no image left for training after the test split")
            # At least one validation image per class where two are labelled: selection needs something to go on.
            val = min(labelled - 1, max(1, _round(self.val_fraction * labelled)))
            out.append(ClassCounts(test=test, train=labelled - val, val=val))
        return out

    def max_labels_per_class(self, class_counts: Sequence[int]) -> int:
        def pool(n: int) -> int:
            test = min(n - 1, max(1, _round(self.test_fraction * n))) if self.test_fraction and n >= 2 else 0
            return n - test

        return min(pool(n) for n in class_counts)

    def describe(self) -> dict[str, Any]:
        return {
            "test_fraction": self.test_fraction,
            "label_fraction": self.label_fraction,
            "labels_per_class": self.labels_per_class,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class Splits:
    """Indices into the training dataset (``train``, ``val``; ``test`` too unless ``test_source`` names another
    dataset). ``subset_id`` is the same for every evaluation that sees the same images."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_source: str
    subset_id: str

    def describe(self) -> dict[str, Any]:
        return {
            "subset_id": self.subset_id,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "test_source": self.test_source,
        }


def make_splits(
    labels: np.ndarray,
    num_classes: int,
    plan: SplitPlan,
    dataset_key: str,
    class_names: Sequence[str],
    test_labels: np.ndarray | None = None,
    test_key: str | None = None,
) -> Splits:
    """Split the labelled images (``labels`` ≥ 0) as ``plan`` says. With ``test_labels`` (another dataset's, mapped
    to these classes) the test split is that dataset's labelled images. Each class's images are shuffled once
    with (seed, class); test, labelled subset and validation are consecutive slices, so a 1 % subset is inside the
    10 % one of the same seed."""
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    counts = plan.counts([len(ix) for ix in by_class], class_names)
    train, val, test = [], [], []
    for c, (ix, n) in enumerate(zip(by_class, counts, strict=True)):
        order = np.random.default_rng([plan.seed, c]).permutation(ix)
        test.append(order[: n.test])
        labelled = order[n.test : n.test + n.train + n.val]
        val.append(labelled[: n.val])
        train.append(labelled[n.val :])
    if test_labels is not None:
        test_idx = np.flatnonzero(test_labels >= 0)
        source = f"dataset {test_key}"
    else:
        test_idx = np.sort(np.concatenate(test))
        source = f"stratified {plan.test_fraction} of the dataset (seed {plan.seed})"
    train_idx, val_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
    if len(test_idx) == 0:
        raise SplitError("test_fraction", "the test split is empty; give a larger fraction or test_dataset_id")
    digest = hashlib.sha256(f"{dataset_key}|{test_key or ''}".encode())
    for part in (train_idx, val_idx, test_idx):
        digest.update(b"|" + part.astype(np.int64).tobytes())
    return Splits(train_idx, val_idx, test_idx, source, "sub_" + digest.hexdigest()[:16])
