"""Jaga's SimCLR next to lightly's SimCLR: same data, backbone, batch, image size and wall-clock budget.

Run from the repository root:

    /work/venv/bin/python bench/bench_simclr.py            # the benchmark (about half an hour)
    /work/venv/bin/python bench/bench_simclr.py --quick    # a smoke run of a few minutes

Each implementation trains in its own subprocess (this script re-invoked with ``--child``), so its peak RSS
is its own. The parent measures augmentation throughput and the reference rows, then writes
``bench/results/simclr.json`` and the SimCLR section of ``docs/BENCHMARKS.md``.

Jaga's side is the project's own ``Trainer`` with its default SimCLR recipe. Lightly's side is a plain
PyTorch loop written the way lightly's CIFAR-10 benchmark and ``examples/pytorch/simclr.py`` do it:
``SimCLRTransform`` per PIL image in a ``DataLoader``, ``SimCLRProjectionHead(512, 512, 128)``,
``NTXentLoss()``, SGD with cosine annealing, fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from common import (
    RESULTS_DIR,
    ROOT,
    Data,
    GrayscaleViews,
    knn_of_encoder,
    machine,
    machine_line,
    median_images_per_second,
    peak_rss_mib,
    views_images_per_second,
    workers_peak_rss_mib,
    write_section,
)
from lightly_methods import GRAY_NORMALIZE
from torch import nn

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.device import resolve_device
from ssl_core.evaluate import knn_accuracy, pixel_features
from ssl_core.learning_check import KNN_K, KNN_TEMPERATURE
from ssl_core.train import Callbacks, Progress, Trainer, build_method

# Most batches timed by the augmentation-only measurement, after one warm-up batch; fewer when an epoch
# is shorter, so that lightly's DataLoader never restarts its workers inside the timed span.
AUG_BATCHES = 32
# The augmentation figure is the median over this many timed rounds: short timings are easily disturbed.
AUG_ROUNDS = 3
IMPLEMENTATIONS = ("jaga", "lightly", "lightly-bf16")


@dataclass(frozen=True)
class Settings:
    budget_minutes: float
    train_images: int
    test_images: int
    image_size: int
    batch_size: int
    stem: str
    seed: int
    lightly_workers: int
    quick: bool


# Lightly's side ------------------------------------------------------------------------------------------
def lightly_transform(image_size: int) -> Any:
    """Lightly's CIFAR-10 benchmark settings (``cj_strength=0.5``, no blur), made grayscale-appropriate:
    saturation, hue and random grayscale do nothing to an L image, and a 1-channel normalisation."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(
        input_size=image_size,
        cj_strength=0.5,
        gaussian_blur=0.0,
        cj_sat=0.0,
        cj_hue=0.0,
        random_gray_scale=0.0,
        normalize=GRAY_NORMALIZE,
    )


def lightly_loader(images: np.ndarray, s: Settings, num_workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        GrayscaleViews(images, lightly_transform(s.image_size)),
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(s.seed),
    )


