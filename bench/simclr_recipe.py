"""Which SimCLR augmentations make an encoder learn on small grayscale images: an ablation.

Trains Jaga's SimCLR (ResNet-18, standard stem, 32 px, batch 256, LARS defaults, seed 0) for a fixed
number of epochs on the first N Fashion-MNIST training images with four augmentation settings, and reports
the weighted kNN accuracy (k=20, T=0.1; bank = the training images, queries = the first M test images)
next to raw pixels and the randomly initialised encoder. Epochs, not minutes, so the figures do not depend
on how busy the machine is. Writes bench/results/simclr_recipe.json and its section of docs/BENCHMARKS.md.

    python bench/simclr_recipe.py            # 8 epochs on 8,192 images, about 12 minutes on 2 cores
    python bench/simclr_recipe.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from common import write_section

from ssl_core.config import TrainConfig
from ssl_core.evaluate import embed_images, knn_accuracy, pixel_features
from ssl_core.fashion_mnist import load_fashion_mnist
from ssl_core.train import Trainer, build_method

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results" / "simclr_recipe.json"
K, T = 20, 0.1
SETTINGS = {
    "paper-like crops (min scale 0.25), no blur/solarize": {"crop_min_scale": 0.25, "blur_p": 0.0, "solarize_p": 0.0},
    "milder crops (min scale 0.6)": {"crop_min_scale": 0.6, "blur_p": 0.0, "solarize_p": 0.0},
    "min scale 0.25 + blur 0.5 + solarize 0.2": {"crop_min_scale": 0.25, "blur_p": 0.5, "solarize_p": 0.2},
    "min scale 0.6 + blur 0.5 + solarize 0.2 (default)": {},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-images", type=int, default=8192)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="1 epoch on 512 images, 256 queries")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_images, args.test_images = 1, 512, 256
    command = shlex.join(["python", "bench/simclr_recipe.py", *(sys.argv[1:] if argv is None else argv)])
    device = torch.device("cpu")
    train, train_labels = load_fashion_mnist("train", args.train_images)
    test, test_labels = load_fashion_mnist("test", args.test_images)
    bank, queries = train[:, None], test[:, None]
    cfg = TrainConfig(stem="standard", image_size=32, batch_size=256, epochs=args.epochs, seed=args.seed)

    def knn(backbone) -> float:  # type: ignore[no-untyped-def]
        return knn_accuracy(
            embed_images(backbone, bank, 32, device),
            train_labels,
            embed_images(backbone, queries, 32, device),
            test_labels,
            K,
            T,
        )

    rows = {
        "raw pixels": knn_accuracy(
            pixel_features(bank, 32), train_labels, pixel_features(queries, 32), test_labels, K, T
        ),
        "random init": knn(build_method(cfg).backbone),
    }
    print(f"references: {rows}", flush=True)
    minutes = {}
    for name, params in SETTINGS.items():
        method = build_method(cfg, params)
        start = time.monotonic()
        Trainer(method, bank, cfg, device).run()
        minutes[name] = (time.monotonic() - start) / 60
        rows[name] = knn(method.backbone)
        print(f"{name}: {rows[name]:.4f} ({minutes[name]:.1f} min)", flush=True)

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"date": date, "command": command, "args": vars(args), "knn": rows, "train_minutes": minutes}, indent=2
        )
        + "\n"
    )
    lines = [
        f"## SimCLR augmentations on small grayscale images{' — smoke run, not meaningful' if args.quick else ''}",
        "",
        f"Measured {date} by `{command}` (2-core CPU, bf16 autocast). Protocol: Fashion-MNIST, pretraining "
        f"set and kNN bank = the first {args.train_images} train images, queries = the first {args.test_images} "
        f"test images; ResNet-18, standard stem, 32 px, batch 256, {args.epochs} epochs, LARS (base lr 0.3 per "
        f"256), temperature 0.2, seed {args.seed}; weighted kNN, cosine, k={K}, T={T}. Training time varies "
        "with machine load; the accuracies do not.",
        "",
        "| Encoder | kNN top-1 | train minutes |",
        "|---|---:|---:|",
    ]
    for name, acc in rows.items():
        lines.append(
            f"| {name} | {acc:.4f} | {minutes[name]:.1f} |"
            if name in minutes
            else f"| reference: {name} | {acc:.4f} | — |"
        )
    section = "\n".join(lines) + "\n"
    quick_key = "bench_simclr_recipe_quick"
    write_section(quick_key if args.quick else "bench_simclr_recipe", section, drop=() if args.quick else (quick_key,))
    print(section)


if __name__ == "__main__":
    main()
