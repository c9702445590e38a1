"""Peak memory of ingest and of an index job against the number of images: the goal is a peak that stays flat.

For each size it writes (once, deterministically, streaming to disk) a zip of that many 64 px RGB PNGs in 10
class folders, then runs, each in a fresh child process whose high-water mark of resident memory (``VmHWM``)
it reads: the worker's ``run_ingest`` over the archive, and the worker's ``run_index`` over the dataset with a
randomly initialised ResNet-18 (standard stem, 8 px inputs), and 14 steps of the pretraining loop. The jobs
run as the worker runs them, with a stand-in ``JobContext`` (no database or broker: they are not measured).

``--code DIR`` measures the code of another checkout (``--code /work/main`` for the code before streaming):
the children import the project from there.

    python bench/ingest_memory.py                                # 10k, 60k and 200k images
    python bench/ingest_memory.py --sizes 2000 --code /work/main  # quick, another checkout's code
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
SIDE = 64
CLASSES = 10
DATASET_ID = "ds_" + "0" * 24
MODEL_ID = "mdl_" + "0" * 24
#: The index encoder's input side: small, since what is measured is memory, not the embeddings' quality.
INDEX_INPUT = 8


# Archives -----------------------------------------------------------------------------------------------


def _images(start: int, count: int) -> np.ndarray:
    """Images ``start:start+count`` of the sequence: a colour gradient with per-image noise (compresses as
    photos do, a little), (count, 64, 64, 3) uint8; the same for the same ``start`` whatever ``count``."""
    out = np.empty((count, SIDE, SIDE, 3), np.uint8)
    ramp = np.linspace(0.0, 1.0, SIDE, dtype=np.float32)
    for k in range(count):
        rng = np.random.default_rng([7, start + k])
        a, b = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        direction = ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None]
        noise = rng.normal(0, 6, (SIDE, SIDE, 3)).astype(np.float32)
        out[k] = np.clip(a + (b - a) * direction + noise, 0, 255).astype(np.uint8)
    return out


def write_archive(path: Path, n: int) -> None:
    """A zip of ``n`` PNGs in class folders, written entry by entry (stored: PNG is compressed already)."""
    from PIL import Image

    tmp = path.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for start in range(0, n, 1000):
            for k, image in enumerate(_images(start, min(1000, n - start))):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG", compress_level=1)
                i = start + k
                zf.writestr(f"c{i % CLASSES}/{i:06d}.png", buf.getvalue())
    os.replace(tmp, path)


# The children: one job each, as the worker runs it --------------------------------------------------------


class _Ctx:
    """What ``run_ingest`` and ``run_index`` use of a ``JobContext``."""

    def __init__(self, spec: dict[str, Any], data_dir: Path) -> None:
        from types import SimpleNamespace

        from api.core.artifacts import ArtifactStore
        from api.core.settings import Settings

        self.job = SimpleNamespace(spec=spec)
        self.job_id = "job_bench"
        self.owner = "bench"
        self.tenant_id = "tenant_bench"
        self.settings = Settings(data_dir=data_dir, device="cpu")
        self.store = ArtifactStore(data_dir / "artifacts")

    def update(self, **_: object) -> None: ...

    def raise_if_stopped(self) -> None: ...

    def event(self, *_: object) -> None: ...

    def with_session(self, fn: Any) -> Any:
        from types import SimpleNamespace

        return fn(SimpleNamespace(get=lambda _model, _id: SimpleNamespace(id=_id, tenant_id=self.tenant_id)))

    def load_dataset(self, dataset_id: str) -> Any:
        from ssl_core.data import ImageArray

        return ImageArray.load(self.store.dataset_dir(dataset_id))


def _vm_hwm_mib() -> float:
    found = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert found is not None
    return int(found.group(1)) / 1024


def child(job: str, archive: Path, data_dir: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ctx: Any
    if job == "ingest":
        import shutil

        from worker.kinds.ingest import run_ingest

        shutil.rmtree(data_dir / "artifacts" / "datasets", ignore_errors=True)
        ctx = _Ctx({"kind": "ingest", "dataset_id": DATASET_ID, "source_format": "zip", "max_side": 256}, data_dir)
        upload = ctx.store.upload_path(DATASET_ID, ".zip")
        upload.unlink(missing_ok=True)
        upload.symlink_to(archive.resolve())
        before = _vm_hwm_mib()
        started = time.perf_counter()
        outcome = run_ingest(ctx)
        return {
            "imports_mib": round(before, 1),
            "peak_mib": round(_vm_hwm_mib(), 1),
            "seconds": round(time.perf_counter() - started, 1),
            "num_images": outcome.result["num_images"],
        }
    if job == "train":
        return train_child(data_dir)
    from ssl_core.backbones import build_backbone
    from ssl_core.encoder import EncoderInfo, save_encoder
    from worker.kinds.index import run_index

    ctx = _Ctx({"kind": "index", "model_id": MODEL_ID, "dataset_id": DATASET_ID}, data_dir)
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", "standard", INDEX_INPUT)
    info = EncoderInfo("simclr", "resnet18", "standard", INDEX_INPUT, 3, (SIDE, SIDE), backbone.dim)
    save_encoder(ctx.store.model_path(MODEL_ID), backbone, info, {})
    del backbone
    before = _vm_hwm_mib()
    started = time.perf_counter()
    outcome = run_index(ctx)
    return {
        "imports_mib": round(before, 1),
        "peak_mib": round(_vm_hwm_mib(), 1),
        "seconds": round(time.perf_counter() - started, 1),
        "num_items": outcome.result["num_items"],
        "dim": outcome.result["dim"],
        "embeddings_mib": round(outcome.result["num_items"] * outcome.result["dim"] * 4 / 2**20, 1),
    }


def train_child(data_dir: Path, steps: int = 12) -> dict[str, Any]:
    """The pretraining loop over the dataset at 16 px (so ``fit_for_training`` shrinks the 64 px images to 32
    px first): the seconds that takes, the median of ``steps`` step times after 2 warm-up steps, the peak."""
    import torch

    from ssl_core.config import TrainConfig
    from ssl_core.data import ImageArray
    from ssl_core.methods.base import DataInfo
    from ssl_core.train import Trainer, build_method

    data = ImageArray.load(data_dir / "artifacts" / "datasets" / DATASET_ID)
    cfg = TrainConfig(method="simclr", backbone="resnet18", stem="standard", image_size=16, batch_size=64, epochs=1)
    method = build_method(cfg, None, DataInfo(len(data), int(data.images.shape[1])))
    before = _vm_hwm_mib()
    started = time.perf_counter()
    trainer = Trainer(method, data.images, cfg, torch.device("cpu"))
    fit_seconds = time.perf_counter() - started
    times = []
    for step in range(steps + 2):
        t = time.perf_counter()
        trainer._train_step(step)
        times.append(time.perf_counter() - t)
    return {
        "imports_mib": round(before, 1),
        "peak_mib": round(_vm_hwm_mib(), 1),
        "fit_seconds": round(fit_seconds, 2),
        "step_ms_median": round(1000 * float(np.median(times[2:])), 1),
        "training_shape": list(trainer.images.shape),
    }


# The parent ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
    flags = re.search(r"^Flags:\s*(.+)$", lscpu, re.MULTILINE)
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2")
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "flags": [f for f in wanted if flags and f in flags.group(1).split()],
        "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_child(job: str, archive: Path, data_dir: Path, code: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", job, "--archive", str(archive), "--data-dir", str(data_dir)],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{job} child failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 200_000])
    parser.add_argument("--code", type=Path, nargs="+", default=[ROOT], help="checkouts whose code to measure")
    parser.add_argument("--jobs", nargs="+", default=["ingest", "index"], choices=["ingest", "index", "train"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/jaga-ingest-memory"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--append", action="store_true", help="add to the runs already in --out")
    parser.add_argument("--child", choices=["ingest", "index", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--archive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.archive, args.data_dir)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS_DIR / f"ingest-memory-{datetime.date.today().isoformat()}.json"
    report: dict[str, Any] = {"machine": machine(), "loadavg_start": _loadavg(), "runs": []}
    if args.append and out.exists():
        report["runs"] = json.loads(out.read_text())["runs"]
    for n in args.sizes:
        archive = args.workdir / f"png64-{n}.zip"
        if not archive.exists():
            started = time.perf_counter()
            write_archive(archive, n)
            seconds = time.perf_counter() - started
            print(f"wrote {archive} ({archive.stat().st_size / 2**20:.0f} MiB) in {seconds:.0f} s", flush=True)
        for code in args.code:
            data_dir = args.workdir / f"data-{code.name}"
            for job in args.jobs:
                row = {"images": n, "code": str(code), "job": job, **run_child(job, archive, data_dir, code)}
                row["decoded_mib"] = round(n * 3 * SIDE * SIDE / 2**20, 1)
                print(json.dumps(row), flush=True)
                report["runs"].append(row)
                report["loadavg_end"] = _loadavg()
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2) + "\n")  # after each run: a long one may be cut short
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
