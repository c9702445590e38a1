"""What training adds, separated from batch-norm statistics: per method, the kNN accuracy of the encoder at
random init (as constructed), of a control run and of the trained run, under the learning tests' protocol
(``ssl_core.learning_check``, as the learning tests), each method at its protocol budget
unless ``--epochs`` says otherwise.

An untrained ResNet in eval mode has placeholder batch-norm statistics (mean 0, variance 1): the random-init
figure measures a network without normalisation, and the first training steps replace those statistics
with real ones, which alone moves the kNN accuracy. The control is the same run with the learning rate at
``CONTROL_LR``: the weights stay at their random initialisation, the batch-norm statistics come from the
method's own training views. "trained − control" is what learning the weights adds.

    .venv/bin/python bench/learning_control.py                         # every method (~3 h, 2 cores with bf16)
    .venv/bin/python bench/learning_control.py --methods byol --epochs 32   # a longer budget than the protocol's
    .venv/bin/python bench/learning_control.py --methods byol simclr   # some methods (rewrites the section)
    .venv/bin/python bench/learning_control.py --methods byol --merge  # replace only byol's row
    OMP_NUM_THREADS=1 .venv/bin/python bench/learning_control.py --methods swav --merge &  # runs side by side,
    OMP_NUM_THREADS=1 .venv/bin/python bench/learning_control.py --methods dino --merge    # one thread each
    .venv/bin/python bench/learning_control.py --curve-every 2         # also kNN every 2 epochs
    .venv/bin/python bench/learning_control.py --quick                 # a smoke run, writes nothing
    .venv/bin/python bench/learning_control.py --methods byol --param crop_min_scale=0.6 \
        --config optimizer=sgd --config learning_rate=0.12                  # an experiment, prints only

``--param`` (the method's parameters) and ``--config`` (the training configuration) change the recipe; a
run with either is an experiment: it prints its rows and the overrides and leaves docs/BENCHMARKS.md alone.

Writes the ``learning_control`` section of docs/BENCHMARKS.md (the methods run, in registry order), or with
``--merge`` replaces the rows of the methods run in it and notes when they were re-measured (reading the
section when it writes, under a lock, so merges running side by side keep each other's rows). A run that would
write the section refuses, before training, code that differs from the git commit (an experiment on patched
code must not pose as the recipe's figure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from common import Data, knn_of_encoder, machine, machine_line, read_section, uncommitted_code, write_section

from ssl_core import learning_check as protocol
from ssl_core.config import TrainConfig
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.train import Callbacks, Progress, Trainer, build_method

#: The learning rate of the control run: small enough that no weight moves measurably in float32.
CONTROL_LR = 1e-12
#: The control's budget: at most this many epochs (128 steps under the protocol). At ``CONTROL_LR`` only the
#: batch norms' running statistics change, and those (momentum 0.1) keep 0.9**128, about 1e-6, of their start
#: after 128 steps: a longer control measures the same statistics of the same views, so a 192-epoch method's
#: control costs 8 epochs.
CONTROL_EPOCHS = protocol.DEFAULT_EPOCHS
IMAGE_SIZE = protocol.IMAGE_SIZE


@dataclass
class Row:
    method: str
    backbone: str
    random_init: float
    control: float
    trained: float
    epochs: int
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)


class Curve(Callbacks):
    """kNN accuracy every ``every`` epochs (0: never)."""

    def __init__(self, every: int, measure: Callable[[], float]) -> None:
        self.every = every
        self.measure = measure
        self.points: list[tuple[int, float]] = []

    def on_epoch_end(self, epoch: int, progress: Progress) -> None:
        if self.every and epoch % self.every == 0:
            self.points.append((epoch, self.measure()))
            print(f"    epoch {epoch}: kNN {self.points[-1][1]:.4f}", file=sys.stderr)


def overrides(pairs: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` pairs as a dict, each value parsed as JSON when it is JSON (``0.6``, ``true``, ``null``)
    and kept as a string otherwise (``sgd``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            sys.exit(f"{flag} {pair!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def experiment_config(method: str, epochs: int | None, seed: int, config: dict[str, Any]) -> TrainConfig:
    """The protocol's configuration for ``method`` with ``config``'s fields replaced, validated like a job
    spec's (raises ``ValueError`` naming the field)."""
    return TrainConfig(**{**asdict(protocol.config(method, epochs=epochs, seed=seed)), **config})


