"""Bulk embeddings: an embed job's images/s against the online embeddings endpoint's, same model, same images,
through ``jaga serve`` (embedded default, a temporary data dir). Writes ``bench/results/embed-<date>.json`` and the
``embed`` section of docs/BENCHMARKS.md.

    flock /tmp/jaga-heavy.lock .venv/bin/python bench/embed.py            # about 2 minutes on 2 cores
    .venv/bin/python bench/embed.py --images 1024 --seconds 5 --no-doc    # a smoke run

The model is made through the API (a 96-image random dataset, a one-epoch SimCLR ResNet-18 at 32 px); the images
embedded are another dataset of ``--images`` random 28 px grayscale PNGs. Online: Python clients (httpx, threads) in
this process post the dataset's PNGs as multipart ``files``, 8 clients with one image per request and 2 clients
with 64 (the most a request may hold), for ``--seconds`` each; three rounds of online and job measurements,
interleaved, and the median round of each kind. Job: ``{"kind": "embed"}`` over the whole dataset,
batch size 256; its own ``images_per_second`` (the embedding loop: reading, the forward passes, writing the file)
and the wall time from submission to success (queueing and model loading too) as seen by a polling client.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import RESULTS_DIR, machine, machine_line, uncommitted_code, write_section
from serve import HEADERS, png, serving, wait_for

BATCH_SIZE = 256
ROUNDS = 3


def dataset_zip(images: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, data in enumerate(images):
            zf.writestr(f"{('cat', 'dog')[i % 2]}/{i}.png", data)
    return buf.getvalue()


def make_model(c: httpx.Client) -> str:
    r = c.post("/v1/datasets", files={"file": ("t.zip", dataset_zip([png(i) for i in range(96)]))}, data={"name": "t"})
    r.raise_for_status()
    wait_for(c, r.json()["ingest_job_id"])
    spec = {"kind": "pretrain", "dataset_id": r.json()["id"], "method": "simclr", "backbone": "resnet18"}
    spec.update(stem="standard", image_size=32, batch_size=32, epochs=1)
    return str(wait_for(c, c.post("/v1/jobs", json=spec).json()["id"])["result"]["model_id"])


def online(url: str, model_id: str, images: list[bytes], *, clients: int, per_request: int, seconds: float) -> dict:
    """Images/s of ``clients`` threads posting ``per_request`` images at a time, cycling through ``images``."""
    done, latencies, lock = [0], [], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=120) as c:
            i = offset
            while time.perf_counter() < stop_at:
                batch = [images[(i + k) % len(images)] for k in range(per_request)]
                files = [("files", (f"{k}.png", data)) for k, data in enumerate(batch)]
                started = time.perf_counter()
                r = c.post(f"/v1/models/{model_id}/embeddings", files=files)
                r.raise_for_status()
                with lock:
                    done[0] += per_request
                    latencies.append(time.perf_counter() - started)
                i += per_request * clients

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, [k * per_request for k in range(clients)]))
    elapsed = time.perf_counter() - started
    return {
        "images_per_s": done[0] / elapsed,
        "images": done[0],
        "clients": clients,
        "images_per_request": per_request,
        "seconds": round(elapsed, 2),
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


def job(c: httpx.Client, model_id: str, dataset_id: str) -> dict[str, Any]:
    submitted = time.perf_counter()
    spec = {"kind": "embed", "model_id": model_id, "dataset_id": dataset_id, "batch_size": BATCH_SIZE}
    r = c.post("/v1/jobs", json=spec)
    r.raise_for_status()
    done = wait_for(c, r.json()["id"])
    wall = time.perf_counter() - submitted  # includes up to a second of polling
    result = done["result"]
    return {
        "job_id": done["id"],
        "images_per_s": result["images_per_second"],
        "images": result["num_items"],
        "loop_seconds": result["seconds"],
        "wall_seconds": round(wall, 2),
        "wall_images_per_s": result["num_items"] / wall,
        "batch_size": BATCH_SIZE,
    }


def run(n: int, seconds: float) -> dict[str, Any]:
    m = machine()
    print(f"bench: {machine_line(m)}", file=sys.stderr)
    results: dict[str, Any] = {"machine": m, "machine_line": machine_line(m), "images": n, "seconds": seconds}
    images = [png(10_000 + i) for i in range(n)]
    with (
        tempfile.TemporaryDirectory(prefix="jaga-bench-embed-") as tmp,
        serving(Path(tmp)) as server,
        httpx.Client(base_url=server.url, headers=HEADERS, timeout=120) as c,
    ):
        model_id = make_model(c)
        r = c.post("/v1/datasets", files={"file": ("e.zip", dataset_zip(images))}, data={"name": "e"})
        r.raise_for_status()
        wait_for(c, r.json()["ingest_job_id"])
        dataset_id = r.json()["id"]
        online(server.url, model_id, images[:64], clients=1, per_request=64, seconds=1)  # warm-up: model loaded
        rounds: dict[str, list[dict[str, Any]]] = {"one": [], "many": [], "job": []}
        for r in range(ROUNDS):  # interleaved, so a neighbour's load on the machine falls on every kind alike
            print(f"bench: round {r + 1} of {ROUNDS}", file=sys.stderr)
            rounds["one"].append(online(server.url, model_id, images, clients=8, per_request=1, seconds=seconds))
            rounds["many"].append(online(server.url, model_id, images, clients=2, per_request=64, seconds=seconds))
            rounds["job"].append(job(c, model_id, dataset_id))
    results["rounds"] = rounds
    results["online_one_image_8_clients"] = _median(rounds["one"])
    results["online_64_images_2_clients"] = _median(rounds["many"])
    results["job"] = _median(rounds["job"])
    best_online = max(
        results["online_one_image_8_clients"]["images_per_s"], results["online_64_images_2_clients"]["images_per_s"]
    )
    results["job_over_best_online"] = results["job"]["images_per_s"] / best_online
    return results


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median images/s (its other figures with it), and every round's images/s."""
    ranked = sorted(runs, key=lambda run: run["images_per_s"])
    return {**ranked[len(ranked) // 2], "rounds_images_per_s": [round(run["images_per_s"], 1) for run in runs]}


def _rounds(m: dict[str, Any]) -> str:
    return ", ".join(f"{x:.0f}" for x in m["rounds_images_per_s"])


def _row(what: str, m: dict[str, Any]) -> str:
    return f"| {what} | {m['images_per_s']:.0f} | {_rounds(m)} | {m['p50_ms']:.1f} | {m['p99_ms']:.0f} |"


def section(results: dict[str, Any], path: Path, commit: str) -> str:
    one, many, j = (
        results["online_one_image_8_clients"],
        results["online_64_images_2_clients"],
        results["job"],
    )
    ratio = results["job_over_best_online"]
    verdict = (
        f"The job embeds {ratio:.1f}× as many images per second as the endpoint's best case here (64-image "
        "requests): it reads decoded images from the dataset's array in batches of 256, with no HTTP, no PNG "
        "decoding or fitting and no JSON, which is what the endpoint spends its time on beside the forward pass."
        if ratio > 1
        else f"The job is **not** faster than the endpoint's best case here ({ratio:.2f}×)."
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""## Bulk embeddings: an embed job against the embeddings endpoint (`bench/embed.py`)

**Protocol.** `jaga serve` (embedded default) on a temporary data directory; a 1-epoch SimCLR ResNet-18 at 32 px
made through the API; {results["images"]:,} random 28 px grayscale PNGs as a dataset. Online: Python clients in the
benchmark process post the same PNGs as multipart `files` for {results["seconds"]:g} s (8 clients with one image
per request, 2 with 64). Job: `{{"kind": "embed", "batch_size": 256}}` over the whole dataset; its result's
`images_per_second` (the embedding loop: reading the array, forward passes, writing the `.npy`) and the wall time
from submission to success seen by a client polling once a second (queueing and loading the model too). The three
measurements are interleaved over {ROUNDS} rounds so that other load on the machine falls on each alike; the
table gives the median round and every round.

**Command.** `flock /tmp/jaga-heavy.lock python bench/embed.py` (about 2 minutes). {when} at {commit},
`bench/results/{path.name}`. {results["machine_line"].removeprefix("**Machine.** ")}

| ResNet-18, 32 px, {results["images"]:,} images | images/s (median) | every round | p50 ms | p99 ms |
|---|---:|---|---:|---:|
{_row("embeddings endpoint, 1 image per request, 8 clients", one)}
{_row("embeddings endpoint, 64 images per request, 2 clients", many)}
| embed job, embedding loop (`result.images_per_second`) | {j["images_per_s"]:.0f} | {_rounds(j)} | | |
| embed job, submission to success ({j["wall_seconds"]:.1f} s) | {j["wall_images_per_s"]:.0f} | | | |

{verdict}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=8.0, help="per online measurement and round")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/BENCHMARKS.md")
    args = parser.parse_args()
    dirty = uncommitted_code()
    if dirty and not args.no_doc:
        sys.exit(f"bench: uncommitted code ({', '.join(dirty[:5])}); commit it or pass --no-doc")
    results = run(args.images, args.seconds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results["commit"] = commit
    path = RESULTS_DIR / f"embed-{datetime.now(UTC).date().isoformat()}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    if not args.no_doc:
        write_section("embed", section(results, path, commit))


if __name__ == "__main__":
    main()
