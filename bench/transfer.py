"""Does self-supervision pay off with few labels? Fashion-MNIST, ResNet-18 at 32 px: pretrain SimCLR, MoCo and BYOL
without labels, then kNN, linear probe and fine-tuning (``full`` and ``frozen``) with 1 % and 10 % of the labels,
beside the same backbone trained from scratch on the same labels for the same number of steps, a random-init
encoder and raw pixels. The official test set is the test split and is never used for a choice.

    python bench/transfer.py                 # 3 seeds; appends to bench/results/transfer.jsonl, then reports
    python bench/transfer.py --seeds 0       # one seed
    python bench/transfer.py --report        # rewrite the docs/BENCHMARKS.md section from the results file

Every run is recorded as it finishes, so an interrupted benchmark keeps what it measured and the report says how
many seeds each number has."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, machine, machine_line, write_section

from ssl_core.config import TrainConfig
from ssl_core.evaluate import classification_metrics, embed_images, knn_classification, pixel_features
from ssl_core.fashion_mnist import CLASSES, load_fashion_mnist
from ssl_core.finetune import Classifier, FinetuneConfig, finetune, predict_logits
from ssl_core.linear_probe import linear_probe
from ssl_core.methods.base import DataInfo
from ssl_core.splits import SplitPlan, Splits, make_splits
from ssl_core.train import Trainer, build_method, initial_backbone

RESULTS = RESULTS_DIR / "transfer.jsonl"
METHODS = ("simclr", "moco", "byol")
FRACTIONS = (0.01, 0.1)
IMAGE_SIZE = 32
BACKBONE = {"backbone": "resnet18", "stem": "standard", "image_size": IMAGE_SIZE}
PRETRAIN = {"batch_size": 256, "epochs": 1}
#: Fine-tuning and the supervised baseline see ~36,000 augmented images whatever the fraction: the same budget.
FINETUNE_IMAGES = 36_000
FINETUNE_BATCH = 256


def _images(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(gray[:, None])


def finetune_epochs(train_images: int, budget: int = FINETUNE_IMAGES) -> int:
    """Epochs that show about ``budget`` images (whole batches only, as the loop drops a last partial one)."""
    batch = min(FINETUNE_BATCH, train_images)
    return max(1, round(budget / (train_images // batch * batch)))


class Run:
    def __init__(self, seed: int, device: torch.device, limit: int | None = None, pretrain_epochs: int = 1) -> None:
        self.seed = seed
        self.device = device
        self.pretrain_epochs = pretrain_epochs
        train, self.train_labels = load_fashion_mnist("train", limit)
        test, self.test_labels = load_fashion_mnist("test", limit // 4 if limit else None)
        self.train, self.test = _images(train), _images(test)
        self.finetune_images = FINETUNE_IMAGES if limit is None else limit

    def splits(self, fraction: float) -> Splits:
        plan = SplitPlan(test_fraction=None, label_fraction=fraction, val_fraction=0.1, seed=self.seed)
        return make_splits(
            self.train_labels, 10, plan, "fashion-mnist-train", CLASSES, self.test_labels, "fashion-mnist-test"
        )

    def pretrain(self, method: str) -> tuple[torch.nn.Module, dict[str, Any]]:
        budget = {**PRETRAIN, "epochs": self.pretrain_epochs}
        cfg = TrainConfig(method=method, seed=self.seed, **BACKBONE, **budget)  # type: ignore[arg-type]
        m = build_method(cfg, {}, DataInfo(len(self.train), 1))
        result = Trainer(m, self.train, cfg, self.device).run()
        info = {"pretrain_steps": result.steps, "pretrain_seconds": round(result.seconds, 1)}
        return m.encoder(), info

    def frozen_rows(
        self, name: str, encoder: torch.nn.Module | None, fractions: tuple[float, ...] = FRACTIONS
    ) -> Iterator[dict[str, Any]]:
        """kNN and linear probe of an encoder's features (None: raw pixels) at each fraction."""
        if encoder is None:
            train_x, test_x = pixel_features(self.train, IMAGE_SIZE), pixel_features(self.test, IMAGE_SIZE)
        else:
            train_x = embed_images(encoder, self.train, IMAGE_SIZE, self.device, normalize=False)  # type: ignore[arg-type]
            test_x = embed_images(encoder, self.test, IMAGE_SIZE, self.device, normalize=False)  # type: ignore[arg-type]
        for fraction in fractions:
            s = self.splits(fraction)
            bank_idx = np.concatenate([s.train, s.val])
            knn = knn_classification(
                train_x[bank_idx], self.train_labels[bank_idx], test_x, self.test_labels, list(CLASSES), 20, 0.1
            )
            yield {"encoder": name, "fraction": fraction, "protocol": "knn", "top1": knn["top1"], "subset": s.subset_id}
            started = time.monotonic()
            probe = linear_probe(
                train_x[s.train],
                torch.from_numpy(self.train_labels[s.train]).long(),
                train_x[s.val],
                torch.from_numpy(self.train_labels[s.val]).long(),
                10,
            )
            with torch.no_grad():
                scores = probe.head(test_x.float())
            linear = classification_metrics(scores, self.test_labels, list(CLASSES))
            yield {
                "encoder": name,
                "fraction": fraction,
                "protocol": "linear",
                "top1": linear["top1"],
                "weight_decay": probe.weight_decay,
                "seconds": round(time.monotonic() - started, 1),
                "subset": s.subset_id,
            }

    def finetune_row(
        self, name: str, backbone: torch.nn.Module, fraction: float, strategy: str, recipe: dict[str, float]
    ) -> dict[str, Any]:
        s = self.splits(fraction)
        cfg = FinetuneConfig(
            image_size=IMAGE_SIZE,
            strategy=strategy,  # type: ignore[arg-type]
            epochs=finetune_epochs(len(s.train), self.finetune_images),
            batch_size=FINETUNE_BATCH,
            learning_rate=recipe["learning_rate"],
            backbone_lr_multiplier=recipe["backbone_lr_multiplier"],
            seed=self.seed,
        )
        classifier = Classifier(backbone, 10)  # type: ignore[arg-type]
        result = finetune(classifier, self.train, self.train_labels, s.train, s.val, cfg, self.device)
        logits = predict_logits(classifier, self.test, IMAGE_SIZE, self.device)
        metrics = classification_metrics(logits, self.test_labels, list(CLASSES))
        return {
            "encoder": name,
            "fraction": fraction,
            "protocol": "supervised" if name == "supervised" else f"finetune_{strategy}",
            "top1": metrics["top1"],
            "epochs": result.epochs,
            "steps": result.steps,
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "seconds": round(result.seconds, 1),
            "precision": result.precision,
            "subset": s.subset_id,
            **recipe,
        }

    def rows(self, methods: tuple[str, ...], recipes: dict[str, dict[str, float]]) -> Iterator[dict[str, Any]]:
        yield from self.frozen_rows("raw_pixels", None)
        cfg = TrainConfig(seed=self.seed, **BACKBONE)  # type: ignore[arg-type]
        yield from self.frozen_rows("random_init", initial_backbone(cfg).to(self.device))
        for fraction in FRACTIONS:
            yield self.finetune_row("supervised", initial_backbone(cfg), fraction, "full", recipes["supervised"])
        for method in methods:
            encoder, info = self.pretrain(method)
            state = {k: v.clone() for k, v in encoder.state_dict().items()}
            for row in self.frozen_rows(method, encoder):
                yield {**row, **info}
            for fraction in FRACTIONS:
                for strategy in ("full", "frozen"):
                    encoder.load_state_dict(state)  # each fine-tuning starts from the pretrained weights
                    yield {**self.finetune_row(method, encoder, fraction, strategy, recipes["finetune"]), **info}

    def budget_rows(self, methods: tuple[str, ...], recipes: dict[str, dict[str, float]]) -> Iterator[dict[str, Any]]:
        """Longer pretraining, 1 % of the labels only: kNN, linear probe and full fine-tuning."""
        for method in methods:
            encoder, info = self.pretrain(method)
            info["pretrain_epochs"] = self.pretrain_epochs
            for row in self.frozen_rows(method, encoder, (0.01,)):
                yield {**row, **info}
            yield {**self.finetune_row(method, encoder, 0.01, "full", recipes["finetune"]), **info}

    def tuning_rows(self) -> Iterator[dict[str, Any]]:
        """The recipe search, on the validation split of seed 0's 1 % subset: the supervised baseline's learning
        rate, and SimCLR full fine-tuning's learning rate and backbone multiplier."""
        cfg = TrainConfig(seed=self.seed, **BACKBONE)  # type: ignore[arg-type]
        for lr in TUNE_LRS:
            recipe = {"learning_rate": lr, "backbone_lr_multiplier": 1.0}
            yield {"arm": "supervised", **self.finetune_row("supervised", initial_backbone(cfg), 0.01, "full", recipe)}
        encoder, _ = self.pretrain("simclr")
        state = {k: v.clone() for k, v in encoder.state_dict().items()}
        for lr in TUNE_LRS:
            for multiplier in TUNE_MULTIPLIERS:
                encoder.load_state_dict(state)
                recipe = {"learning_rate": lr, "backbone_lr_multiplier": multiplier}
                yield {"arm": "finetune", **self.finetune_row("simclr", encoder, 0.01, "full", recipe)}