def check_overrides(
    methods: list[str], params: dict[str, Any], config: dict[str, Any], epochs: int | None, seed: int
) -> None:
    """Exit with a readable message, before any training, if ``params`` or ``config`` is not valid for one
    of ``methods``."""
    for method in methods:
        try:
            METHODS.get(method).Params(**params)
            experiment_config(method, epochs, seed, config)
        except ValueError as e:
            sys.exit(f"{method}: {e}")


def run(
    method: str,
    data: Data,
    epochs: int | None,
    seed: int,
    curve_every: int,
    device: torch.device,
    params: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    control: bool = True,
) -> Row:
    images = protocol.pretraining_images(method, data.train[:, None], data.train_labels, seed)
    info = DataInfo(len(images), images.shape[1])
    params, config = params or {}, config or {}

    def train(cfg: TrainConfig, every: int) -> tuple[float, list[tuple[int, float]]]:
        trained = build_method(cfg, params, info)
        curve = Curve(every, lambda: knn_of_encoder(trained.encoder(), data, cfg.image_size, device, patches))
        Trainer(trained, images, cfg, device, callbacks=curve).run()
        return knn_of_encoder(trained.encoder(), data, cfg.image_size, device, patches), curve.points

    started = time.monotonic()
    cfg = experiment_config(method, epochs, seed, config)
    # The method as training starts from it: its backbone is the random init, its patch grid says how the
    # method embeds images (whole, or by their tiles), for every run alike.
    untrained = build_method(cfg, params, info)
    patches, encoder = untrained.patch_grid, untrained.backbone
    random_init = knn_of_encoder(encoder, data, cfg.image_size, device, patches)
    has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    # Without batch norms (a ViT) nothing but the weights could change: the control is the random init.
    control_cfg = replace(cfg, learning_rate=CONTROL_LR, epochs=control_epochs(cfg))
    control_knn = train(control_cfg, 0)[0] if has_batch_norm and control else random_init
    trained, curve = train(cfg, curve_every)
    assert cfg.epochs is not None
    return Row(method, cfg.backbone, random_init, control_knn, trained, cfg.epochs, time.monotonic() - started, curve)


def control_epochs(cfg: TrainConfig) -> int:
    """The control run's epochs for a run of ``cfg``: its own, at most ``CONTROL_EPOCHS``."""
    assert cfg.epochs is not None
    return min(cfg.epochs, CONTROL_EPOCHS)


