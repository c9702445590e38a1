"""Every SSL method of Jaga at one fixed CPU budget, with lightly's implementation beside it where lightly
has the method: pretraining images/s, peak memory and kNN accuracy on Fashion-MNIST, plus the throughput of
each method's augmentation pipeline against lightly's per-image transforms for the same views.

Run from the repository root (after ``pip install -e '.[bench]'``):

    .venv/bin/python bench/bench_methods.py                    # the benchmark (about an hour on 2 cores)
    .venv/bin/python bench/bench_methods.py --quick            # a smoke run of a few minutes
    .venv/bin/python bench/bench_methods.py --methods dino mae # some methods only (the doc is not written)
    .venv/bin/python bench/bench_methods.py --methods byol --update  # re-run rows of the last full run

Every training run is a subprocess of its own (this script re-invoked with ``--child``), so its peak RSS is
its own; the runs go one after the other, so each has the whole machine. Jaga's side is the project's own
``Trainer`` with each method's defaults; lightly's side is ``bench/lightly_methods.py``, lightly 1.6.0's
modules, losses and transforms in the loop of lightly's examples. Writes ``bench/results/methods.json`` and
the methods section of ``docs/BENCHMARKS.md``.
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
from lightly_methods import LIGHTLY_METHODS, LightlySetup, build

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.device import resolve_device
from ssl_core.evaluate import knn_accuracy, pixel_features
from ssl_core.fashion_mnist import class_tinted
from ssl_core.learning_check import KNN_K, KNN_TEMPERATURE
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.train import Callbacks, Progress, Trainer, build_method, initial_backbone

AUG_BATCHES = 16  # timed batches per augmentation round, after one warm-up batch
AUG_ROUNDS = 3  # the augmentation figure is the median of this many rounds
IMPLEMENTATIONS = ("jaga", "lightly")


@dataclass(frozen=True)
class Settings:
    budget_minutes: float
    train_images: int
    test_images: int
    image_size: int
    batch_size: int
    stem: str
    patch_size: int
    seed: int
    lightly_workers: int
    quick: bool
    #: Jaga's ``TrainConfig.precision``; lightly's loop: ``fp32``, or ``bf16`` (autocast, model and inputs in
    #: channels_last); lightly's backbone: torchvision's ResNet-18 with ``stem``, or ``lightly_cifar``.
    jaga_precision: str = "auto"
    lightly_precision: str = "fp32"
    lightly_backbone: str = "torchvision"


def backbone_for(method: str) -> str:
    """ResNet-18 for every method that takes a ResNet; ViT-Tiny for the ViT-only ones (MAE)."""
    return "resnet18" if "resnet" in METHODS.get(method).families else "vit_tiny"


def refusal(method: str, s: Settings, channels: int = 1) -> str | None:
    """Why ``method`` cannot train on ``train_images`` images of ``channels`` channels, or None."""
    cls = METHODS.get(method)
    try:
        cls.check_data(cls.Params(), DataInfo(num_images=s.train_images, channels=channels))
    except ValueError as exc:
        return str(exc)
    return None


def needs_colour(method: str, s: Settings) -> bool:
    """Whether ``method`` refuses the grayscale images but takes colour ones (colorization): it then trains on
    ``class_tinted`` copies and is evaluated on the grayscale images like every other method."""
    return refusal(method, s) is not None and refusal(method, s, channels=3) is None


# Training runs (in a child process each) -------------------------------------------------------------------
def jaga_config(method: str, s: Settings) -> TrainConfig:
    backbone = backbone_for(method)
    return TrainConfig(
        method=method,
        backbone=backbone,
        stem=s.stem,
        image_size=s.image_size,  # type: ignore[arg-type]
        patch_size=s.patch_size if backbone.startswith("vit") else None,
        batch_size=s.batch_size,
        max_minutes=s.budget_minutes,
        seed=s.seed,
        precision=s.jaga_precision,  # type: ignore[arg-type]
    )


class PrintProgress(Callbacks):
    def __init__(self, method: str) -> None:
        self.method = method

    def on_step(self, progress: Progress) -> None:
        if progress.step % 20 == 0:
            print(
                f"  jaga {self.method} step {progress.step}/{progress.total_steps}  loss {progress.loss:.3f}  "
                f"{progress.images_per_second:.0f} img/s  {progress.elapsed_seconds:.0f}s",
                file=sys.stderr,
            )


def train_jaga(method_name: str, data: Data, s: Settings, device: torch.device) -> dict[str, Any]:
    cfg = jaga_config(method_name, s)
    torch.manual_seed(s.seed)
    images = data.train[:, None]
    if needs_colour(method_name, s):
        images = class_tinted(images, data.train_labels, s.seed)
    method = build_method(cfg, data=DataInfo(num_images=len(images), channels=images.shape[1]))
    trainer = Trainer(method, images, cfg, device, callbacks=PrintProgress(method_name))
    result = trainer.run()
    return {
        "encoder": method.encoder(),
        "patch_grid": method.patch_grid,
        "steps": result.steps,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "final_loss": result.final_loss,
        "images_per_second": result.images_per_second,
        "peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": None,
        "skipped_steps": result.skipped_steps,
        "precision": ("bf16 autocast" if trainer.autocast_dtype is not None else "fp32") + " + channels_last",
        "precision_reason": trainer.precision_choice.reason,
        "pretraining_images": "class-tinted colour copy" if images.shape[1] == 3 else "grayscale",
        "recipe": {
            "params": asdict(method.params),
            "optimizer": f"{trainer.settings.optimizer}, peak lr {trainer.peak_lr:g}, weight decay "
            f"{trainer.optimizer.param_groups[0]['weight_decay']:g}",
        },
    }


def lightly_loader(
    setup: LightlySetup, images: np.ndarray, s: Settings, num_workers: int
) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    return torch.utils.data.DataLoader(
        GrayscaleViews(images, setup.transform),
        batch_size=s.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(s.seed),
    )


def to_model_input(view: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batched view from lightly's transform → (B, 3, h, w) on the device (grayscale expanded)."""
    view = view.to(device)
    view = view.expand(-1, 3, -1, -1) if view.shape[1] == 1 else view
    return view.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def train_lightly(method_name: str, data: Data, s: Settings, device: torch.device) -> dict[str, Any]:
    """lightly's loop: DataLoader of per-image transforms, forward, backward, step; lr annealed (cosine) over
    the time budget, since a budget fixes no epoch count; fp32 as lightly's examples train, or (``bf16``) under
    bf16 autocast with the model and its inputs in channels_last, the precision and memory format Jaga uses."""
    bf16 = s.lightly_precision == "bf16"
    setup = build(
        method_name,
        image_size=s.image_size,
        batch_size=s.batch_size,
        stem="lightly_cifar" if s.lightly_backbone == "lightly_cifar" else s.stem,
        patch_size=s.patch_size,
        device=device,
        seed=s.seed,
    )
    loader = lightly_loader(setup, data.train, s, s.lightly_workers)
    if bf16:
        setup.model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    budget = s.budget_minutes * 60
    steps, loss, elapsed = 0, math.nan, 0.0
    setup.model.train()
    start = time.monotonic()
    while elapsed < budget:
        batches = iter(loader)
        for batch in batches:
            views = batch[0] if isinstance(batch, (tuple, list)) and isinstance(batch[0], (tuple, list)) else batch
            progress = min(elapsed / budget, 1.0)
            for group, base in zip(setup.optimizer.param_groups, setup.base_lrs, strict=True):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * progress))
            with autocast:
                loss_t = setup.training_step([to_model_input(v, device, bf16) for v in views], progress)
            loss_t.backward()
            if setup.before_optimizer_step is not None:
                setup.before_optimizer_step(progress)
            setup.optimizer.step()
            setup.optimizer.zero_grad()
            steps += 1
            loss = float(loss_t.detach())
            elapsed = time.monotonic() - start
            if steps % 20 == 0:
                print(
                    f"  lightly {method_name} step {steps}  loss {loss:.3f}  "
                    f"{steps * s.batch_size / elapsed:.0f} img/s  {elapsed:.0f}s",
                    file=sys.stderr,
                )
            if elapsed >= budget:
                break
        del batches  # shuts the epoch's workers down, so RUSAGE_CHILDREN covers them
    return {
        "encoder": setup.encoder(),
        "steps": steps,
        "epochs": steps / len(loader),
        "seconds": elapsed,
        "final_loss": loss,
        "images_per_second": steps * s.batch_size / elapsed,
        "peak_rss_mib": peak_rss_mib(),
        "worker_peak_rss_mib": workers_peak_rss_mib() if s.lightly_workers else None,
        "skipped_steps": 0,
        "precision": "bf16 autocast + channels_last" if bf16 else "fp32",
        "recipe": setup.recipe,
    }


