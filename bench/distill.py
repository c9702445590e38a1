"""Is a distilled student closer to its teacher than the same student pretrained directly? Fashion-MNIST: a
ResNet-50 teacher pretrained with SimCLR, then ResNet-18 and MobileNetV3-Small students trained for the same
number of epochs either by SimCLR directly or by distillation from the teacher (``embedding`` and ``similarity``
objectives). kNN and a linear probe on the official test set, parameters, FLOPs and embedding images/s. No label
is used for training or for a choice except the probe's penalty, chosen on a validation split of training images.

    python bench/distill.py                 # appends to bench/results/distill.jsonl, then reports
    python bench/distill.py --report        # rewrite the docs/BENCHMARKS.md section from the results file
    python bench/distill.py --quick         # smoke run on 1,000 images, no report

The teacher is trained once per seed and kept in /tmp (``--teacher-cache``) so an interrupted run resumes."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, machine, machine_line, machine_line_now, write_section

from ssl_core.backbones import Backbone, backbone_cost, build_backbone
from ssl_core.config import TrainConfig
from ssl_core.distill import Distiller, DistillParams
from ssl_core.evaluate import embed_images, knn_classification
from ssl_core.fashion_mnist import CLASSES, load_fashion_mnist
from ssl_core.linear_probe import linear_probe
from ssl_core.methods.base import DataInfo
from ssl_core.train import Trainer, build_method, initial_backbone, resolve_optimizer

RESULTS = RESULTS_DIR / "distill.jsonl"
IMAGE_SIZE = 32
STEM = "standard"
BATCH = 256
TEACHER = "resnet50"
STUDENTS = ("resnet18", "mobilenet_v3_small")
ARMS = ("simclr", "embedding", "similarity")
#: With ``--logits``: the teacher plus its linear probe as the classifier teacher, hard labels on the labelled images.
LOGITS = "logits"
#: Labelled training images for the kNN bank and the linear probe (a tenth of them: the probe's validation).
LABELLED = 10_000


class Data:
    def __init__(self, limit: int | None) -> None:
        train, self.train_labels = load_fashion_mnist("train", limit)
        test, self.test_labels = load_fashion_mnist("test", limit // 4 if limit else None)
        self.train, self.test = np.ascontiguousarray(train[:, None]), np.ascontiguousarray(test[:, None])
        self.labelled = min(LABELLED, len(self.train))

    def evaluate(self, encoder: Backbone, device: torch.device) -> dict[str, float]:
        return self.probe(encoder, device)[0]

    def probe(self, encoder: Backbone, device: torch.device) -> tuple[dict[str, float], torch.nn.Linear]:
        """kNN and linear-probe test accuracy, and the probe (on raw features): a teacher's classifier head."""
        bank = embed_images(encoder, self.train[: self.labelled], IMAGE_SIZE, device, normalize=False)
        test = embed_images(encoder, self.test, IMAGE_SIZE, device, normalize=False)
        bank_y = self.train_labels[: self.labelled]
        knn = knn_classification(bank, bank_y, test, self.test_labels, list(CLASSES), 20, 0.1)["top1"]
        n_val = self.labelled // 10
        y = torch.from_numpy(bank_y).long()
        probe = linear_probe(bank[n_val:], y[n_val:], bank[:n_val], y[:n_val], len(CLASSES))
        with torch.no_grad():
            predicted = probe.head(test.float()).argmax(dim=1).numpy()
        return {"knn": float(knn), "linear": float((predicted == self.test_labels).mean())}, probe.head

    def labels_for_distillation(self) -> torch.Tensor:
        """The labelled images' classes, -1 for the others: the hard targets of the logits objective."""
        labels = np.full(len(self.train), -1, dtype=np.int64)
        labels[: self.labelled] = self.train_labels[: self.labelled]
        return torch.from_numpy(labels)


def throughput(encoder: Backbone, images: np.ndarray, device: torch.device) -> float:
    """Embedding images/s at batch 256 over 2,048 images, after a warm-up batch; the median of 3 rounds."""
    sample = images[:2048]
    embed_images(encoder, sample[:256], IMAGE_SIZE, device)
    rounds = []
    for _ in range(3):
        tick = time.perf_counter()
        embed_images(encoder, sample, IMAGE_SIZE, device)
        rounds.append(len(sample) / (time.perf_counter() - tick))
    return round(statistics.median(rounds), 1)


def _config(backbone: str, method: str, seed: int, epochs: int) -> TrainConfig:
    return TrainConfig(
        method=method, backbone=backbone, stem=STEM, image_size=IMAGE_SIZE, batch_size=BATCH, epochs=epochs, seed=seed
    )


