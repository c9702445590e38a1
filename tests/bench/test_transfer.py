"""bench/transfer.py's pure parts: the fine-tuning budget, the recipes the search chose, and the report's cells
and verdict (the runs themselves are the evaluate tests')."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the scripts import ``common``

import transfer


def test_every_fraction_sees_about_the_same_number_of_images() -> None:
    # 540 images: 2 whole batches of 256 per epoch; 5,400: 21.
    assert transfer.finetune_epochs(540) == 70
    assert transfer.finetune_epochs(5400) == 7
    assert transfer.finetune_epochs(100, budget=1000) == 10


def test_the_search_picks_the_best_validation_accuracy_per_arm(tmp_path: Path) -> None:
    path = tmp_path / "tuning.jsonl"
    rows = [
        {"arm": "supervised", "best_val_accuracy": 0.7, "learning_rate": 0.1, "backbone_lr_multiplier": 1.0},
        {"arm": "supervised", "best_val_accuracy": 0.8, "learning_rate": 0.03, "backbone_lr_multiplier": 1.0},
        {"arm": "finetune", "best_val_accuracy": 0.8, "learning_rate": 0.03, "backbone_lr_multiplier": 0.1},
        {"arm": "finetune", "best_val_accuracy": 0.8, "learning_rate": 0.03, "backbone_lr_multiplier": 1.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert transfer.chosen_recipes(path) == {
        "supervised": {"learning_rate": 0.03, "backbone_lr_multiplier": 1.0},
        "finetune": {"learning_rate": 0.03, "backbone_lr_multiplier": 0.1},  # a tie keeps the first tried
    }
    assert transfer.chosen_recipes(tmp_path / "none.jsonl")["finetune"] == transfer.DEFAULT_FINETUNE


def test_the_report_gives_mean_and_std_over_seeds_and_a_verdict() -> None:
    def row(seed: int, encoder: str, protocol: str, top1: float) -> dict:
        return {"seed": seed, "encoder": encoder, "fraction": 0.01, "protocol": protocol, "top1": top1}

    rows = [
        row(0, "simclr", "finetune_full", 0.80),
        row(1, "simclr", "finetune_full", 0.82),
        row(0, "supervised", "supervised", 0.75),
        row(1, "supervised", "supervised", 0.77),
    ]
    recipes = transfer.chosen_recipes(Path("/nonexistent"))
    text = transfer.report(rows, {"date": "d", "command": "c", "machine": "m"}, recipes)
    assert "| simclr | – | – | – | 81.0 ± 1.4 | – |" in text
    assert "| supervised | – | – | – | – | 76.0 ± 1.4 |" in text
    assert "(simclr, finetune_full: 81.0 %) against the supervised baseline (76.0 %): +5.0 points" in text
    # 5.0 points over a standard error of sqrt(0.0002 / 2 + 0.0002 / 2) = 1.41 points.
    assert "3.5 standard errors (2 and 2 seeds): self-supervision wins at this budget" in text


def test_a_margin_under_two_standard_errors_is_no_claim() -> None:
    rows = [
        {"seed": s, "encoder": e, "fraction": 0.01, "protocol": p, "top1": t}
        for s, e, p, t in [
            (0, "moco", "linear", 0.77),
            (1, "moco", "linear", 0.75),
            (0, "supervised", "supervised", 0.76),
            (1, "supervised", "supervised", 0.74),
        ]
    ]
    by = transfer.defaultdict(list)
    for r in rows:
        by[(r["encoder"], r["fraction"], r["protocol"])].append(r["top1"])
    assert "does not clearly win" in transfer.verdict(by)


def test_the_budget_table_puts_longer_pretraining_beside_one_epoch() -> None:
    one = {"fraction": 0.01, "seed": 0}
    rows = [
        {**one, "encoder": "simclr", "protocol": "linear", "top1": 0.75},
        {**one, "encoder": "simclr", "protocol": "linear", "top1": 0.99, "seed": 5},  # a seed the sweep lacks
        {**one, "encoder": "supervised", "protocol": "supervised", "top1": 0.77},
    ]
    budget = [{**one, "encoder": "simclr", "protocol": "linear", "top1": 0.8, "pretrain_epochs": 4}]
    text = transfer.budget_report(rows, budget)
    assert "| simclr | 1 | – | 75.0 (n=1) | – |" in text
    assert "| simclr | 4 | – | 80.0 (n=1) | – |" in text
    assert "| supervised (no pretraining) | – | – | – | 77.0 (n=1) |" in text
    assert transfer.budget_report(rows, []) == ""