DEFAULT_FINETUNE = {"learning_rate": 0.1, "backbone_lr_multiplier": 0.1}
TUNE_LRS = (0.03, 0.1, 0.3)
TUNE_MULTIPLIERS = (0.1, 1.0)
TUNING = RESULTS_DIR / "transfer_tuning.jsonl"
BUDGET = RESULTS_DIR / "transfer_budget.jsonl"


def chosen_recipes(path: Path) -> dict[str, dict[str, float]]:
    """Per arm, the recipe with the best validation accuracy (ties: the first tried); the defaults without a
    search."""
    recipes = {"supervised": {"learning_rate": 0.1, "backbone_lr_multiplier": 1.0}, "finetune": DEFAULT_FINETUNE}
    if not path.exists():
        return recipes
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        score = row["best_val_accuracy"] or 0.0
        if row["arm"] not in best or score > best[row["arm"]][0]:
            recipe = {"learning_rate": row["learning_rate"], "backbone_lr_multiplier": row["backbone_lr_multiplier"]}
            best[row["arm"]] = (score, recipe)
    return {**recipes, **{arm: recipe for arm, (_, recipe) in best.items()}}


ROW_ORDER = ("raw_pixels", "random_init", *METHODS, "supervised")
COLUMNS = ("knn", "linear", "finetune_frozen", "finetune_full", "supervised")


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f} (n=1)"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def report(
    rows: list[dict[str, Any]], meta: dict[str, Any], recipes: dict[str, dict[str, float]], budget: str = ""
) -> str:
    by: dict[tuple[str, float, str], list[float]] = defaultdict(list)
    for r in rows:
        by[(r["encoder"], r["fraction"], r["protocol"])].append(r["top1"])
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        "## Transfer: few labels, self-supervised vs supervised from scratch",
        "",
        f"Measured by `bench/transfer.py` (`{meta['command']}`), runs finished {meta['date']}; seeds {seeds}.",
        "",
        meta["machine"],
        "",
        "**Protocol.**",
        "",
        "- Data: Fashion-MNIST. Pretraining: the 60,000 training images without labels. Test split: the official "
        "10,000 test images, used for nothing but these numbers.",
        "- Labels: a class-balanced, seeded subset of 1 % (600) or 10 % (6,000) of the training images; a tenth of "
        "it (per class) is the validation split, used for early stopping and the probe's weight decay.",
        f"- Backbone: torchvision ResNet-18, `standard` stem, {IMAGE_SIZE} px. Pretraining: each method's default "
        f"recipe, batch {PRETRAIN['batch_size']}, {PRETRAIN['epochs']} epoch (234 steps), bf16 autocast where the "
        "CPU has it.",
        "- kNN: weighted, k = 20, T = 0.1, bank = the labelled subset. Linear: L-BFGS logistic regression on "
        "standardised frozen features, weight decay chosen on the validation split, refitted on train + val.",
        f"- Fine-tuning (`finetune_full`: every layer; `finetune_frozen`: the head only) and `supervised` (the same "
        f"ResNet-18 from the seed's random init): SGD + Nesterov, weight decay 5e-4, warm-up + cosine, random "
        f"resized crops (0.5–1) and flips, batch {FINETUNE_BATCH}, ~{FINETUNE_IMAGES:,} training images seen whatever "
        f"the fraction (1 %: {finetune_epochs(540)} epochs, 10 %: {finetune_epochs(5400)}), early stopping after 20 "
        "epochs without a better validation accuracy, weights of the best validation epoch. Learning rates chosen "
        f"on seed 0's 1 % validation split (`--tune`, {TUNING.name}; docs/experiments/2026-12-04-fine-tuning-"
        f"recipe.md): fine-tuning head LR {recipes['finetune']['learning_rate']} per 256 with backbone × "
        f"{recipes['finetune']['backbone_lr_multiplier']} (frozen: the same head LR), supervised "
        f"{recipes['supervised']['learning_rate']} for every layer.",
        "- Cells: test top-1 accuracy (%), mean ± standard deviation over seeds (each seed: its own subset, "
        "initialisation and pretraining).",
        "",
    ]
    for fraction in FRACTIONS:
        lines += [
            f"### {fraction:.0%} of the labels",
            "",
            "| Encoder | kNN | Linear probe | Fine-tune frozen | Fine-tune full | Supervised from scratch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for enc in ROW_ORDER:
            cells = [_cell(by.get((enc, fraction, col), [])) for col in COLUMNS]
            if any(c != "–" for c in cells):
                lines.append(f"| {enc} | " + " | ".join(cells) + " |")
        lines.append("")
    pretrain = [r["pretrain_seconds"] for r in rows if "pretrain_seconds" in r]
    budget_text = (
        f"**Budget.** Pretraining is one epoch of the 60,000 images (234 steps; {statistics.fmean(pretrain) / 60:.0f} "
        "minutes of wall-clock per method on this machine, on average; some runs shared its 2 cores with the test "
        "suite). The table below repeats the 1 % rows after longer pretraining where a sweep was run "
        "(`--pretrain-epochs`)."
        if pretrain
        else ""
    )
    lines += [
        verdict(by),
        "",
        budget_text,
        "",
        budget,
        "Raw results: `bench/results/transfer*.jsonl` (one line per run).",
        "",
    ]
    return "\n".join(lines)


def budget_report(rows: list[dict[str, Any]], budget: list[dict[str, Any]]) -> str:
    """Test top-1 at 1 % of the labels against the epochs of pretraining, for the seeds the sweep ran."""
    if not budget:
        return ""
    seeds = sorted({r["seed"] for r in budget})
    by: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in rows:
        if r["seed"] in seeds and r["fraction"] == 0.01:
            by[(r["encoder"], 1, r["protocol"])].append(r["top1"])
    for r in budget:
        by[(r["encoder"], r["pretrain_epochs"], r["protocol"])].append(r["top1"])
    lines = [
        "### Longer pretraining, 1 % of the labels",
        "",
        f"`python bench/transfer.py --pretrain-epochs N --seeds {' '.join(map(str, seeds))}`: the same protocol "
        f"with N epochs of pretraining, seeds {seeds} only; the 1-epoch rows are those seeds' rows above. Which "
        "method to sweep was chosen after the 1-epoch table above was seen: read it as a measurement of that method "
        "at a longer budget, not as a pick of the best one.",
        "",
        "| Encoder | Pretraining epochs | kNN | Linear probe | Fine-tune full |",
        "|---|---:|---:|---:|---:|",
    ]
    swept = {r["encoder"] for r in budget}
    for enc, epochs in sorted({(e, n) for e, n, _ in by if e in swept}, key=lambda k: (METHODS.index(k[0]), k[1])):
        cells = [_cell(by.get((enc, epochs, col), [])) for col in ("knn", "linear", "finetune_full")]
        lines.append(f"| {enc} | {epochs} | " + " | ".join(cells) + " |")
    baseline = by.get(("supervised", 1, "supervised"), [])
    lines += [f"| supervised (no pretraining) | – | – | – | {_cell(baseline)} |", ""]
    longest = max(r["pretrain_epochs"] for r in budget)
    for enc in sorted(swept, key=METHODS.index):
        scored = [(statistics.fmean(v), col) for (e, n, col), v in by.items() if e == enc and n == longest and v]
        if scored and baseline:
            best, col = max(scored)
            lines.append(
                f"After {longest} epochs, {enc} ({col}: {100 * best:.1f} %) against the supervised baseline: "
                + _margin(by[(enc, longest, col)], baseline)
                + "."
            )
    return "\n".join(lines) + "\n"


def verdict(by: dict[tuple[str, float, str], list[float]]) -> str:
    """Best self-supervised row against the supervised baseline at 1 % of the labels."""
    baseline = by.get(("supervised", 0.01, "supervised"), [])
    candidates = [
        (statistics.fmean(v), enc, col)
        for (enc, fraction, col), v in by.items()
        if fraction == 0.01 and enc in METHODS and v
    ]
    if not baseline or not candidates:
        return "Not enough runs for a verdict yet."
    best, enc, col = max(candidates)
    head = (
        f"At 1 % of the labels, the best self-supervised row ({enc}, {col}: {100 * best:.1f} %) against the "
        f"supervised baseline ({100 * statistics.fmean(baseline):.1f} %)"
    )
    return f"**{head}: {_margin(by[(enc, 0.01, col)], baseline)}.**"


def _margin(runs: list[float], baseline: list[float]) -> str:
    """The difference of the means in points, in standard errors, and what it allows to claim."""
    diff = 100 * (statistics.fmean(runs) - statistics.fmean(baseline))
    if len(runs) < 2 or len(baseline) < 2:
        return f"{diff:+.1f} points ({len(runs)} and {len(baseline)} seeds: no standard error yet, no claim)"
    se = 100 * math.sqrt(statistics.variance(runs) / len(runs) + statistics.variance(baseline) / len(baseline))
    margin = abs(diff) / se if se > 0 else math.inf
    if margin < 2:
        claim = "within two standard errors: self-supervision does not clearly win at this budget"
    else:
        claim = "self-supervision wins at this budget" if diff > 0 else "self-supervision loses at this budget"
    return f"{diff:+.1f} points, {margin:.1f} standard errors ({len(runs)} and {len(baseline)} seeds): {claim}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the results file")
    parser.add_argument(
        "--tune", action="store_true", help="search the fine-tuning recipes on seed 0's validation split, then stop"
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=1,
        help="above 1: the budget sweep (1 %% of the labels only), results to transfer_budget.jsonl",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2,000 images, results to transfer_quick.jsonl, no report"
    )
    args = parser.parse_args()
    device = torch.device("cpu")
    command = "python bench/transfer.py " + (
        "--tune, then python bench/transfer.py --seeds 0 1 2" if "--report" in sys.argv else " ".join(sys.argv[1:])
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = RESULTS.with_name("transfer_quick.jsonl") if args.quick else RESULTS
    if args.tune:
        for row in Run(0, device, limit=2000 if args.quick else None).tuning_rows():
            print(json.dumps(row), flush=True)
            with (results.with_name("transfer_tuning_quick.jsonl") if args.quick else TUNING).open("a") as f:
                f.write(json.dumps(row) + "\n")
        return
    recipes = chosen_recipes(TUNING)
    print("recipes:", json.dumps(recipes), flush=True)
    if args.pretrain_epochs > 1 and not args.report:
        for seed in args.seeds:
            run = Run(seed, device, limit=2000 if args.quick else None, pretrain_epochs=args.pretrain_epochs)
            for row in run.budget_rows(tuple(args.methods), recipes):
                row = {"seed": seed, **row, "finished": datetime.now(UTC).isoformat(timespec="seconds")}
                print(json.dumps(row), flush=True)
                with (results.with_name("transfer_budget_quick.jsonl") if args.quick else BUDGET).open("a") as f:
                    f.write(json.dumps(row) + "\n")
    elif not args.report:
        for seed in args.seeds:
            run = Run(seed, device, limit=2000 if args.quick else None)
            for row in run.rows(tuple(args.methods), recipes):
                row = {"seed": seed, **row, "finished": datetime.now(UTC).isoformat(timespec="seconds")}
                print(json.dumps(row), flush=True)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    if args.quick:
        return
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    finished = sorted(r["finished"] for r in rows)
    meta = {
        "date": f"{finished[0][:16].replace('T', ' ')} to {finished[-1][:16].replace('T', ' ')} UTC",
        "command": command.strip(),
        "machine": machine_line(machine()),
    }
    budget = [json.loads(line) for line in BUDGET.read_text().splitlines()] if BUDGET.exists() else []
    write_section("transfer", report(rows, meta, recipes, budget_report(rows, budget)))


if __name__ == "__main__":
    main()