def teacher_for(data: Data, seed: int, epochs: int, device: torch.device, cache: Path) -> tuple[Backbone, float]:
    path = cache / f"jaga-distill-teacher-{TEACHER}-s{seed}-e{epochs}-n{len(data.train)}.pt"
    teacher = build_backbone(TEACHER, STEM, IMAGE_SIZE)
    if path.exists():
        saved = torch.load(path, weights_only=True)
        teacher.load_state_dict(saved["state_dict"])
        return teacher, saved["seconds"]
    method = build_method(_config(TEACHER, "simclr", seed, epochs), {}, DataInfo(len(data.train), 1))
    result = Trainer(method, data.train, _config(TEACHER, "simclr", seed, epochs), device).run()
    teacher = method.encoder()
    torch.save({"state_dict": teacher.state_dict(), "seconds": result.seconds}, path)
    return teacher, result.seconds


def train_student(
    data: Data,
    backbone: str,
    arm: str,
    teacher: Backbone,
    seed: int,
    epochs: int,
    device: torch.device,
    teacher_head: torch.nn.Linear | None = None,
) -> tuple[Backbone, float]:
    if arm == "simclr":
        cfg = _config(backbone, "simclr", seed, epochs)
        method = build_method(cfg, {}, DataInfo(len(data.train), 1))
    else:
        cfg = _config(backbone, "distill", seed, epochs)
        method = Distiller(
            initial_backbone(cfg),
            DistillParams(objective=arm),  # type: ignore[arg-type]
            IMAGE_SIZE,
            DataInfo(len(data.train), 1),
            teacher=teacher,
            teacher_head=teacher_head if arm == "logits" else None,
            labels=data.labels_for_distillation() if arm == "logits" else None,
        )
        method.optimizer_settings = resolve_optimizer(cfg, method.optimizer_settings)
    result = Trainer(method, data.train, cfg, device).run()
    return method.encoder(), result.seconds


