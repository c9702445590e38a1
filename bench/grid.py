"""Jaga against lightly, like for like: each side in float32 and in its best precision and memory format, on the
same machine, batch, image size, backbone and stem; the headline ratio is best against best.

Each cell is a ``bench/bench_methods.py`` training run (a child process of its own, one after the other) with
the precision options set: Jaga's ``TrainConfig.precision`` (``float32``, or ``auto``: bf16 where the machine
runs it faster), lightly's loop in fp32 or under bf16 autocast with model and inputs channels_last. With the
small (CIFAR) stem, lightly's own CIFAR ResNet-18 (``ResNetGenerator``) is a row too.

    .venv/bin/python bench/grid.py                                 # SimCLR and BYOL, 1 minute per cell
    .venv/bin/python bench/grid.py --methods simclr --budget-minutes 0.2 --no-doc    # a smoke run
    .venv/bin/python bench/grid.py --render bench/results/grid-A.json bench/results/grid-B.json  # runs together

Writes ``bench/results/grid-<date>.json`` and the ``headline`` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench_methods import Settings, backbone_for, spawn
from common import RESULTS_DIR, machine, machine_line, write_section

#: (label, implementation, Jaga precision, lightly precision, lightly backbone)
VARIANTS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "standard": [
        ("Jaga float32", "jaga", "float32", "fp32", "torchvision"),
        ("Jaga bf16", "jaga", "bf16", "fp32", "torchvision"),
        ("Jaga auto", "jaga", "auto", "fp32", "torchvision"),
        ("lightly fp32", "lightly", "auto", "fp32", "torchvision"),
        ("lightly bf16 + channels_last", "lightly", "auto", "bf16", "torchvision"),
    ],
    "small": [
        ("Jaga float32", "jaga", "float32", "fp32", "torchvision"),
        ("Jaga bf16", "jaga", "bf16", "fp32", "torchvision"),
        ("Jaga auto", "jaga", "auto", "fp32", "torchvision"),
        ("lightly CIFAR ResNet fp32", "lightly", "auto", "fp32", "lightly_cifar"),
        ("lightly CIFAR ResNet bf16 + channels_last", "lightly", "auto", "bf16", "lightly_cifar"),
    ],
}


def best(cells: list[dict[str, Any]], impl: str) -> dict[str, Any] | None:
    """The fastest of ``impl``'s forced configurations: Jaga's ``auto`` cell repeats one of them, and counting it
    would give Jaga one more draw of the run-to-run noise than lightly."""
    ok = [c for c in cells if c["impl"] == impl and "images_per_second" in c["run"] and not _auto(c)]
    return max(ok, key=lambda c: c["run"]["images_per_second"]) if ok else None


def _auto(cell: dict[str, Any]) -> bool:
    return cell["impl"] == "jaga" and cell["settings"]["jaga_precision"] == "auto"


def _noise(cells: list[dict[str, Any]]) -> str:
    """A sentence on run-to-run spread: the widest gap between an ``auto`` cell and the forced cell it repeats."""
    gaps = []
    for c in cells:
        if not _auto(c) or "images_per_second" not in c["run"]:
            continue
        for f in cells:
            same = (f["method"], f["stem"], f["impl"]) == (c["method"], c["stem"], "jaga") and not _auto(f)
            if same and "images_per_second" in f["run"] and f["run"]["precision"] == c["run"]["precision"]:
                a, b = c["run"]["images_per_second"], f["run"]["images_per_second"]
                gaps.append((abs(a - b) / min(a, b), c["method"], b, a))
    if not gaps:
        return "One run per cell."
    gap, method, forced, auto = max(gaps)
    return (
        f"One run per cell, and the same configuration run twice differed by up to {gap:.0%} ({method}: "
        f"{forced:.0f} forced, {auto:.0f} img/s under `auto`): a ratio within that is not established by one run."
    )


def _chose(cells: list[dict[str, Any]]) -> str:
    auto = [c for c in cells if _auto(c) and "images_per_second" in c["run"]]
    return auto[0]["run"]["precision"].split(" ")[0] if auto else "–"


def merged(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report of several runs' cells (same settings): methods in first-seen order; each run's date, command
    and machine kept in ``runs`` for the machine lines."""
    if len({json.dumps(r["settings"], sort_keys=True) for r in reports}) > 1:
        sys.exit("grid: the results files were measured with different settings")
    methods = list(dict.fromkeys(m for r in reports for m in r["methods"]))
    return {
        "settings": reports[0]["settings"],
        "methods": methods,
        "stems": list(dict.fromkeys(st for r in reports for st in r["stems"])),
        "cells": [c for m in methods for r in reports for c in r["cells"] if c["method"] == m],
        "runs": [
            {"date": r["date"], "command": r["command"], "machine": r["machine"], "methods": r["methods"]}
            for r in reports
        ],
    }