def markdown(rows: list[Row], args: argparse.Namespace, command: str, config: dict[str, Any]) -> str:
    """The section for ``rows``; ``config``: the parsed ``--config`` overrides."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    budget = (
        f"{args.epochs} epochs"
        if args.epochs is not None
        else "each method's budget in `ssl_core.learning_check` (the Epochs column)"
    )
    recipe = (
        "each method's defaults"
        if not (args.param or args.config)
        else "each method's defaults except " + ", ".join(f"`{o}`" for o in args.param + args.config)
    )
    if args.no_control:
        recipe += " (control not run: its column repeats the random init)"
    size, batch = config.get("image_size", IMAGE_SIZE), config.get("batch_size", protocol.BATCH_SIZE)
    vit_methods = ", ".join(m for m in METHODS.names() if protocol.family_for(m) == "vit")
    lines = [
        "## What training adds over random weights with real batch-norm statistics",
        "",
        f"Measured {stamp} by `{command}`.",
        "",
        machine_line(machine()),
        "",
        f"Protocol (the learning tests'): the first {args.train_images:,} Fashion-MNIST train images for "
        f"pretraining and as the kNN bank, the first {args.test_images:,} test images as queries; ResNet-18 "
        f"(standard stem) or, for methods checked on a ViT ({vit_methods}), ViT-Tiny (patch 4); {size} px, "
        f"batch {batch}, {budget}, seed {args.seed}, {recipe}; weighted kNN, "
        f"k = {protocol.KNN_K}, T = {protocol.KNN_TEMPERATURE}, cosine. Colorization pretrains on a class-tinted "
        f"copy (`ssl_core.learning_check.pretraining_images`). {TILES_NOTE} "
        f"**Random init**: the encoder as constructed (a ResNet's batch norms still hold placeholder statistics). "
        f"**Control**: the same run at learning rate {CONTROL_LR:g}, so the weights stay random while the batch "
        f"norms take the statistics of the method's training views (a ViT has none: its control is its random "
        f"init, not run). {CONTROL_NOTE} **Trained − control** is what learning the weights adds.",
        "",
        "| Method | Backbone | Epochs | Random init | Control | Trained | Trained − control | "
        "Trained − random init | Minutes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row_line(r) for r in rows]
    curves = [r for r in rows if r.curve]
    if curves:
        lines += ["", CURVES_HEADING, ""]
        lines += [curve_line(r) for r in curves]
    return "\n".join(lines) + "\n\n"


CURVES_HEADING = "kNN during training (epoch: accuracy):"
#: Why the control stops at ``CONTROL_EPOCHS``, in the protocol line.
CONTROL_NOTE = (
    f"The control runs at most {CONTROL_EPOCHS} epochs: at that learning rate only the batch norms' "
    "running statistics move, and those (momentum 0.1) forget where they started within a few dozen "
    "steps, so a longer control would measure the same thing."
)
#: How the methods trained on tiles are embedded, in the protocol line.
TILES_NOTE = (
    "Methods trained on tiles (jigsaw, relative position) embed an image as the mean of its 3×3 tiles' "
    "features (`SSLMethod.patch_grid`, docs/adr/0003), in all three columns: their random init and "
    "control are embedded the same way."
)


def row_line(r: Row) -> str:
    return (
        f"| {r.method} | {r.backbone} | {r.epochs} | {r.random_init:.3f} | {r.control:.3f} | {r.trained:.3f} | "
        f"{r.trained - r.control:+.3f} | {r.trained - r.random_init:+.3f} | {r.seconds / 60:.1f} |"
    )


def curve_line(r: Row) -> str:
    return f"- {r.method}: " + ", ".join(f"{e}: {a:.3f}" for e, a in r.curve)


def merged(section: str, rows: list[Row], command: str) -> str:
    """``section`` (the current learning_control section) with the rows and curves of ``rows`` replaced, and
    a line saying which rows were re-measured when, by which command. A method without a row there gets
    one, and its curve, in name order among the others."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = section.rstrip("\n").split("\n")

    def find(prefix: str) -> int | None:
        return next((i for i, line in enumerate(lines) if line.startswith(prefix)), None)

    def insert_sorted(prefix: str, method: str, line: str, start: int = 0) -> None:
        """Put ``line`` in the block of lines after ``start`` that begin with ``prefix`` and a method name:
        before the first whose method sorts after ``method``, else after the last (else at the end)."""
        known = set(METHODS.names())
        named = {
            i: lines[i][len(prefix) :].split(" ", 1)[0].rstrip(":")
            for i in range(start, len(lines))
            if lines[i].startswith(prefix)
        }
        block = [i for i, name in named.items() if name in known]
        later = [i for i in block if named[i] > method]
        lines.insert(later[0] if later else (block[-1] + 1 if block else len(lines)), line)

    for r in rows:
        at = find(f"| {r.method} |")
        if at is None:
            insert_sorted("| ", r.method, row_line(r))
        else:
            lines[at] = row_line(r)
        curve = find(f"- {r.method}: ")
        if curve is not None:
            lines[curve] = curve_line(r) if r.curve else f"- {r.method}: not measured in its last run"
        elif r.curve:
            if CURVES_HEADING not in lines:
                lines += ["", CURVES_HEADING, ""]
            insert_sorted("- ", r.method, curve_line(r), start=lines.index(CURVES_HEADING))
    here = machine_line(machine())
    note = (
        f"Re-measured {stamp} by `{command}`: the row{'s' if len(rows) > 1 else ''} of "
        + ", ".join(r.method for r in rows)
        + " (same protocol"
        + (", same machine)." if here in lines else f"; {here})")
    )
    measured = find("Measured ")
    lines.insert(0 if measured is None else measured + 1, note)
    return "\n".join(lines) + "\n\n"


