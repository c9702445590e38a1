"""Does continual pretraining forget? Fashion-MNIST in two stages: SimCLR on the training images of classes 0-4,
then on those of classes 5-9 starting from the first stage's encoder, with ``preserve`` none, lwf or cassle;
beside a joint model pretrained on all ten classes for the same number of steps. After the second stage: kNN on
the official test images of the first classes (forgetting) and of the second (learning), each a 5-way task with
a bank of labelled training images of those classes. No label is used for training or for a choice.

    python bench/continual.py                   # 3 seeds; appends to bench/results/continual.jsonl, then reports
    python bench/continual.py --report          # rewrite the docs/BENCHMARKS.md section from the results file
    python bench/continual.py --quick           # smoke run on 1,000 images per stage, no report

Every run is recorded as it finishes, so an interrupted benchmark keeps what it measured."""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, machine, machine_line, machine_line_now, write_section

from ssl_core.backbones import Backbone
from ssl_core.config import TrainConfig
from ssl_core.continual import Preserving
from ssl_core.evaluate import embed_images, knn_classification
from ssl_core.fashion_mnist import CLASSES, load_fashion_mnist
from ssl_core.methods.base import DataInfo
from ssl_core.train import Trainer, build_method

RESULTS = RESULTS_DIR / "continual.jsonl"
FIRST, SECOND = tuple(range(5)), tuple(range(5, 10))
ARMS = ("none", "lwf", "cassle")
METHOD = "simclr"
IMAGE_SIZE = 32
BACKBONE = {"backbone": "resnet18", "stem": "standard", "image_size": IMAGE_SIZE}
BATCH = 256
#: Epochs of each stage over its 30,000 images; the joint model trains the same steps over all 60,000.
STAGE_EPOCHS = 2
PRESERVE_WEIGHT = 1.0
#: kNN bank: this many labelled training images per class of the group (the queries: all its test images).
BANK_PER_CLASS = 1000


class Stages:
    def __init__(self, limit: int | None) -> None:
        train, self.train_labels = load_fashion_mnist("train")
        test, self.test_labels = load_fashion_mnist("test")
        self.train, self.test = train[:, None], test[:, None]
        self.limit = limit

    def pretraining_images(self, classes: tuple[int, ...]) -> np.ndarray:
        idx = np.flatnonzero(np.isin(self.train_labels, classes))
        return np.ascontiguousarray(self.train[idx[: self.limit] if self.limit else idx])

    def joint_images(self) -> np.ndarray:
        """Both stages' images together (as many as the two stages saw)."""
        return np.concatenate([self.pretraining_images(FIRST), self.pretraining_images(SECOND)])

    def knn(self, encoder: Backbone, classes: tuple[int, ...], device: torch.device) -> float:
        bank = np.concatenate([np.flatnonzero(self.train_labels == c)[:BANK_PER_CLASS] for c in classes])
        queries = np.flatnonzero(np.isin(self.test_labels, classes))
        bank_x = embed_images(encoder, self.train[bank], IMAGE_SIZE, device)
        query_x = embed_images(encoder, self.test[queries], IMAGE_SIZE, device)
        names = [CLASSES[c] for c in classes]
        remap = {c: i for i, c in enumerate(classes)}
        bank_y = np.array([remap[int(y)] for y in self.train_labels[bank]])
        query_y = np.array([remap[int(y)] for y in self.test_labels[queries]])
        return float(knn_classification(bank_x, bank_y, query_x, query_y, names, 20, 0.1)["top1"])


def pretrain(
    images: np.ndarray,
    seed: int,
    epochs: int,
    device: torch.device,
    start: Backbone | None = None,
    preserve: str = "none",
) -> tuple[Backbone, dict[str, Any]]:
    cfg = TrainConfig(method=METHOD, seed=seed, batch_size=BATCH, epochs=epochs, **BACKBONE)  # type: ignore[arg-type]
    method = build_method(cfg, {}, DataInfo(len(images), 1), backbone=copy.deepcopy(start) if start else None)
    if preserve != "none":
        method = Preserving(method, preserve, PRESERVE_WEIGHT)  # type: ignore[arg-type]
    result = Trainer(method, images, cfg, device).run()
    return method.encoder(), {"steps": result.steps, "seconds": round(result.seconds, 1)}


def run_seed(stages: Stages, seed: int, device: torch.device, epochs: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def record(arm: str, encoder: Backbone, info: dict[str, Any]) -> None:
        row = {
            "seed": seed,
            "arm": arm,
            "first_classes_knn": stages.knn(encoder, FIRST, device),
            "second_classes_knn": stages.knn(encoder, SECOND, device),
            **info,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)

    first, info = pretrain(stages.pretraining_images(FIRST), seed, epochs, device)
    record("first_stage", first, info)
    second = stages.pretraining_images(SECOND)
    for arm in ARMS:
        encoder, info = pretrain(second, seed, epochs, device, start=first, preserve=arm)
        record(arm, encoder, info)
    joint, info = pretrain(stages.joint_images(), seed, epochs, device)
    record("joint", joint, info)
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} (n=1)" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _margin(a: list[float], b: list[float]) -> str:
    diff = 100 * (statistics.fmean(a) - statistics.fmean(b))
    if len(a) < 2 or len(b) < 2:
        return f"{diff:+.1f} points (too few seeds for a standard error)"
    se = 100 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    ratio = abs(diff) / se if se > 0 else math.inf
    verdict = "established" if ratio >= 2 else "not established (under two standard errors)"
    return f"{diff:+.1f} points, {ratio:.1f} standard errors: {verdict}"