def markdown(report: dict[str, Any]) -> str:
    if "runs" not in report:
        report = merged([report])
    s = report["settings"]
    lines = [
        "## Headline: Jaga against lightly, best against best",
        "",
        f"**Protocol.** ResNet-18 (MAE: ViT-Tiny, patch {s['patch_size']}) at {s['image_size']} px, "
        f"batch {s['batch_size']}, the first {s['train_images']:,} "
        f"Fashion-MNIST training images, {s['budget_minutes']:g} min of training per cell, one cell at a time on "
        "the machine below; each side in float32 and in bf16 with channels_last; ratio = Jaga's faster over "
        "lightly's faster (Jaga's `auto` cell, which repeats one of its two after timing both, is not counted). "
        + _noise(report["cells"]),
        "",
        "| Method | Backbone | Stem | Jaga best | lightly best | Ratio | Jaga auto chose |",
        "|---|---|---|---|---|---:|---|",
    ]
    for method in report["methods"]:
        for stem in report["stems"]:
            cells = [c for c in report["cells"] if c["method"] == method and c["stem"] == stem]
            j, lt = best(cells, "jaga"), best(cells, "lightly")
            if j is None or lt is None:
                continue
            ratio = j["run"]["images_per_second"] / lt["run"]["images_per_second"]
            lines.append(
                f"| {method} | {backbone_for(method)} | {stem} | "
                f"{j['run']['images_per_second']:.0f} img/s ({j['label']}) | "
                f"{lt['run']['images_per_second']:.0f} img/s ({lt['label']}) | {ratio:.2f}× | {_chose(cells)} |"
            )
    lines.append("")
    for run in report["runs"]:
        lines += [
            f"Measured by `bench/grid.py` (`{run['command']}`), {run['date']}: {', '.join(run['methods'])}.",
            "",
            machine_line(run["machine"]),
            "",
        ]
    lines += [
        "Jaga `auto` chooses bf16 only where this machine runs the method's own step faster in it (see the README's "
        "precision paragraph); lightly bf16 is its loop under bf16 autocast with model and inputs channels_last. "
        "The small stem (3×3 stride-1 conv, no max-pool) is the CIFAR configuration, with lightly's own CIFAR "
        f"ResNet-18 as its rows. kNN (k 20, T 0.1, {s['test_images']:,} test images) only shows that each run "
        "trained: a minute is not a quality budget.",
        "",
        "Every cell:",
        "",
        "| Method | Stem | Variant | Precision | img/s | Peak RSS (MiB) | kNN | Steps |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for c in report["cells"]:
        r = c["run"]
        if "images_per_second" not in r:
            lines.append(f"| {c['method']} | {c['stem']} | {c['label']} | – | failed: {r.get('error', '?')} | | | |")
            continue
        lines.append(
            f"| {c['method']} | {c['stem']} | {c['label']} | {r['precision']} | {r['images_per_second']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['knn_accuracy']:.3f} | {r['steps']} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["simclr", "byol"])
    p.add_argument("--stems", nargs="+", default=["standard", "small"], choices=list(VARIANTS))
    p.add_argument("--small-stem-methods", nargs="+", default=["simclr"], help="methods also run with the small stem")
    p.add_argument("--budget-minutes", type=float, default=1.0)
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument(
        "--render", type=Path, nargs="+", help="write the doc section from these results files, measuring nothing"
    )
    args = p.parse_args(argv)
    if args.render:
        write_section("headline", markdown(merged([json.loads(f.read_text()) for f in args.render])))
        return
    command = shlex.join(["python", "bench/grid.py", *(sys.argv[1:] if argv is None else argv)])
    info = machine()
    base = Settings(
        budget_minutes=args.budget_minutes,
        train_images=args.train_images,
        test_images=args.test_images,
        image_size=args.image_size,
        batch_size=args.batch_size,
        stem="standard",
        patch_size=4,
        seed=0,
        lightly_workers=1,
        quick=False,
    )
    cells = []
    for method in args.methods:
        for stem in args.stems:
            if stem == "small" and method not in args.small_stem_methods:
                continue
            for label, impl, jaga_precision, lightly_precision, lightly_backbone in VARIANTS[stem]:
                s = replace(
                    base,
                    stem=stem,
                    jaga_precision=jaga_precision,
                    lightly_precision=lightly_precision,
                    lightly_backbone=lightly_backbone,
                )
                print(f"{method} {stem}: {label}", file=sys.stderr)
                run = spawn(impl, method, s)
                cells.append(
                    {"method": method, "stem": stem, "label": label, "impl": impl, "settings": asdict(s), "run": run}
                )
    date = datetime.datetime.now(datetime.UTC)
    report = {
        "date": date.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "machine": info,
        "methods": args.methods,
        "stems": args.stems,
        "settings": asdict(base),
        "cells": cells,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"grid-{date.strftime('%Y-%m-%d')}.json").write_text(json.dumps(report, indent=2) + "\n")
    section = markdown(report)
    if not args.no_doc:
        write_section("headline", section)
    print(section)


if __name__ == "__main__":
    main()