def run_child(impl: str, method: str, s: Settings, out: Path) -> None:
    """Train one (implementation, method), read the peak RSS right after training, evaluate; write JSON."""
    baseline_rss = peak_rss_mib()  # torch, torchvision, timm, lightly and ssl_core imported, no data yet
    device = resolve_device("auto")
    data = Data.load(s.train_images, s.test_images)
    run = train_jaga(method, data, s, device) if impl == "jaga" else train_lightly(method, data, s, device)
    encoder, patches = run.pop("encoder"), run.pop("patch_grid", None)
    run["baseline_rss_mib"] = baseline_rss
    run["knn_accuracy"] = knn_of_encoder(encoder, data, s.image_size, device, patches)
    if patches is not None:  # embedded by its tiles: the random init it is compared to is embedded so too
        random_encoder = initial_backbone(jaga_config(method, s)).to(device)
        run["random_init_knn_accuracy"] = knn_of_encoder(random_encoder, data, s.image_size, device, patches)
        run["embedding"] = patches.describe()
    run["loss_finite"] = math.isfinite(run["final_loss"])
    out.write_text(json.dumps(run, default=str))


def spawn(impl: str, method: str, s: Settings) -> dict[str, Any]:
    """Run ``run_child`` in a fresh interpreter; a failure is recorded, not raised, so one bad run does not
    lose the others."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        child = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            impl,
            method,
            "--child-out",
            str(out),
            *settings_args(s),
        ]
        started = time.monotonic()
        done = subprocess.run(child, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(done.stderr[-4000:])
        if done.returncode != 0 or not out.exists():
            last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            return {
                "error": f"exit code {done.returncode}: {last[0][:300]}",
                "wall_seconds": time.monotonic() - started,
            }
        run: dict[str, Any] = json.loads(out.read_text())
        run["wall_seconds"] = time.monotonic() - started
        return run


# Augmentation-only throughput ------------------------------------------------------------------------------
def aug_batches(s: Settings) -> int:
    return min(AUG_BATCHES, s.train_images // s.batch_size - 1)


def aug_rate_jaga(method: str, data: Data, s: Settings, device: torch.device) -> float:
    """Source images/s through ``method.views``: uint8 → float on the device, every view on the whole batch."""
    m = build_method(jaga_config(method, s), data=DataInfo(num_images=len(data.train), channels=1))
    return views_images_per_second(m, data.train[:, None], s.batch_size, aug_batches(s), AUG_ROUNDS, s.seed, device)


def aug_rate_lightly(method: str, data: Data, s: Settings, device: torch.device, num_workers: int) -> float:
    """Source images/s of lightly's transform for the method, per PIL image, collated by a DataLoader."""
    setup = build(
        method,
        image_size=s.image_size,
        batch_size=s.batch_size,
        stem=s.stem,
        patch_size=s.patch_size,
        device=device,
        seed=s.seed,
    )
    loader = lightly_loader(setup, data.train, s, num_workers)
    return median_images_per_second(lambda: iter(loader), aug_batches(s), s.batch_size, AUG_ROUNDS)