def _gain(a: list[float], b: list[float]) -> float:
    """How many standard errors the mean of ``a`` lies above that of ``b`` (negative: below)."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.fmean(a) - statistics.fmean(b)
    return diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0


ARM_NAMES = {
    "first_stage": "after stage 1 (classes 0–4 only)",
    "none": "stage 2, `preserve: none`",
    "lwf": "stage 2, `preserve: lwf`",
    "cassle": "stage 2, `preserve: cassle`",
    "joint": "joint (all classes, same steps)",
}


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by: dict[tuple[str, str], list[float]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[(r["arm"], "first")].append(r["first_classes_knn"])
        by[(r["arm"], "second")].append(r["second_classes_knn"])
        seconds[r["arm"]].append(r["seconds"])
    seeds = sorted({r["seed"] for r in rows})
    epochs = rows[0].get("epochs", STAGE_EPOCHS) if rows else STAGE_EPOCHS
    lines = [
        "## Continual pretraining: forgetting",
        "",
        f"Measured by `bench/continual.py` (`{meta['command']}`), runs finished {meta['date']}; seeds {seeds}.",
        "",
        meta["machine"],
        "",
        "**Protocol.** Fashion-MNIST; SimCLR (its default recipe), torchvision ResNet-18, `standard` stem, "
        f"{IMAGE_SIZE} px, batch {BATCH}, {epochs} epochs per stage over that stage's 30,000 training images "
        "(no labels). Stage 1: classes 0–4 (T-shirt … coat). Stage 2: classes 5–9 (sandal … ankle boot), starting "
        f"from stage 1's encoder, with each `preserve` (weight {PRESERVE_WEIGHT}, the default, not tuned). Joint: "
        "all 60,000 images for the same number of steps as the two stages together. kNN (k = 20, T = 0.1, cosine) "
        f"as a 5-way task per class group: bank {BANK_PER_CLASS:,} labelled training images per class, queries "
        "the group's 5,000 official test images. Cells: top-1 %, mean ± standard deviation over seeds (each seed "
        "its own initialisation, order and augmentations).",
        "",
        "| Encoder | kNN, classes 0–4 (old) | kNN, classes 5–9 (new) | Training s (mean) |",
        "|---|---:|---:|---:|",
    ]
    for arm in ("first_stage", *ARMS, "joint"):
        if (arm, "first") in by:
            lines.append(
                f"| {ARM_NAMES[arm]} | {_cell(by[(arm, 'first')])} | {_cell(by[(arm, 'second')])} | "
                f"{statistics.fmean(seconds[arm]):.0f} |"
            )
    lines.append("")
    if all((a, "first") in by for a in ARMS):
        lines.append(
            "- Forgetting, `none` against stage 1 on the old classes: "
            f"{_margin(by[('none', 'first')], by[('first_stage', 'first')])}."
        )
        for arm in ("lwf", "cassle"):
            lines.append(
                f"- `{arm}` against `none`: old classes {_margin(by[(arm, 'first')], by[('none', 'first')])}; "
                f"new classes {_margin(by[(arm, 'second')], by[('none', 'second')])}."
            )
        lines.append("")
        met = [arm for arm in ("lwf", "cassle") if _gain(by[(arm, "first")], by[("none", "first")]) >= 2]
        lines.append(
            "**Goal** (`lwf` and `cassle` forget less than `none` while learning the new classes as well): "
            + (f"met by {', '.join(met)}" if met else "not met")
            + f" at {epochs} epochs per stage. The schedule is far shorter than the papers' and `preserve_weight` "
            "was not tuned: a longer budget (a GPU) is what would test the methods."
        )
        lines.append("")
    lines += [
        "The preservation terms cost one more view per image through the encoder (and a frozen copy's forward "
        "pass): the training seconds above include it. Raw results: `bench/results/continual.jsonl`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=STAGE_EPOCHS, help="per stage")
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the results file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 images per stage, no report")
    args = parser.parse_args()
    device = torch.device("cpu")
    results = RESULTS.with_name("continual_quick.jsonl") if args.quick else RESULTS
    if not args.report:
        stages = Stages(1000 if args.quick else None)
        machine_at_start = machine_line(machine())
        for seed in args.seeds:
            for row in run_seed(stages, seed, device, args.epochs):
                with results.open("a") as f:
                    f.write(json.dumps({**row, "epochs": args.epochs, "machine": machine_at_start}) + "\n")
    if args.quick:
        return
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    meta = {
        "command": " ".join(["python bench/continual.py", *(a for a in sys.argv[1:] if a != "--report")]),
        "date": max((r["finished"][:10] for r in rows), default="–"),
        "machine": rows[0]["machine"] if rows and "machine" in rows[0] else machine_line_now(),
    }
    print(write_section("continual", report(rows, meta)))


if __name__ == "__main__":
    main()