def mergeable(current: str | None, args: argparse.Namespace) -> str | None:
    """Why rows run with ``args`` cannot be merged into ``current`` (the learning_control section), or None."""
    if current is None:
        return "--merge: docs/BENCHMARKS.md has no learning_control section yet; run without --merge first"
    protocol_text = (
        f"the first {args.train_images:,} Fashion-MNIST train images",
        f"the first {args.test_images:,} test images",
        f"seed {args.seed},",
    )
    if not all(t in current for t in protocol_text):
        return "--merge: --train-images, --test-images and --seed must match the section's protocol"
    return None


def refuse_patched_code(changed: list[str] | None) -> None:
    """Exit before training when the code differs from the commit: the section would record what no commit
    measures (an experiment on patched code once overwrote the table this way). None (no git checkout): go on."""
    if changed:
        sys.exit(
            "docs/BENCHMARKS.md records what committed code measures, and these files differ from HEAD: "
            f"{', '.join(changed)}. Commit or stash them, or pass --no-doc to print only."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS.names(), default=METHODS.names())
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of every method (default: each method's budget in ssl_core.learning_check)",
    )
    parser.add_argument("--train-images", type=int, default=protocol.TRAIN_IMAGES)
    parser.add_argument("--test-images", type=int, default=protocol.QUERIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--curve-every", type=int, default=0, help="kNN every this many epochs (0: off)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the rows of --methods in the section "
        "of docs/BENCHMARKS.md, keeping the others (default: rewrite the section)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: rotation, 1 epoch, 256 images, no doc")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter of every method run (repeatable); implies --no-doc",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training-configuration field, e.g. optimizer=sgd (repeatable); implies --no-doc",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help="skip the control run (its column shows the random init); implies --no-doc",
    )
    args = parser.parse_args()
    params, config = overrides(args.param, "--param"), overrides(args.config, "--config")
    if params or config or args.no_control:
        args.no_doc = True
        print(
            f"experiment: params {params or '{}'}, config {config or '{}'}; docs/BENCHMARKS.md left alone",
            file=sys.stderr,
        )
    if args.quick:
        args.methods, args.epochs, args.train_images, args.test_images, args.no_doc = ["rotation"], 1, 256, 100, True
    check_overrides(args.methods, params, config, args.epochs, args.seed)
    if not args.no_doc:
        refuse_patched_code(uncommitted_code())
    # Checked before training: a merge into a section of another protocol would mix incomparable rows.
    if args.merge:
        problem = mergeable(read_section("learning_control"), args)
        if problem:
            sys.exit(problem)
    device = torch.device("cpu")
    data = Data.load(args.train_images, args.test_images)
    rows = []
    for method in [m for m in METHODS.names() if m in args.methods]:
        print(f"{method}…", file=sys.stderr)
        rows.append(
            run(
                method,
                data,
                args.epochs,
                args.seed,
                args.curve_every,
                device,
                params,
                config,
                control=not args.no_control,
            )
        )
        r = rows[-1]
        print(
            f"{r.method:24s} random {r.random_init:.4f}  control {r.control:.4f}  trained {r.trained:.4f}  "
            f"({r.trained - r.control:+.4f} over control)  {r.seconds:.0f}s",
            flush=True,
        )
    command = "bench/learning_control.py " + shlex.join(sys.argv[1:])
    if args.no_doc:
        print(markdown(rows, args, command, config))
        return
    if not args.merge:
        print(write_section("learning_control", markdown(rows, args, command, config)))
        return

    def merge(current: str | None) -> str:
        # The section as it is now, not as it was when the run started: runs of other methods side by side
        # may have merged their rows since. Changed beyond merging, it is left alone and the rows printed.
        problem = mergeable(current, args)
        if problem or current is None:
            print(markdown(rows, args, command, config))
            sys.exit(f"{problem}; the rows above were not written")
        return merged(current, rows, command)

    print(write_section("learning_control", merge))


if __name__ == "__main__":
    main()
