"""Jaga on one GPU: the measured bf16 matmul peak, training throughput with model FLOP utilisation and peak memory
for SimCLR, BYOL, MoCo and DINO on ResNet-18 (small stem, 32 px) and ResNet-50 (224 px), with and without
``torch.compile`` for the methods in ``--compile-methods``; Jaga's loop against lightly 1.6.0's on the same GPU,
grey 28 px images and batch; and a quality run (SimCLR and BYOL on the 60,000 Fashion-MNIST training images, kNN on
the official test set, with the wall time).

    bash bench/device/prepare.sh                            # here: wheels and Fashion-MNIST to carry along
    bash bench/device/run.sh                                # on the GPU machine: the gpu tests, then this script
    python bench/gpu.py --device cpu --quick --out q.json   # a smoke run of the script on a CPU

Needs PyTorch, torchvision, timm and numpy (what ``ssl_core`` imports), and lightly 1.6.0 with Pillow for the
comparison. Fashion-MNIST is read from ``JAGA_FASHION_MNIST`` (the four IDX ``.gz`` files). The throughput figures
time Jaga's own ``Trainer`` (the uint8 dataset moved to the GPU, augmented there, bf16 autocast where it pays,
channels-last) after warm-up steps; FLOPs per step are counted by ``torch.utils.flop_counter`` over one training
step (forward and backward) and divided by the measured peak. Writes JSON; ``--write-doc REPORT`` then writes the
GPU section of docs/BENCHMARKS.md from it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ssl_core where Jaga is not installed

from ssl_core.config import TrainConfig
from ssl_core.fashion_mnist import load_fashion_mnist
from ssl_core.learning_check import encoder_knn
from ssl_core.methods.base import DataInfo
from ssl_core.train import Callbacks, Progress, Trainer, build_method

METHODS = ("simclr", "byol", "moco", "dino")
#: (name, backbone, stem, image size, batch size) of each throughput case.
CASES = (("resnet18-32px", "resnet18", "small", 32, 512), ("resnet50-224px", "resnet50", "standard", 224, 128))
QUICK_CASES = (("resnet18-32px", "resnet18", "small", 32, 16),)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, n: int, iters: int) -> float:
    """FLOP/s of an (n × n) @ (n × n) matmul in bf16 (the best of three timings of ``iters`` products)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * iters / best


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) uint8: upsampled 4×4 noise, so two crops of one image share colours and layout."""
    coarse = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").round().byte().numpy()


class StepClock(Callbacks):
    """Wall time at each step (the loop reads each step's loss, so a step has finished when it is reported)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step(self, progress: Progress) -> None:
        self.times.append(time.perf_counter())


def rate_after_warmup(times: list[float], warmup: int, batch: int) -> tuple[int, float]:
    """(steps timed, images/s) from the wall times at which each step ended, the first ``warmup`` not timed."""
    timed = times[warmup - 1 :]
    return len(timed) - 1, batch * (len(timed) - 1) / (timed[-1] - timed[0])


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def step_flops(cfg: TrainConfig, images: np.ndarray, device: torch.device) -> int:
    """FLOPs of one training step (forward and backward) of a fresh copy of the method, at ``cfg``'s batch."""
    method = build_method(cfg, {}, DataInfo(len(images), images.shape[1])).to(device)
    batch = torch.from_numpy(images[: cfg.batch_size]).to(device).float().div_(255)
    indices = torch.arange(cfg.batch_size, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        method.training_step(batch, indices, generator).loss.backward()
    return int(counter.get_total_flops())


def throughput(
    method: str,
    case: tuple[str, str, str, int, int],
    steps: int,
    warmup: int,
    device: torch.device,
    peak: float,
    compiled: bool = False,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Jaga's ``Trainer`` on ``images`` ((N, C, H, W) uint8; default: smooth colour images, one per step's
    sample), images/s over ``steps`` steps after ``warmup`` (compilation included in the warm-up)."""
    name, backbone, stem, size, batch = case
    images = smooth_images(batch * (steps + warmup), size) if images is None else images[: batch * (steps + warmup)]
    cfg = TrainConfig(
        method=method,
        backbone=backbone,
        stem=stem,
        image_size=size,
        batch_size=batch,
        epochs=1,
        checkpoint_every_steps=1_000_000,
    )
    torch.manual_seed(0)
    clock = StepClock()
    method_obj = build_method(cfg, {}, DataInfo(len(images), images.shape[1]))
    trainer = Trainer(method_obj, images, cfg, device, callbacks=clock, compile_backbone=compiled)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = trainer.run()
    steps_timed, images_per_second = rate_after_warmup(clock.times, warmup, batch)
    flops = step_flops(cfg, images, device)
    return {
        "method": method,
        "case": name,
        "compiled": compiled,
        "data_placement": trainer.batches.placement,
        "warmup_seconds": round(clock.times[warmup - 1] - started, 2),
        "batch_size": batch,
        "steps_timed": steps_timed,
        "precision": trainer.precision_choice.reason,
        "images_per_second": round(images_per_second, 1),
        "flops_per_image": flops / batch,
        "mfu": round(flops / batch * images_per_second / peak, 4),
        "peak_memory_gib": peak_memory_gib(device),
        "final_loss": result.final_loss,
    }


def lightly_throughput(
    method: str, images: np.ndarray, batch: int, steps: int, warmup: int, device: torch.device, workers: int
) -> dict[str, Any]:
    """lightly 1.6.0's loop (bench/lightly_methods.py: its CIFAR-10 benchmark's heads, losses, transforms and
    optimisers on a small-stem ResNet-18 at 32 px) on ``images`` ((N, H, W) uint8, grey), in its best precision on
    a GPU: bf16 autocast with the model and inputs in channels-last. A DataLoader with ``workers`` processes runs
    lightly's per-image transforms; images/s over ``steps`` steps after ``warmup``, each step reading its loss."""
    from common import GrayscaleViews
    from lightly_methods import build

    setup = build(method, image_size=32, batch_size=batch, stem="small", patch_size=4, device=device, seed=0)
    setup.model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        GrayscaleViews(images[: batch * (steps + warmup)], setup.transform),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    setup.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step, views in enumerate(loader):
        progress = step / (steps + warmup)
        inputs = [
            v.to(device, non_blocking=True).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
            for v in views
        ]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = setup.training_step(inputs, progress)
        loss.backward()
        if setup.before_optimizer_step is not None:
            setup.before_optimizer_step(progress)
        setup.optimizer.step()
        setup.optimizer.zero_grad()
        float(loss.detach())
        times.append(time.perf_counter())
    steps_timed, images_per_second = rate_after_warmup(times, warmup, batch)
    return {
        "method": method,
        "implementation": "lightly 1.6.0",
        "batch_size": batch,
        "steps_timed": steps_timed,
        "precision": "bf16 autocast + channels_last",
        "loader_workers": workers,
        "images_per_second": round(images_per_second, 1),
        "peak_memory_gib": peak_memory_gib(device),
    }


def grey_images(n: int) -> tuple[np.ndarray, str]:
    """(n, 28, 28) uint8 and where they come from: Fashion-MNIST's training images when ``JAGA_FASHION_MNIST``
    holds them, else generated ones."""
    try:
        return load_fashion_mnist("train", n)[0], "fashion-mnist"
    except OSError:
        return smooth_images(n, 28)[:, 0], "generated"


def against_lightly(
    method: str,
    grey: tuple[np.ndarray, str],
    steps: int,
    warmup: int,
    batch: int,
    device: torch.device,
    peak: float,
    workers: int,
) -> dict[str, Any]:
    """Jaga's Trainer and lightly's loop on the same ``grey_images``, ResNet-18 with the small stem at 32 px, one
    batch size, each in its best precision, one after the other in this process. ``speedup`` is Jaga's images/s
    over lightly's."""
    images, source = grey
    ours = throughput(method, ("resnet18-32px-grey", "resnet18", "small", 32, batch), steps, warmup, device, peak,
                      images=images[:, None])  # fmt: skip
    theirs = lightly_throughput(method, images, batch, steps, warmup, device, workers)
    row = {"method": method, "data": source, "jaga": ours, "lightly": theirs}
    row["speedup"] = round(ours["images_per_second"] / theirs["images_per_second"], 2)
    return row


def quality(method: str, epochs: int, train: int, test: int, batch: int, device: torch.device) -> dict[str, Any]:
    """Pretrain on the first ``train`` Fashion-MNIST training images for ``epochs``; weighted kNN (k = 20, T = 0.1)
    of the official test set's first ``test`` images against the training images."""
    x, y = load_fashion_mnist("train", train)
    q, qy = load_fashion_mnist("test", test)
    cfg = TrainConfig(
        method=method,
        backbone="resnet18",
        stem="small",
        image_size=32,
        batch_size=batch,
        epochs=epochs,
        checkpoint_every_steps=1_000_000,
    )
    torch.manual_seed(0)
    model = build_method(cfg, {}, DataInfo(len(x), 1))
    started = time.perf_counter()
    result = Trainer(model, x[:, None], cfg, device).run()
    sync(device)
    wall = time.perf_counter() - started
    top1 = encoder_knn(model.encoder().eval(), x[:, None], y, q[:, None], qy, device, image_size=32)
    return {
        "method": method,
        "epochs": epochs,
        "train_images": len(x),
        "test_images": len(q),
        "batch_size": batch,
        "wall_minutes": round(wall / 60, 2),
        "images_per_second": round(result.images_per_second, 1),
        "knn_top1": round(float(top1), 4),
    }


def describe(device: torch.device) -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found.update(
            gpu=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    else:
        found["cpu"] = platform.processor() or platform.machine()
    return found


#: The issue's goals: ResNet-50 at 224 px MFU; two-view SimCLR images/s on ResNet-18 at 32 px (200 epochs of 50,000
#: images in 10 minutes); Jaga over lightly on the same GPU.
MFU_GOAL, SIMCLR_GOAL, LIGHTLY_GOAL = 0.40, 17_000, 2.0
#: lightly's published CIFAR-10 figures (its benchmark page: ResNet-18, batch 128, 200 epochs, an RTX A6000).
LIGHTLY_PUBLISHED = {"simclr": (0.847, 97.7), "byol": (0.869, 100.0)}


def markdown(report: dict[str, Any]) -> str:
    """The GPU section of docs/BENCHMARKS.md from a report this script wrote."""
    m = report["machine"]
    lines = [
        "## On a GPU",
        "",
        f"Measured by `bench/gpu.py` (`{report['command']}`, through `bench/device/run.sh`), {report.get('date', '')}.",
        "",
        f"**Machine.** {m.get('gpu', m['device'])} ({m.get('memory_gib', '?')} GiB, compute capability "
        f"{m.get('capability', '?')}), CUDA {m.get('cuda')}, torch {m['torch']}, Python {m['python']}. Measured bf16 "
        f"matmul peak: {report['peak_bf16_flops'] / 1e12:.0f} TFLOP/s ({report['matmul_n']}² matmuls).",
        "",
        "**Protocol.** Jaga's `Trainer` on generated colour images (ResNet-18, small stem, 32 px, batch 512; "
        "ResNet-50, standard stem, 224 px, batch 128), each method's default recipe, `precision=auto`; images/s over "
        "30 steps after 10 warm-up steps (compilation inside the warm-up); FLOPs of one step (forward and backward) "
        "counted by `torch.utils.flop_counter`; MFU = FLOPs/s over the measured peak.",
        "",
        "| Method | Case | torch.compile | img/s | MFU | Peak memory (GiB) | Dataset | Warm-up (s) |",
        "|---|---|---|---:|---:|---:|---|---:|",
    ]
    for r in report["throughput"]:
        lines.append(
            f"| {r['method']} | {r['case']} | {'yes' if r['compiled'] else 'no'} | {r['images_per_second']:,.0f} | "
            f"{r['mfu']:.0%} | {r['peak_memory_gib']} | {r['data_placement']} | {r['warmup_seconds']} |"
        )
    resnet50 = [r for r in report["throughput"] if r["case"] == "resnet50-224px"]
    simclr18 = [r for r in report["throughput"] if r["case"] == "resnet18-32px" and r["method"] == "simclr"]
    lines += ["", "| Goal | Figure | Met |", "|---|---|---|"]
    if resnet50:
        mfu = max(r["mfu"] for r in resnet50)
        lines.append(f"| ResNet-50 at 224 px ≥ {MFU_GOAL:.0%} MFU | best {mfu:.0%} | {_met(mfu >= MFU_GOAL)} |")
    if simclr18:
        rate = max(r["images_per_second"] for r in simclr18)
        minutes = 200 * 50_000 / rate / 60
        lines.append(
            f"| 200 epochs of 50,000 32-px images < 10 min (≥ {SIMCLR_GOAL:,} img/s, SimCLR) | {rate:,.0f} img/s: "
            f"{minutes:.1f} min | {_met(rate >= SIMCLR_GOAL)} |"
        )
    rows = report.get("against_lightly") or []
    if rows:
        worst = min(r["speedup"] for r in rows)
        lines.append(f"| ≥ {LIGHTLY_GOAL:.0f}× lightly's loop on the same GPU | {worst:.2f}× at worst | "
                     f"{_met(worst >= LIGHTLY_GOAL)} |")  # fmt: skip
        lines += [
            "",
            "**Against lightly.** Both on the same grey 28 px images (" + rows[0]["data"] + "), ResNet-18 with the "
            f"small stem at 32 px, batch {rows[0]['jaga']['batch_size']}, one after the other in one process: Jaga's "
            "`Trainer` (dataset on the GPU, augmentation there, `precision=auto`) and lightly 1.6.0's loop "
            "(bench/lightly_methods.py: its CIFAR-10 benchmark's recipe; per-image transforms in "
            f"{rows[0]['lightly']['loader_workers']} DataLoader workers; bf16 autocast and channels-last, its best "
            "precision here).",
            "",
            "| Method | Jaga img/s | lightly img/s | Jaga / lightly |",
            "|---|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['jaga']['images_per_second']:,.0f} | {r['lightly']['images_per_second']:,.0f} "
                f"| {r['speedup']:.2f}× |"
            )
    quality = report.get("quality") or []
    if quality:
        lines += [
            "",
            f"**Quality.** {quality[0]['train_images']:,} Fashion-MNIST training images, ResNet-18 (small stem) at "
            f"32 px, batch {quality[0]['batch_size']}, {quality[0]['epochs']} epochs, weighted kNN (k 20, T 0.1) of "
            f"the official test set ({quality[0]['test_images']:,} images) against the training images. lightly's "
            "published CIFAR-10 figures (200 epochs, batch 128, RTX A6000) are a reference for time, not for "
            "accuracy: another dataset and budget.",
            "",
            "| Method | Epochs | Wall (min) | img/s | kNN top-1 | lightly, CIFAR-10, 200 epochs |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for q in quality:
            ref = LIGHTLY_PUBLISHED.get(q["method"])
            cite = f"{ref[0]:.3f} in {ref[1]:.0f} min" if ref else ""
            lines.append(
                f"| {q['method']} | {q['epochs']} | {q['wall_minutes']} | {q['images_per_second']:,.0f} | "
                f"{q['knn_top1']:.3f} | {cite} |"
            )
    for f in report.get("failed") or []:
        lines += ["", f"**Not measured: {f['what']}** ({f['error']})."]
    return "\n".join(lines) + "\n\n"


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--quality-epochs", type=int, default=20)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--compile-methods", nargs="*", default=["simclr"], help="also timed with torch.compile")
    parser.add_argument("--lightly-methods", nargs="*", default=list(METHODS), help="none: skip the comparison")
    parser.add_argument("--loader-workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, help="where to write the report (JSON)")
    parser.add_argument("--write-doc", type=Path, metavar="REPORT", help="write the GPU section of docs/BENCHMARKS.md "
                        "from a report this script wrote (here, after the GPU run), and measure nothing")  # fmt: skip
    args = parser.parse_args(argv)
    if args.write_doc is not None:
        from common import write_section

        write_section("gpu", markdown(json.loads(args.write_doc.read_text())))
        return
    if args.out is None:
        parser.error("--out is required unless --write-doc is given")
    device = torch.device(args.device)
    quick = args.quick
    report: dict[str, Any] = {
        "machine": describe(device),
        "command": shlex.join(["python", "bench/gpu.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    n = 256 if quick else 8192

    def save() -> None:  # after every figure, so that a run cut short by its time limit keeps what it measured
        args.out.write_text(json.dumps(report, indent=2))

    report["failed"] = failed = []

    def attempt(what: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """``measure()``; where it raises, the error is recorded and the run goes on: a time-limited run on a lent
        machine keeps every other figure."""
        try:
            return measure()
        except Exception as exc:  # noqa: BLE001 - any failure of one figure
            failed.append({"what": what, "error": f"{type(exc).__name__}: {exc}"[:500]})
            print(f"{what} failed: {failed[-1]['error']}", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # an out-of-memory case leaves its blocks cached
            save()
            return None

    report["matmul_n"] = n
    report["peak_bf16_flops"] = peak = peak_matmul_flops(device, n, 2 if quick else 50)
    print(f"peak bf16 matmul: {peak / 1e12:.1f} TFLOP/s", file=sys.stderr)
    steps, warmup = (2, 1) if quick else (30, 10)
    cases = QUICK_CASES if quick else CASES
    report["throughput"] = rows = []

    def keep(into: list[dict[str, Any]], row: dict[str, Any] | None) -> None:
        if row is not None:
            into.append(row)
            print(json.dumps(row), file=sys.stderr)
            save()

    for case in cases:
        for method in args.methods:
            keep(rows, attempt(f"{method} {case[0]}", partial(throughput, method, case, steps, warmup, device, peak)))
    if args.lightly_methods:
        batch = 16 if quick else 512
        workers = 0 if quick else args.loader_workers
        grey = grey_images(batch * (steps + warmup))
        report["against_lightly"] = versus = []
        for method in args.lightly_methods:
            versus_lightly = partial(against_lightly, method, grey, steps, warmup, batch, device, peak, workers)
            keep(versus, attempt(f"{method} against lightly", versus_lightly))
    if not args.skip_quality:
        sizes = (64, 64, 16, 1) if quick else (60_000, 10_000, 512, args.quality_epochs)
        report["quality"] = runs = []
        for method in ("simclr", "byol"):
            run = partial(quality, method, sizes[3], train=sizes[0], test=sizes[1], batch=sizes[2], device=device)
            keep(runs, attempt(f"{method} quality run", run))
    for case in cases:  # last: compilation takes minutes
        for method in args.compile_methods:
            compiled = partial(throughput, method, case, steps, warmup, device, peak, compiled=True)
            keep(rows, attempt(f"{method} {case[0]} compiled", compiled))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