class LightlySimCLR(nn.Module):
    """The model of lightly's CIFAR-10 benchmark, on a torchvision ResNet-18 with Jaga's stem."""

    def __init__(self, stem: str) -> None:
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        resnet = torchvision.models.resnet18()
        if stem == "small":  # the same modification as ssl_core.backbones
            resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            resnet.maxpool = nn.Identity()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = SimCLRProjectionHead(512, 512, 128)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 512), the interface ``embed_images`` evaluates."""
        return self.backbone(x).flatten(start_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.features(x))


def train_lightly(data: Data, s: Settings, device: torch.device, bf16: bool) -> dict[str, Any]:
    from lightly.loss import NTXentLoss

    torch.manual_seed(s.seed)
    model = LightlySimCLR(s.stem).to(device)
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    criterion = NTXentLoss()
    base_lr = 0.06 * s.batch_size / 128
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.9, weight_decay=5e-4)
    loader = lightly_loader(data.train, s, s.lightly_workers)
    budget = s.budget_minutes * 60
    steps, loss, elapsed = 0, math.nan, 0.0
    model.train()
    start = time.monotonic()
    while elapsed < budget:
        batches = iter(loader)
        for x0, x1 in batches:
            # Lightly anneals over max_epochs; a time budget fixes no epoch count, so anneal over the time.
            lr = base_lr * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            # The transform yields (B, 1, H, W); the ResNet takes 3 channels.
            x0 = x0.to(device).expand(-1, 3, -1, -1).contiguous(memory_format=memory_format)
            x1 = x1.to(device).expand(-1, 3, -1, -1).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                z0 = model(x0)
                z1 = model(x1)
                loss_t = criterion(z0, z1)
            loss_t.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            loss = float(loss_t.detach())
            elapsed = time.monotonic() - start
            if steps % 10 == 0:
                print(
                    f"  lightly{'-bf16' if bf16 else ''} step {steps}  loss {loss:.3f}  "
                    f"{steps * s.batch_size / elapsed:.0f} img/s  {elapsed:.0f}s",
                    file=sys.stderr,
                )
            if elapsed >= budget:
                break
        del batches  # shuts the epoch's workers down, so RUSAGE_CHILDREN covers them
    rss = peak_rss_mib()
    return {
        "model": model,
        "steps": steps,
        "epochs": steps / len(loader),
        "seconds": elapsed,
        "final_loss": loss,
        "images_per_second": steps * s.batch_size / elapsed,
        "peak_rss_mib": rss,
        "worker_peak_rss_mib": workers_peak_rss_mib() if s.lightly_workers else None,
        "precision": "bf16 autocast + channels_last" if bf16 else "fp32",
        "recipe": {
            "transform": "SimCLRTransform(input_size, cj_strength=0.5, gaussian_blur=0.0, cj_sat=0.0, "
            "cj_hue=0.0, random_gray_scale=0.0, normalize=grayscale), min_scale=0.08 (default)",
            "head": "SimCLRProjectionHead(512, 512, 128)",
            "loss": "NTXentLoss() (temperature 0.5)",
            "optimizer": f"SGD lr={base_lr:g} (0.06 × batch/128), momentum 0.9, weight decay 5e-4",
            "schedule": "cosine annealing over the time budget, no warm-up",
            "forward": "two forward passes per step (one per view), as in lightly's example",
            "num_workers": s.lightly_workers,
        },
    }


# Jaga's side -----------------------------------------------------------------------------------------------
class PrintProgress(Callbacks):
    def on_step(self, progress: Progress) -> None:
        if progress.step % 10 == 0:
            print(
                f"  jaga step {progress.step}/{progress.total_steps}  loss {progress.loss:.3f}  "
                f"{progress.images_per_second:.0f} img/s  {progress.elapsed_seconds:.0f}s",
                file=sys.stderr,
            )


def jaga_config(s: Settings) -> TrainConfig:
    return TrainConfig(
        method="simclr",
        backbone="resnet18",
        stem=s.stem,
        image_size=s.image_size,  # type: ignore[arg-type]
        batch_size=s.batch_size,
        max_minutes=s.budget_minutes,
        seed=s.seed,
    )


def train_jaga(data: Data, s: Settings, device: torch.device) -> dict[str, Any]:
    cfg = jaga_config(s)
    method = build_method(cfg)
    trainer = Trainer(method, data.train[:, None], cfg, device, callbacks=PrintProgress())
    result = trainer.run()
    rss = peak_rss_mib()
    precision = "bf16 autocast" if trainer.autocast_dtype is not None else "fp32"
    return {
        "model": method.backbone,
        "steps": result.steps,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "final_loss": result.final_loss,
        "images_per_second": result.images_per_second,
        "peak_rss_mib": rss,
        "worker_peak_rss_mib": None,
        "precision": precision + " + channels_last",
        "recipe": {
            "method_params": asdict(method.params),
            "optimizer": f"{trainer.settings.optimizer} peak lr={trainer.peak_lr:g}, weight decay "
            f"{trainer.optimizer.param_groups[0]['weight_decay']:g}",
            "schedule": f"warm-up {cfg.warmup_fraction:.0%} then cosine, fitted to the budget after "
            "timing the first steps",
            "forward": "both views in one forward pass; augmentation batched in the training process",
        },
    }


def run_child(name: str, s: Settings, out: Path) -> None:
    """Train one implementation, record peak RSS right after training, then evaluate; write JSON."""
    baseline_rss = peak_rss_mib()  # torch, torchvision and ssl_core imported, nothing else yet
    torch.manual_seed(s.seed)
    device = resolve_device("auto")
    data = Data.load(s.train_images, s.test_images)
    trained = train_jaga(data, s, device) if name == "jaga" else train_lightly(data, s, device, name.endswith("bf16"))
    model = trained.pop("model")
    trained["baseline_rss_mib"] = baseline_rss
    trained["knn_accuracy"] = knn_of_encoder(model, data, s.image_size, device)
    out.write_text(json.dumps(trained))


# Augmentation-only throughput ------------------------------------------------------------------------------
def aug_batches(s: Settings) -> int:
    return min(AUG_BATCHES, s.train_images // s.batch_size - 1)


def aug_images_per_second_jaga(data: Data, s: Settings, device: torch.device) -> float:
    """Two views of a batch: uint8 → float on the device, then ``method.views`` on the whole batch."""
    return views_images_per_second(
        build_method(jaga_config(s)), data.train[:, None], s.batch_size, aug_batches(s), AUG_ROUNDS, s.seed, device
    )


def aug_images_per_second_lightly(data: Data, s: Settings, num_workers: int) -> float:
    """Two views per image from ``SimCLRTransform`` on PIL images, collated by a ``DataLoader``."""
    loader = lightly_loader(data.train, s, num_workers)
    return median_images_per_second(lambda: iter(loader), aug_batches(s), s.batch_size, AUG_ROUNDS)


# Report ----------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "## SimCLR: Jaga vs lightly" + (" — smoke run (`--quick`), figures not meaningful" if s["quick"] else ""),
        "",
        f"Measured {report['date']} by `bench/bench_simclr.py`:",
        "",
        "```",
        report["command"],
        "```",
        "",
        machine_line(m),
        "",
        "**Protocol.**",
        "",
        f"- Dataset: Fashion-MNIST (28×28 grayscale). Pretraining set and kNN bank = the first "
        f"{s['train_images']} train images; kNN queries = the first {s['test_images']} test images.",
        f"- Backbone: torchvision ResNet-18, `{s['stem']}` stem, for both. Image size {s['image_size']}, "
        f"batch {s['batch_size']}, seed {s['seed']}. Both backbones start from identical weights (same seed, "
        "same construction order).",
        f"- Budget: {s['budget_minutes']:g} minutes of wall-clock training per implementation, each in its own "
        "subprocess, one after the other; a run stops after the step that crosses the budget.",
        f"- kNN: weighted kNN (k={KNN_K}, T={KNN_TEMPERATURE}, cosine similarity) on L2-normalised backbone "
        "features under the project's evaluation transform (resize, grayscale normalisation, fp32), the same "
        "for every row.",
        "- Pretraining images/s: steps × batch / training seconds, each source image counted once per step.",
        f"- Augmentation images/s: two views of a batch; median over {AUG_ROUNDS} rounds of "
        f"{report['augmentation']['batches']} batches, each after one warm-up batch. Jaga: "
        "uint8 → float and `augment_view` twice on the whole batch, in-process. Lightly: `SimCLRTransform` "
        "per PIL image (mode L, from the uint8 arrays) in a `DataLoader` with "
        f"`num_workers={report['augmentation']['lightly_workers']}` (one per core: the whole machine, as Jaga's "
        "torch threads get).",
        "- Peak RSS: of the training subprocess, taken right after training (before evaluation), as `VmHWM` "
        "from `/proc/self/status`: `ru_maxrss` would start at the parent's peak, which Linux carries across "
        "exec. "
        "Lightly's DataLoader workers are separate processes; the largest worker's peak is listed separately "
        "(its pages are largely shared with the parent by fork). For scale, the training subprocess peaks at "
        f"{report['runs']['jaga']['baseline_rss_mib']:.0f} MiB after importing torch, torchvision and ssl_core, "
        "before touching any data.",
        "",
        "**Recipes.** Each side uses its own defaults; nothing is tuned here.",
        "",
        f"- Jaga: the project's `Trainer` and default SimCLR: {_recipe_line(report['runs'].get('jaga'))}",
        f"- lightly: the loop of lightly's CIFAR-10 benchmark and `examples/pytorch/simclr.py`: "
        f"{_recipe_line(report['runs'].get('lightly'))} Training uses `num_workers={s['lightly_workers']}`: on 2 "
        "cores the training compute runs on the main process's torch threads, and one worker augments a "
        "batch in a small fraction of a training step; more workers would only compete with the compute. "
        "lightly's examples and CIFAR-10 benchmark train in fp32 without channels_last, so the `lightly` row "
        "does too; `lightly + bf16` gives the same loop Jaga's bf16 autocast and channels_last, to separate "
        "precision from everything else.",
        "",
        "| Implementation | Precision | Pretrain img/s | Augment img/s | Peak RSS (MiB) | Steps | Epochs | kNN top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    aug = report["augmentation"]
    for name, label in (("jaga", "Jaga"), ("lightly", "lightly"), ("lightly-bf16", "lightly + bf16")):
        run = report["runs"].get(name)
        if run is None:
            continue
        rss = _fmt(run["peak_rss_mib"], ".0f")
        if run["worker_peak_rss_mib"] is not None:
            rss += f" (+ workers ≤ {run['worker_peak_rss_mib']:.0f} each)"
        aug_rate = aug["jaga"] if name == "jaga" else aug["lightly"]
        lines.append(
            f"| {label} | {run['precision']} | {run['images_per_second']:.1f} | {aug_rate:.0f} | {rss} | "
            f"{run['steps']} | {run['epochs']:.2f} | {run['knn_accuracy']:.3f} |"
        )
    for name, label in (("raw_pixels", "reference: raw pixels"), ("random_encoder", "reference: random init")):
        lines.append(f"| {label} | fp32 | — | — | — | — | — | {report['references'][name]:.3f} |")
    lines += ["", f"Raw results: `bench/results/{report['results_file']}`.", ""]
    return "\n".join(lines)


def _recipe_line(run: dict[str, Any] | None) -> str:
    if run is None:
        return "(not run)."
    return "; ".join(f"{k}: {v}" for k, v in run["recipe"].items()) + "."


# Main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, help="training budget per implementation (default 7.5)")
    p.add_argument("--train-images", type=int, help="first N train images: pretraining set and kNN bank (default 8192)")
    p.add_argument("--test-images", type=int, help="first M test images: kNN queries (default 2000)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, help="default 256")
    p.add_argument("--stem", choices=["small", "standard"], default="small")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lightly-workers",
        type=int,
        default=1,
        help="DataLoader workers for lightly's training loop (default 1 on this 2-core machine)",
    )
    p.add_argument("--skip-lightly-bf16", action="store_true", help="leave out the lightly + bf16 row")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 0.2 minutes, 512 train / 256 test images, batch 64 (unless given)",
    )
    p.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    full = {"budget_minutes": 7.5, "train_images": 8192, "test_images": 2000, "batch_size": 256}
    quick = {"budget_minutes": 0.2, "train_images": 512, "test_images": 256, "batch_size": 64}
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else (quick if args.quick else full)[k] for k in full}
    settings = Settings(
        image_size=args.image_size,
        stem=args.stem,
        seed=args.seed,
        lightly_workers=args.lightly_workers,
        quick=args.quick,
        **chosen,
    )
    if settings.train_images < 2 * settings.batch_size:
        p.error("--train-images must be at least twice --batch-size")
    return args, settings


def main(argv: list[str] | None = None) -> None:
    args, s = parse_args(argv)
    if args.child:
        run_child(args.child, s, args.child_out)
        return
    command = shlex.join([sys.executable, "bench/bench_simclr.py", *(sys.argv[1:] if argv is None else argv)])
    device = resolve_device("auto")
    info = machine()
    print(f"machine: {info}", file=sys.stderr)
    print(f"settings: {s}", file=sys.stderr)
    data = Data.load(s.train_images, s.test_images)

    print("references: raw pixels, random init encoder", file=sys.stderr)
    bank, queries = pixel_features(data.train[:, None], s.image_size), pixel_features(data.test[:, None], s.image_size)
    raw = knn_accuracy(bank, data.train_labels, queries, data.test_labels, KNN_K, KNN_TEMPERATURE)
    torch.manual_seed(s.seed)
    encoder = build_backbone("resnet18", s.stem).to(device).to(memory_format=torch.channels_last)  # type: ignore[arg-type]
    random_init = knn_of_encoder(encoder, data, s.image_size, device)
    del encoder

    aug_workers = os.cpu_count() or 1
    print(f"augmentation only: {aug_batches(s)} batches of {s.batch_size}", file=sys.stderr)
    augmentation = {
        "jaga": aug_images_per_second_jaga(data, s, device),
        "lightly": aug_images_per_second_lightly(data, s, aug_workers),
        "lightly_workers": aug_workers,
        "batches": aug_batches(s),
    }

    names = [
        n
        for n in IMPLEMENTATIONS
        if not (n == "lightly-bf16" and (args.skip_lightly_bf16 or not info["bf16_supported"]))
    ]
    runs = {}
    for name in names:
        print(f"training {name} for {s.budget_minutes:g} min", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run.json"
            child = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                name,
                "--child-out",
                str(out),
                "--budget-minutes",
                str(s.budget_minutes),
                "--train-images",
                str(s.train_images),
                "--test-images",
                str(s.test_images),
                "--image-size",
                str(s.image_size),
                "--batch-size",
                str(s.batch_size),
                "--stem",
                s.stem,
                "--seed",
                str(s.seed),
                "--lightly-workers",
                str(s.lightly_workers),
            ]
            subprocess.run(child, check=True, cwd=ROOT)
            runs[name] = json.loads(out.read_text())

    results_file = "simclr_quick.json" if s.quick else "simclr.json"
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": info,
        "settings": asdict(s),
        "knn": {"k": KNN_K, "temperature": KNN_TEMPERATURE},
        "references": {"raw_pixels": raw, "random_encoder": random_init},
        "augmentation": augmentation,
        "runs": runs,
        "results_file": results_file,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / results_file).write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    write_section(
        "bench_simclr_quick" if s.quick else "bench_simclr", section, drop=() if s.quick else ("bench_simclr_quick",)
    )
    print(section)


if __name__ == "__main__":
    main()
