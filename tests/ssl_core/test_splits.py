"""Evaluation splits: per-class counts, refusals that name the setting to change, and seeded, stratified,
disjoint, nested subsets whose id identifies the images they hold."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_core.splits import ClassCounts, SplitError, SplitPlan, make_splits

NAMES = ("a", "b", "c")


def _labels(counts: tuple[int, ...], unlabelled: int = 0, seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)] + [np.full(unlabelled, -1)])
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def test_counts_follow_the_fractions_per_class() -> None:
    plan = SplitPlan(test_fraction=0.2, label_fraction=0.5, val_fraction=0.1)
    # 100 → 20 test, 40 labelled (4 val); 10 → 2 test, 4 labelled (1 val, the minimum); 2 → 1, 1 labelled, no val.
    assert plan.counts([100, 10, 2], NAMES) == [
        ClassCounts(test=20, train=36, val=4),
        ClassCounts(test=2, train=3, val=1),
        ClassCounts(test=1, train=1, val=0),
    ]


def test_labels_per_class_and_a_separate_test_set() -> None:
    plan = SplitPlan(test_fraction=None, labels_per_class=5, val_fraction=0.2)
    assert plan.counts([50, 7, 5], NAMES) == [ClassCounts(0, 4, 1)] * 3


def test_a_fraction_that_leaves_a_class_without_labels_is_refused_naming_it() -> None:
    with pytest.raises(SplitError) as err:
        SplitPlan(test_fraction=0.2, label_fraction=0.01).counts([1000, 40, 1000], NAMES)
    assert err.value.field == "label_fraction"
    assert "'b'" in err.value.reason
    assert "at least" in err.value.reason


def test_more_labels_per_class_than_a_class_has_is_refused_with_the_maximum() -> None:
    with pytest.raises(SplitError) as err:
        SplitPlan(test_fraction=0.2, labels_per_class=10).counts([100, 10, 100], NAMES)
    assert err.value.field == "labels_per_class"
    assert "at most 8" in err.value.reason


def test_splits_are_disjoint_stratified_and_skip_unlabelled_images() -> None:
    labels = _labels((50, 30, 20), unlabelled=15)
    s = make_splits(labels, 3, SplitPlan(test_fraction=0.2, label_fraction=0.5), "ds", NAMES)
    everything = np.concatenate([s.train, s.val, s.test])
    assert len(set(everything.tolist())) == len(everything)
    assert (labels[np.concatenate([s.train, s.val, s.test])] >= 0).all()
    assert np.bincount(labels[s.test], minlength=3).tolist() == [10, 6, 4]
    assert np.bincount(labels[s.train], minlength=3).tolist() == [18, 11, 7]
    assert np.bincount(labels[s.val], minlength=3).tolist() == [2, 1, 1]


def test_same_plan_and_seed_give_the_same_images_and_id() -> None:
    labels = _labels((40, 40, 40))
    plan = SplitPlan(label_fraction=0.25, seed=7)
    a, b = make_splits(labels, 3, plan, "ds", NAMES), make_splits(labels, 3, plan, "ds", NAMES)
    assert a.subset_id == b.subset_id
    assert np.array_equal(a.train, b.train)
    other = make_splits(labels, 3, SplitPlan(label_fraction=0.25, seed=8), "ds", NAMES)
    assert other.subset_id != a.subset_id
    assert make_splits(labels, 3, plan, "another dataset", NAMES).subset_id != a.subset_id


def test_a_smaller_fraction_is_inside_a_larger_one_of_the_same_seed() -> None:
    labels = _labels((200, 200, 200))
    small = make_splits(labels, 3, SplitPlan(label_fraction=0.05), "ds", NAMES)
    large = make_splits(labels, 3, SplitPlan(label_fraction=0.5), "ds", NAMES)
    assert np.array_equal(small.test, large.test)
    small_labelled = set(small.train.tolist()) | set(small.val.tolist())
    assert small_labelled <= set(large.train.tolist()) | set(large.val.tolist())


def test_a_test_dataset_supplies_the_test_split() -> None:
    labels = _labels((10, 10, 10))
    test_labels = np.array([0, 1, -1, 2, 2], dtype=np.int64)
    s = make_splits(labels, 3, SplitPlan(test_fraction=None), "ds", NAMES, test_labels, "ds_test")
    assert s.test.tolist() == [0, 1, 3, 4]
    assert len(s.train) + len(s.val) == 30
    assert s.test_source == "dataset ds_test"