def row(
    seed: int, encoder_name: str, arm: str, encoder: Backbone, seconds: float, data: Data, device: torch.device
) -> dict[str, Any]:
    cost = backbone_cost(encoder_name, STEM, IMAGE_SIZE)
    return {
        "seed": seed,
        "backbone": encoder_name,
        "arm": arm,
        **data.evaluate(encoder, device),
        "parameters": cost.parameters,
        "flops": cost.flops,
        "images_per_second": throughput(encoder, data.test, device),
        "train_seconds": round(seconds, 1),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} (n=1)" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["backbone"], r["arm"])].append(r)
    seeds = sorted({r["seed"] for r in rows})
    first = rows[0] if rows else {}
    lines = [
        "## Distillation into small students",
        "",
        f"Measured by `bench/distill.py` (`{meta['command']}`), runs finished {meta['date']}; seeds {seeds}.",
        "",
        meta["machine"],
        "",
        f"**Protocol.** Fashion-MNIST, {first.get('train_images', 60000):,} training images without labels, "
        f"{IMAGE_SIZE} px, `{STEM}` stem, batch {BATCH}. Teacher: torchvision ResNet-50, SimCLR (default recipe), "
        f"{first.get('teacher_epochs', '?')} epochs. Students: the same number of epochs "
        f"({first.get('student_epochs', '?')}) by SimCLR directly (`simclr`), or by distillation from the "
        "teacher: `embedding` (cosine to its normalised embedding through a 2-layer MLP) and `similarity` (SEED: "
        "cross-entropy between similarity distributions over a queue of 4,096 teacher embeddings, temperatures "
        "0.07 and 1e-4), both with the default SGD recipe (0.1 per 256, weight decay 5e-4), one SimCLR view per "
        "image seen by both. kNN (k = 20, T = 0.1, cosine): bank = the first 10,000 training images with labels, "
        "queries = the official 10,000 test images. Linear probe: L-BFGS logistic regression on 9,000 of those "
        "training images, penalty chosen on the other 1,000, tested on the official test set. Throughput: "
        "embedding 2,048 test images at batch 256 (median of 3), float32, this machine. FLOPs: torch's counter, "
        "one image's forward pass. `logits` (`--logits`): the teacher with its linear probe as the classifier teacher, "
        "soft targets at T = 4 with λ = 0.9 and hard labels on the 10,000 labelled images: unlike the other rows, "
        "these students saw labels. Training s: wall-clock seconds of training, a distilled student's including the "
        "teacher's forward passes (which dominate for the MobileNet). Cells: top-1 %, mean ± std over seeds where "
        "there are several.",
        "",
        "| Encoder | Training | kNN | Linear probe | Parameters | MFLOPs / image | Embedding images/s | Training s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = [(TEACHER, "teacher")] + [(s, a) for s in STUDENTS for a in (*ARMS, LOGITS)]
    for key in order:
        group = by.get(key, [])
        if not group:
            continue
        lines.append(
            f"| {key[0]} | {key[1]} | {_cell([r['knn'] for r in group])} | {_cell([r['linear'] for r in group])} | "
            f"{group[0]['parameters'] / 1e6:.2f} M | {group[0]['flops'] / 1e6:.0f} | "
            f"{statistics.fmean(r['images_per_second'] for r in group):,.0f} | "
            f"{statistics.fmean(r['train_seconds'] for r in group):,.0f} |"
        )
    lines += ["", *verdicts(by), "", "Raw results: `bench/results/distill.jsonl`.", ""]
    return "\n".join(lines)


def verdicts(by: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """For each student: the gap to the teacher's kNN accuracy, distilled (best objective) against direct."""
    teacher = by.get((TEACHER, "teacher"), [])
    if not teacher:
        return []
    t = statistics.fmean(r["knn"] for r in teacher)
    out = []
    for student in STUDENTS:
        direct = by.get((student, "simclr"), [])
        distilled = [
            (statistics.fmean(r["knn"] for r in by[(student, a)]), a) for a in ARMS[1:] if by.get((student, a))
        ]
        if not direct or not distilled:
            continue
        best, arm = max(distilled)
        d = statistics.fmean(r["knn"] for r in direct)
        n = min(len(direct), len(by[(student, arm)]))
        out.append(
            f"- {student}: teacher kNN {100 * t:.1f} %; distilled (`{arm}`) {100 * best:.1f} % "
            f"({100 * (best - t):+.1f} points from the teacher), directly pretrained {100 * d:.1f} % "
            f"({100 * (d - t):+.1f}); {n} seed{'s' if n != 1 else ''}"
            + (": no standard error, a single run." if n < 2 else ".")
        )
        if d > t:
            out.append(
                f"  The directly pretrained {student} beats the teacher: at this budget the teacher is not the "
                "stronger encoder the goal assumes, so the goal is not tested here."
            )
    return out


def record(results: Path, r: dict[str, Any]) -> None:
    print(json.dumps(r), flush=True)
    with results.open("a") as f:
        f.write(json.dumps(r) + "\n")


def _arms() -> list[tuple[str, str]]:
    return [(student, arm) for student in STUDENTS for arm in ARMS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=None, help="the first N training images (default: all)")
    parser.add_argument("--teacher-cache", type=Path, default=Path("/tmp"))
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the results file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 images, 1 epoch each, no report")
    parser.add_argument(
        "--logits", action="store_true", help="only the logits students, from the cached teacher and its linear probe"
    )
    args = parser.parse_args()
    device = torch.device("cpu")
    results = RESULTS.with_name("distill_quick.jsonl") if args.quick else RESULTS
    if not args.report:
        limit = 1000 if args.quick else args.train_images
        teacher_epochs, student_epochs = (1, 1) if args.quick else (args.teacher_epochs, args.student_epochs)
        data = Data(limit)
        common = {
            "train_images": len(data.train),
            "teacher_epochs": teacher_epochs,
            "student_epochs": student_epochs,
            "machine": machine_line(machine()),
        }
        for seed in args.seeds:
            teacher, seconds = teacher_for(data, seed, teacher_epochs, device, args.teacher_cache)
            if args.logits:
                head = data.probe(teacher, device)[1]
                for student in STUDENTS:
                    encoder, seconds = train_student(data, student, LOGITS, teacher, seed, student_epochs, device, head)
                    record(results, {**row(seed, student, LOGITS, encoder, seconds, data, device), **common})
                continue
            record(results, {**row(seed, TEACHER, "teacher", teacher, seconds, data, device), **common})
            for student, arm in _arms():
                encoder, seconds = train_student(data, student, arm, teacher, seed, student_epochs, device)
                record(results, {**row(seed, student, arm, encoder, seconds, data, device), **common})
    if args.quick:
        return
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    meta = {
        "command": " ".join(
            ["python bench/distill.py", *(a for a in sys.argv[1:] if a not in ("--report", "--logits"))]
        )
        + ("`, then `python bench/distill.py --logits" if any(r["arm"] == LOGITS for r in rows) else ""),
        "date": max((r["finished"][:10] for r in rows), default="–"),
        "machine": rows[0]["machine"] if rows and "machine" in rows[0] else machine_line_now(),
    }
    print(write_section("distill", report(rows, meta)))


if __name__ == "__main__":
    main()