def view_description(method: str, s: Settings, data: Data) -> str:
    m = build_method(jaga_config(method, s), data=DataInfo(num_images=len(data.train), channels=1))
    sizes: dict[int, int] = {}
    for v in m.view_configs:
        sizes[v.size] = sizes.get(v.size, 0) + 1
    return " + ".join(f"{n}×{size} px" for size, n in sizes.items())


# Report ----------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.2f}×"


def _other_machine(update: dict[str, Any], machine: dict[str, Any]) -> str:
    """For a re-measurement on another machine than the full run's: which one (its rows' epochs within the
    budget, and so their kNN, depend on it; the Jaga / lightly ratios are each from one run)."""
    other = update.get("machine")
    if not other or other == machine:
        return ""
    return (
        f", on another machine: {other['cpu']}, {other['cores']} cores, bf16 "
        f"{'supported' if other['bf16_supported'] else 'not supported'}"
    )


def markdown(report: dict[str, Any]) -> str:
    s, m, runs, refs = report["settings"], report["machine"], report["runs"], report["references"]
    title = "## Every method: Jaga vs lightly at a fixed CPU budget"
    lines = [
        title + (" — smoke run (`--quick`), figures not meaningful" if s["quick"] else ""),
        "",
        f"Measured {report['date']} by `bench/bench_methods.py`:",
        "",
        "```",
        report["command"],
        "```",
        "",
        *[
            f"Re-measured {u['date']}: {', '.join(u['methods'])} (`{u['command']}`)" + _other_machine(u, m) + "."
            for u in report.get("updates", [])
        ],
        *([""] if report.get("updates") else []),
        machine_line(m),
        "",
        "**Protocol.**",
        "",
        f"- Dataset: Fashion-MNIST (28×28 grayscale). Pretraining set and kNN bank = the first "
        f"{s['train_images']} train images; kNN queries = the first {s['test_images']} test images.",
        f"- Backbone: torchvision ResNet-18 (`{s['stem']}` stem) for every method that takes one; timm ViT-Tiny "
        f"(patch {s['patch_size']}) for MAE, on both sides. Image size {s['image_size']}, batch {s['batch_size']}, "
        f"seed {s['seed']}.",
        f"- Budget: {s['budget_minutes']:g} minutes of wall-clock training per run, each run a subprocess of its "
        "own, one after the other; a run stops after the step that crosses the budget. Jaga fits its "
        "warm-up + cosine schedule to the budget; lightly's loop anneals its learning rate (cosine) over it.",
        f"- kNN: weighted kNN (k={KNN_K}, T={KNN_TEMPERATURE}, cosine similarity) on L2-normalised backbone "
        "features of the encoder each method evaluates (DINO: the teacher), under the project's evaluation "
        "transform (resize, grayscale normalisation, fp32), the same for every row.",
        "- Pretraining images/s: steps × batch / training seconds; each source image counts once per step, "
        "however many views the method takes.",
        "- Peak RSS: `VmHWM` of the training subprocess right after training, before evaluation. lightly's "
        f"DataLoader (`num_workers={s['lightly_workers']}`) adds worker processes; the largest worker's own peak "
        "is given in the results file. For scale, a subprocess peaks at "
        f"{report['baseline_rss_mib']:.0f} MiB after its imports, before touching data.",
        "- Recipes: each side its own defaults for the method (Jaga: the method's documented defaults, "
        "`GET /v1/methods`; lightly: `bench/lightly_methods.py`, following lightly's examples). Nothing is tuned "
        "for this table.",
        f"- Precision: Jaga `{s.get('jaga_precision', 'auto')}` (channels_last always), lightly "
        f"`{s.get('lightly_precision', 'fp32')}`. When they differ, the ratio mixes precision with everything "
        "else: the headline grid (`bench/grid.py`) compares each side's best.",
        "",
        "### Training speed and memory (methods lightly has)",
        "",
    ]
    like_for_like = (s.get("jaga_precision"), s.get("lightly_precision")) in {("float32", "fp32"), ("bf16", "bf16")}
    if not like_for_like:  # speed and memory then mix precision into the ratio: the grid has them per precision
        lines.append(
            "Left out: this run's two sides trained in different precisions. The headline grid (`bench/grid.py`) "
            "measures every method's speed and memory with each side in float32 and in its best precision."
        )
    else:
        lines += [
            "| Method | Backbone | Jaga img/s | lightly img/s | Jaga / lightly | Jaga peak RSS (MiB) | "
            "lightly peak RSS (MiB) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
    for method in report["methods"] if like_for_like else []:
        if method not in LIGHTLY_METHODS:
            continue
        j, lt = runs["jaga"].get(method, {}), runs["lightly"].get(method, {})
        lines.append(
            f"| {method} | {backbone_for(method)} | {_fmt(j.get('images_per_second'), '.1f')} | "
            f"{_fmt(lt.get('images_per_second'), '.1f')} | "
            f"{_ratio(j.get('images_per_second'), lt.get('images_per_second'))} | "
            f"{_fmt(j.get('peak_rss_mib'), '.0f')} | {_fmt(lt.get('peak_rss_mib'), '.0f')} |"
        )
    aug = report["augmentation"]
    lines += [
        "",
        "### Augmentation pipeline",
        "",
        f"Source images/s producing every view a training step takes; median of {AUG_ROUNDS} rounds of "
        f"{aug['batches']} batches of {s['batch_size']}, each after a warm-up batch. Jaga: uint8 → float and "
        "`method.views` on the whole batch, in-process, per-image random parameters. lightly: the method's "
        "transform per PIL image (mode L) in a `DataLoader` with "
        f"`num_workers={aug['lightly_workers']}` (one per core). The views are each side's own for the method "
        "(sizes below are Jaga's; lightly's transforms are configured to the same sizes and counts).",
        "",
        "| Method | Views | Jaga img/s | lightly img/s | Jaga / lightly |",
        "|---|---|---:|---:|---:|",
    ]
    for method, rates in aug["rates"].items():
        lines.append(
            f"| {method} | {rates['views']} | {rates['jaga']:.0f} | {rates['lightly']:.0f} | "
            f"{_ratio(rates['jaga'], rates['lightly'])} |"
        )
    lines += [
        "",
        "### kNN accuracy after the budget",
        "",
        "| Method | Category | Backbone | Jaga kNN | lightly kNN | Jaga − random init | Jaga epochs | "
        "lightly epochs | Jaga peak RSS (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method in report["methods"]:
        j, lt = runs["jaga"].get(method, {}), runs["lightly"].get(method, {})
        category = METHODS.get(method).category
        backbone = backbone_for(method)
        if "refused" in j:
            lines.append(f"| {method} | {category} | {backbone} | refused: {j['refused']} | — | — | — | — | — |")
            continue
        if "error" in j:
            lines.append(f"| {method} | {category} | {backbone} | failed: {j['error']} | — | — | — | — | — |")
            continue
        knn = j["knn_accuracy"]
        random_init = j.get("random_init_knn_accuracy", refs["random_" + backbone])
        lt_knn = lt.get("knn_accuracy") if "error" not in lt else None
        if j.get("pretraining_images", "grayscale") != "grayscale":
            method = f"{method}¹"
        if "random_init_knn_accuracy" in j:
            method = f"{method}²"
        lines.append(
            f"| {method} | {category} | {backbone} | {knn:.3f} | {_fmt(lt_knn, '.3f')} | "
            f"{knn - random_init:+.3f} | {j['epochs']:.1f} | {_fmt(lt.get('epochs'), '.1f')} | "
            f"{j['peak_rss_mib']:.0f} |"
        )
    lines.append(f"| reference: random init | — | resnet18 | {refs['random_resnet18']:.3f} | — | — | — | — | — |")
    lines.append(f"| reference: random init | — | vit_tiny | {refs['random_vit_tiny']:.3f} | — | — | — | — | — |")
    lines.append(f"| reference: raw pixels | — | — | {refs['raw_pixels']:.3f} | — | — | — | — | — |")
    if any(r.get("pretraining_images", "grayscale") != "grayscale" for r in runs["jaga"].values()):
        lines += [
            "",
            "¹ Needs colour, so it pretrains on a copy of the images tinted with one colour per class "
            "(`ssl_core.fashion_mnist.class_tinted`): the colour can be predicted from the grayscale "
            "input only by recognising the garment. The tint carries the labels into pretraining, so "
            "this row shows that the task trains the encoder, not a label-free result; kNN is on the "
            "grayscale images, as for every row.",
        ]
    if any("random_init_knn_accuracy" in r for r in runs["jaga"].values()):
        lines += [
            "",
            "² Trained on tiles only, so its encoder embeds an image as the mean of its tiles' features "
            "(`ssl_core.evaluate.PatchGrid`, as Kolesnikov et al. 2019 evaluate such methods), and so "
            "does the random init it is compared to (its figure is in `random_init_knn_accuracy` of "
            "the raw results); the random-init rows below embed whole images.",
        ]
    failures = [
        f"{impl} {method}: {r['error']}" for impl in IMPLEMENTATIONS for method, r in runs[impl].items() if "error" in r
    ]
    if failures:
        lines += ["", "Failed runs: " + "; ".join(failures) + "."]
    lines += ["", f"Raw results, with every recipe: `bench/results/{report['results_file']}`.", ""]
    return "\n".join(lines)


def merged(path: Path, update: dict[str, Any], command: str, date: str) -> dict[str, Any]:
    """The full run's report at ``path`` with ``update``'s methods re-measured (runs and augmentation rates);
    refuses when the settings differ, since the rows would not be comparable."""
    if not path.exists():
        sys.exit(f"--update: no earlier full run at {path}; run the whole benchmark first")
    report: dict[str, Any] = json.loads(path.read_text())
    if report["settings"] != update["settings"]:
        sys.exit(f"--update: the settings differ from the full run's ({report['settings']}); re-run everything")
    for impl, runs in update["runs"].items():
        for method, run in runs.items():
            report["runs"][impl][method] = run
    report["augmentation"]["rates"].update(update["augmentation"]["rates"])
    report.setdefault("updates", []).append(
        {"date": date, "command": command, "methods": update["methods"], "machine": update["machine"]}
    )
    return report


# Main ------------------------------------------------------------------------------------------------------
def settings_args(s: Settings) -> list[str]:
    return [
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
        "--patch-size",
        str(s.patch_size),
        "--seed",
        str(s.seed),
        "--lightly-workers",
        str(s.lightly_workers),
        "--jaga-precision",
        s.jaga_precision,
        "--lightly-precision",
        s.lightly_precision,
        "--lightly-backbone",
        s.lightly_backbone,
    ] + (["--quick"] if s.quick else [])


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", choices=METHODS.names(), help="default: every registered method")
    p.add_argument("--budget-minutes", type=float, help="training budget per run (default 2)")
    p.add_argument("--train-images", type=int, help="first N train images: pretraining set and kNN bank (default 4096)")
    p.add_argument("--test-images", type=int, help="first M test images: kNN queries (default 2000)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--stem", choices=["small", "standard"], default="standard")
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch side (MAE)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lightly-workers",
        type=int,
        default=1,
        help="DataLoader workers for lightly's training loop (default 1 on this 2-core machine)",
    )
    p.add_argument("--skip-lightly", action="store_true", help="Jaga's rows only")
    p.add_argument("--jaga-precision", choices=["auto", "bf16", "float32"], default="auto")
    p.add_argument(
        "--lightly-precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: lightly's step under bf16 autocast, model and inputs channels_last",
    )
    p.add_argument("--lightly-backbone", choices=["torchvision", "lightly_cifar"], default="torchvision")
    p.add_argument(
        "--update",
        action="store_true",
        help="with --methods: replace these methods' rows in the results of the last full run (same "
        "settings) and rewrite the doc section; the rows say when they were measured",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 0.1 minutes, 512 train / 256 test images, batch 32 (unless given)",
    )
    p.add_argument("--child", nargs=2, metavar=("IMPL", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    full = {"budget_minutes": 2.0, "train_images": 4096, "test_images": 2000, "batch_size": 128}
    quick = {"budget_minutes": 0.1, "train_images": 512, "test_images": 256, "batch_size": 32}
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else (quick if args.quick else full)[k] for k in full}
    settings = Settings(
        image_size=args.image_size,
        stem=args.stem,
        patch_size=args.patch_size,
        seed=args.seed,
        lightly_workers=args.lightly_workers,
        quick=args.quick,
        jaga_precision=args.jaga_precision,
        lightly_precision=args.lightly_precision,
        lightly_backbone=args.lightly_backbone,
        **chosen,
    )  # type: ignore[arg-type]
    if settings.train_images < 2 * settings.batch_size:
        p.error("--train-images must be at least twice --batch-size")
    if args.update and (not args.methods or args.quick or args.child):
        p.error("--update needs --methods and a full (not --quick) run")
    return args, settings


def main(argv: list[str] | None = None) -> None:
    args, s = parse_args(argv)
    if args.child:
        run_child(args.child[0], args.child[1], s, args.child_out)
        return
    command = shlex.join([sys.executable, "bench/bench_methods.py", *(sys.argv[1:] if argv is None else argv)])
    methods = args.methods or sorted(METHODS.names())
    device = resolve_device("auto")
    info = machine()
    print(f"machine: {info}\nsettings: {s}", file=sys.stderr)
    baseline_rss = peak_rss_mib()
    data = Data.load(s.train_images, s.test_images)

    print("references: raw pixels, randomly initialised encoders", file=sys.stderr)
    bank, queries = pixel_features(data.train[:, None], s.image_size), pixel_features(data.test[:, None], s.image_size)
    references = {
        "raw_pixels": knn_accuracy(bank, data.train_labels, queries, data.test_labels, KNN_K, KNN_TEMPERATURE)
    }
    for name in ("resnet18", "vit_tiny"):
        torch.manual_seed(s.seed)
        encoder = build_backbone(name, s.stem, s.image_size, s.patch_size if name == "vit_tiny" else None)  # type: ignore[arg-type]
        references["random_" + name] = knn_of_encoder(encoder.to(device), data, s.image_size, device)

    aug_workers = os.cpu_count() or 1
    rates: dict[str, dict[str, Any]] = {}
    if not args.skip_lightly:
        aug_methods = [m for m in methods if m in LIGHTLY_METHODS]
        if aug_methods:  # one untimed pass, so that the first method timed does not pay for the process's warm-up
            aug_rate_jaga(aug_methods[0], data, s, device)
        for method in aug_methods:
            print(f"augmentation only: {method}", file=sys.stderr)
            rates[method] = {
                "views": view_description(method, s, data),
                "jaga": aug_rate_jaga(method, data, s, device),
                "lightly": aug_rate_lightly(method, data, s, device, aug_workers),
            }

    runs: dict[str, dict[str, Any]] = {impl: {} for impl in IMPLEMENTATIONS}
    for method in methods:
        reason = refusal(method, s) if not needs_colour(method, s) else None
        if reason is not None:
            runs["jaga"][method] = {"refused": reason}
            continue
        for impl in IMPLEMENTATIONS:
            if impl == "lightly" and (args.skip_lightly or method not in LIGHTLY_METHODS):
                continue
            print(f"training {impl} {method} for {s.budget_minutes:g} min", file=sys.stderr)
            runs[impl][method] = spawn(impl, method, s)

    subset = args.methods is not None and not args.update
    results_file = "methods_quick.json" if s.quick else ("methods_subset.json" if subset else "methods.json")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = {
        "date": date,
        "command": command,
        "machine": info,
        "settings": asdict(s),
        "knn": {"k": KNN_K, "temperature": KNN_TEMPERATURE},
        "methods": methods,
        "references": references,
        "baseline_rss_mib": baseline_rss,
        "augmentation": {"rates": rates, "batches": aug_batches(s), "lightly_workers": aug_workers},
        "runs": runs,
        "results_file": results_file,
    }
    if args.update:
        report = merged(RESULTS_DIR / results_file, report, command, date)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / results_file).write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    if not subset:
        key = "bench_methods_quick" if s.quick else "bench_methods"
        write_section(key, section, drop=() if s.quick else ("bench_methods_quick",))
    print(section)


if __name__ == "__main__":
    main()
