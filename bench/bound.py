"""How close Jaga's training runs to the compute bound of its configuration, and where a step goes.

For each method and precision: the FLOPs of one training step's forward and backward passes (torch's FLOP
counter, augmentation counted apart), the machine's measured matmul peak in that precision, the images/s the
trainer reaches, and the profile of a step (data, augmentation, forward, backward, optimiser, and the
representation monitor amortised over an epoch). The bound is the images/s the step's FLOPs would allow at the
matmul peak; the fraction is the measured images/s over it.

    .venv/bin/python bench/bound.py             # SimCLR, BYOL, MoCo: ResNet-18, 32 px, standard stem
    .venv/bin/python bench/bound.py --methods simclr --precisions float32 auto --steps 6

Writes ``bench/results/bound-<date>.json`` and the ``bound`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS_DIR, Data, machine, machine_line, write_section
from torch.utils.flop_counter import FlopCounterMode

from ssl_core.config import TrainConfig
from ssl_core.data import to_float
from ssl_core.device import resolve_device
from ssl_core.methods.base import DataInfo
from ssl_core.monitor import RepresentationMonitor
from ssl_core.train import Trainer, build_method

GOAL = 0.70  # of the bound, for ResNet-18 at 32 px (issue #20)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 3.0) -> float:
    """The best FLOP/s of square ``n`` matmuls in ``dtype`` over about ``seconds`` (after one warm-up)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def count_flops(fn: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measure(
    method_name: str, precision: str, compiled: bool, images: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    device = resolve_device("auto")
    cfg = TrainConfig(
        method=method_name,
        backbone="resnet18",
        stem=args.stem,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=1,
        precision=precision,  # type: ignore[arg-type]
        checkpoint_every_steps=1_000_000,
    )
    torch.manual_seed(0)
    method = build_method(cfg, data=DataInfo(num_images=len(images), channels=images.shape[1]))
    trainer = Trainer(method, images, cfg, device)
    batch = to_float(trainer.images[: args.batch_size], device)

    def views() -> None:
        method.views(batch, trainer.generator)

    step_flops = count_flops(lambda: trainer._train_step(0))
    aug_flops = count_flops(views)
    if compiled:
        trainer.compile_backbone()
    warmup_start = time.perf_counter()
    for step in range(args.warmup):
        trainer._train_step(step)
    warmup_seconds = time.perf_counter() - warmup_start
    trainer.phases.reset()
    start = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        trainer._train_step(step)
    seconds = time.perf_counter() - start
    phases = {k: v / args.steps for k, v in trainer.phases.flush().items() if k != "monitor"}
    aug_start = time.perf_counter()
    for _ in range(args.steps):
        views()
    phases["augmentation"] = (time.perf_counter() - aug_start) / args.steps
    phases["forward"] = max(0.0, phases["forward"] - phases["augmentation"])  # forward as timed includes it
    monitor = RepresentationMonitor(images, None, args.image_size, device, seed=0)
    mon_start = time.perf_counter()
    monitor.measure(method.encoder(), 1)
    steps_per_epoch = max(1, args.epoch_images // args.batch_size)
    phases["monitor"] = (time.perf_counter() - mon_start) / steps_per_epoch  # once per epoch, amortised
    step_seconds = seconds / args.steps
    dtype = torch.bfloat16 if trainer.precision == "bf16" else torch.float32
    peak = args.peaks[str(dtype)]
    model_flops = step_flops - aug_flops
    bound_images_per_second = args.batch_size * peak / model_flops
    images_per_second = args.batch_size / step_seconds
    return {
        "method": method_name,
        "requested_precision": precision,
        "compiled": compiled,
        "warmup_seconds": warmup_seconds,
        "precision": trainer.precision,
        "precision_reason": trainer.precision_choice.reason,
        "images_per_second": images_per_second,
        "step_seconds": step_seconds,
        "step_gflops": step_flops / 1e9,
        "augmentation_gflops": aug_flops / 1e9,
        "model_gflops_per_image": model_flops / args.batch_size / 1e9,
        "peak_tflops": peak / 1e12,
        "achieved_tflops": model_flops / step_seconds / 1e12,
        "bound_images_per_second": bound_images_per_second,
        "fraction_of_bound": images_per_second / bound_images_per_second,
        "profile_seconds": phases,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "## Training against the compute bound",
        "",
        f"Measured by `bench/bound.py` (`{report['command']}`), {report['date']}.",
        "",
        machine_line(report["machine"]),
        "",
        f"**Protocol.** ResNet-18 ({s['stem']} stem) at {s['image_size']} px, batch {s['batch_size']}, each method's "
        "default recipe; FLOPs of one step's forward and backward passes counted by `torch.utils.flop_counter` "
        "(augmentation counted apart and left out of the bound); the bound is the images/s those FLOPs allow at the "
        f"machine's measured matmul peak ({s['matmul_n']}² matmuls) in the step's precision; {s['steps']} timed "
        f"steps after {s['warmup']} warm-up steps; the monitor's cost is one measurement amortised over an epoch of "
        f"{s['epoch_images']:,} images. Goal: ≥ {GOAL:.0%} of the bound.",
        "",
        "Matmul peak: "
        + ", ".join(f"{k.replace('torch.', '')} {v / 1e12:.2f} TFLOP/s" for k, v in report["peaks"].items())
        + ".",
        "",
        "| Method | Precision | Compiled | img/s | Bound img/s | Of bound | GFLOP/img | Goal | Step: data / aug / fwd "
        "/ bwd / opt / monitor (ms) | Warm-up (s) |",
        "|---|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in report["runs"]:
        p = r["profile_seconds"]
        order = ("data", "augmentation", "forward", "backward", "optimizer", "monitor")
        profile = " / ".join(f"{1000 * p[k]:.0f}" for k in order)
        met = "met" if r["fraction_of_bound"] >= GOAL else "not met"
        lines.append(
            f"| {r['method']} | {r['precision']} ({r['requested_precision']}) | "
            f"{'yes' if r.get('compiled') else 'no'} | {r['images_per_second']:.0f} | "
            f"{r['bound_images_per_second']:.0f} | {r['fraction_of_bound']:.0%} | {r['model_gflops_per_image']:.2f} "
            f"| {met} | {profile} | {r.get('warmup_seconds', float('nan')):.1f} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["simclr", "byol", "moco"])
    p.add_argument("--precisions", nargs="+", default=["float32", "bf16", "auto"], choices=["auto", "bf16", "float32"])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--stem", choices=["small", "standard"], default="standard")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--compile", nargs="+", default=["off"], choices=["off", "on"], help="torch.compile the backbone (on), or not"
    )
    p.add_argument("--epoch-images", type=int, default=60_000, help="images per epoch, to amortise the monitor")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    command = shlex.join(["python", "bench/bound.py", *(sys.argv[1:] if argv is None else argv)])
    info = machine()
    device = resolve_device("auto")
    args.peaks = {str(dtype): matmul_peak(dtype, device, args.matmul_n) for dtype in (torch.float32, torch.bfloat16)}
    data = Data.load(max(4 * args.batch_size, 2048), 16)
    images = data.train[:, None]
    runs = []
    for method in args.methods:
        for precision in args.precisions:
            for compiled in args.compile:
                print(f"{method} {precision} compile={compiled}", file=sys.stderr)
                runs.append(measure(method, precision, compiled == "on", images, args))
                print(json.dumps(runs[-1]), file=sys.stderr)
    date = datetime.datetime.now(datetime.UTC)
    report = {
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": info,
        "settings": {
            k: getattr(args, k)
            for k in ("image_size", "stem", "batch_size", "steps", "warmup", "epoch_images", "matmul_n", "compile")
        },
        "peaks": args.peaks,
        "runs": runs,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"bound-{date.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    if not args.no_doc:
        write_section("bound", section)
    print(section)
    print(f"wrote {Path(out).relative_to(RESULTS_DIR.parents[1])}", file=sys.stderr)


if __name__ == "__main__":
    main()
