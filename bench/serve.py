"""Serving benchmark: ``jaga serve`` (embedded default, a temporary data dir) polled with wrk, and its
embeddings and predictions under concurrent one-image clients against 64-image requests and the same model's
in-process batched throughput. Writes ``bench/results/serve-<date>.json``.

    flock /tmp/jaga-heavy.lock .venv/bin/python bench/serve.py            # everything, about 4 minutes
    .venv/bin/python bench/serve.py --only polling --duration 5           # one part, shorter runs

The model is made through the API (a 96-image random dataset, a one-epoch SimCLR ResNet-18 at 32 px, and a frozen
fine-tune for a classifier), so its speed is a real model's; what it learnt does not matter here. Clients are wrk
(C, two threads) on the same machine: their CPU is taken from the server's, as a colocated load balancer's is.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
KEY = "bench-serve-bootstrap-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {KEY}"}
WRK = shutil.which("wrk") or "/usr/bin/wrk"
BOUNDARY = "jagabenchboundary7d1f"
#: Folders the servers import from after the code (``--extra-path``: e.g. a dependency not in the venv yet).
EXTRA_PATH: list[str] = []

# The machine ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model and the flags that matter for inference (lscpu), cores, torch threads and the load average."""
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
    flags = set((re.search(r"^Flags:\s*(.+)$", lscpu, re.MULTILINE) or re.search("()", "")).group(1).split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "cpu": model.group(1).strip() if model else "unknown",
        "cores": os.cpu_count(),
        "flags": sorted(f for f in wanted if f in flags),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or 'none of avx2/avx512/amx'}, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}, Python {m['python']}, "
        f"load average {' '.join(m['loadavg'])} at start"
    )


# The server ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``jaga serve`` on ``data_dir`` with ``workers`` API processes (and its one training worker)."""

    data_dir: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    code: Path = ROOT  # the checkout whose code serves (another one for a before/after comparison)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAGA_")}
        env.update(
            PYTHONPATH=os.pathsep.join([str(self.code), *EXTRA_PATH]),
            JAGA_DATA_DIR=str(self.data_dir),
            JAGA_BOOTSTRAP_KEY=KEY,
            JAGA_RATE_LIMIT_PER_MINUTE="0",  # the benchmark's one key would be limited, not the service measured
        )
        env.update(self.env)
        log = open(self.data_dir / f"serve-{self.port}.log", "ab")  # noqa: SIM115 - written until it stops
        command = [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port)]
        if self.workers != 1:  # an older checkout has no --workers
            command += ["--workers", str(self.workers)]
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.code)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"jaga serve did not become ready; see {log.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def serving(data_dir: Path, workers: int = 1, code: Path = ROOT, **env: str) -> Iterator[Server]:
    server = Server(data_dir, workers, env, code).start()
    try:
        yield server
    finally:
        server.stop()


# What the measurements need, made through the API ------------------------------------------------------------


def png(seed: int, size: int = 28) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def dataset_zip(per_class: int = 48) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c, name in enumerate(("cat", "dog")):
            for i in range(per_class):
                zf.writestr(f"{name}/{i}.png", png(1000 * c + i))
    return buf.getvalue()


def wait_for(c: httpx.Client, job_id: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


@dataclass
class Fixture:
    """What the server holds for the measurements: a finished job to poll, an encoder and a classifier."""

    job_id: str
    model_id: str
    classifier_id: str | None


def make_fixture(url: str) -> Fixture:
    with httpx.Client(base_url=url, headers=HEADERS, timeout=120) as c:
        r = c.post("/v1/datasets", files={"file": ("d.zip", dataset_zip())}, data={"name": "bench-serve"})
        r.raise_for_status()
        ds = r.json()
        wait_for(c, ds["ingest_job_id"])
        spec = {"kind": "pretrain", "dataset_id": ds["id"], "method": "simclr", "backbone": "resnet18"}
        spec.update(stem="standard", image_size=32, batch_size=32, epochs=1)
        job = wait_for(c, c.post("/v1/jobs", json=spec).json()["id"])
        model_id = job["result"]["model_id"]
        evaluation = {"kind": "evaluate", "dataset_id": ds["id"], "protocol": "finetune", "model_id": model_id}
        evaluation.update(strategy="frozen", epochs=1, batch_size=16)
        try:
            classifier_id = wait_for(c, c.post("/v1/jobs", json=evaluation).json()["id"])["result"]["model_id"]
        except RuntimeError as exc:  # the predictions figure is then left out, saying why
            print(f"bench: no classifier ({exc}); predictions are not measured", file=sys.stderr)
            classifier_id = None
        return Fixture(job["id"], model_id, classifier_id)


# wrk ------------------------------------------------------------------------------------------------------------


def wrk(url: str, *, connections: int, seconds: float, headers: dict[str, str], script: str | None = None) -> dict:
    """Requests/s, latency percentiles (ms) and non-2xx/3xx answers of ``wrk --latency`` against ``url``."""
    command = [WRK, f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "30s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script or "")
    if script:
        command += ["-s", lua.name]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    os.unlink(lua.name)

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    percentiles = {f"p{p}_ms": ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.MULTILINE)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.+)$", out, re.MULTILINE)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        **percentiles,
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "bad_answers": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else None,
        "connections": connections,
        "seconds": seconds,
    }


def multipart_script(images: list[bytes], path: str) -> str:
    """A wrk script POSTing ``images`` as repeated multipart ``files`` to ``path``."""
    parts = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    )
    body = parts + f"--{BOUNDARY}--\r\n".encode()
    escaped = "".join(f"\\{b}" for b in body)  # Lua decimal escapes: binary-safe
    return (
        f'wrk.method = "POST"\nwrk.path = "{path}"\nwrk.body = "{escaped}"\n'
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"\n'
    )


# Measurements ---------------------------------------------------------------------------------------------------


def measure_polling(server: Server, fixture: Fixture, seconds: float) -> dict[str, Any]:
    """``GET /v1/jobs/{id}`` with 16 connections: full answers, and 304s to ``If-None-Match``."""
    url = f"{server.url}/v1/jobs/{fixture.job_id}"
    etag = httpx.get(url, headers=HEADERS).headers["etag"]
    return {
        "full": wrk(url, connections=16, seconds=seconds, headers=HEADERS),
        "if_none_match": wrk(url, connections=16, seconds=seconds, headers={**HEADERS, "If-None-Match": etag}),
    }


def measure_images(server: Server, model_id: str, route: str, seconds: float) -> dict[str, Any]:
    """Images/s of ``route`` (embeddings or predictions): 8 connections sending one image each, and 2 sending
    64 images per request."""
    path = f"/v1/models/{model_id}/{route}"
    single = wrk(server.url, connections=8, seconds=seconds, headers=HEADERS, script=multipart_script([png(1)], path))
    batch = wrk(
        server.url,
        connections=2,
        seconds=seconds,
        headers=HEADERS,
        script=multipart_script([png(i) for i in range(64)], path),
    )
    single["images_per_s"] = single["requests_per_s"]
    batch["images_per_s"] = 64 * batch["requests_per_s"]
    return {"one_image_8_clients": single, "64_images_2_clients": batch}


def measure_in_process(data_dir: Path, model_id: str, seconds: float, batch: int = 64) -> dict[str, Any]:
    """The same model's throughput in this process, batches of ``batch`` fitted images through ``Embedder``
    (the ceiling that serving approaches; no HTTP, no decoding)."""
    import torch

    from ssl_core.encoder import Embedder, load_encoder

    device = torch.device("cpu")
    embedder = Embedder(*load_encoder(data_dir / "artifacts" / "models" / model_id / "model.pt", device), device)
    info = embedder.info
    images = np.random.default_rng(0).integers(0, 256, (batch, info.channels, *info.stored_size), dtype=np.uint8)
    with torch.inference_mode():
        embedder.embed_arrays(images)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            embedder.embed_arrays(images)
            done += batch
    elapsed = time.perf_counter() - started
    return {"images_per_s": done / elapsed, "batch": batch, "seconds": round(elapsed, 2)}


def measure_search(server: Server, fixture: Fixture, seconds: float) -> dict[str, Any] | None:
    """Hook for the search index's figure (``POST /v1/indexes/{id}/search``): build an index job on the fixture's
    dataset and model, and measure it with ``wrk`` like the others. None: not measured here yet."""
    return None


# The run ----------------------------------------------------------------------------------------------------------

PARTS = ("polling", "embeddings", "predictions", "search")


def run(parts: tuple[str, ...], seconds: float, keep: bool, baseline: Path | None = None) -> dict[str, Any]:
    m = machine()
    print(f"bench: {machine_line(m)}", file=sys.stderr)
    results: dict[str, Any] = {"machine": m, "machine_line": machine_line(m), "parts": list(parts)}
    data_dir = Path(tempfile.mkdtemp(prefix="jaga-bench-serve-"))
    try:
        with serving(data_dir) as server:
            started = time.monotonic()
            fixture = make_fixture(server.url)
            results["fixture"] = {**fixture.__dict__, "seconds": round(time.monotonic() - started, 1)}
            print(f"bench: fixture ready {results['fixture']}", file=sys.stderr)
            if "polling" in parts:
                results["polling"] = {"workers_1": measure_polling(server, fixture, seconds)}
            if "embeddings" in parts:
                results["embeddings"] = measure_images(server, fixture.model_id, "embeddings", seconds)
                results["embeddings"]["in_process_batched"] = measure_in_process(data_dir, fixture.model_id, seconds)
                # The most that 8 one-image clients can put in one forward pass: the model's own bound for them.
                results["embeddings"]["in_process_batch_8"] = measure_in_process(
                    data_dir, fixture.model_id, seconds, batch=8
                )
            if "predictions" in parts:
                if fixture.classifier_id is None:
                    results["predictions"] = {"skipped": "no classifier could be made"}
                else:
                    results["predictions"] = measure_images(server, fixture.classifier_id, "predictions", seconds)
            if "search" in parts:
                results["search"] = measure_search(server, fixture, seconds) or {"skipped": "not measured yet"}
        if "polling" in parts:
            with serving(data_dir, workers=2) as server:
                results["polling"]["workers_2"] = measure_polling(server, fixture, seconds)
        if baseline is not None:  # the same measurements of another checkout's code, on the same data
            results["baseline"] = before = {"code": str(baseline), "commit": commit_of(baseline)}
            with serving(data_dir, code=baseline) as server:
                if "polling" in parts:
                    before["polling"] = {"workers_1": measure_polling(server, fixture, seconds)}
                if "embeddings" in parts:
                    before["embeddings"] = measure_images(server, fixture.model_id, "embeddings", seconds)
                if "predictions" in parts and fixture.classifier_id is not None:
                    before["predictions"] = measure_images(server, fixture.classifier_id, "predictions", seconds)
    finally:
        if keep:
            print(f"bench: data kept in {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["commit"] = commit_of(ROOT)
    results["extra_path"] = EXTRA_PATH
    extra = any((Path(p) / "httptools").exists() for p in EXTRA_PATH)
    results["http_parser"] = "httptools" if extra or importlib.util.find_spec("httptools") else "h11"
    results["goals"] = goals(results)
    return results


def commit_of(checkout: Path) -> str:
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain"], capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def goals(r: dict[str, Any]) -> dict[str, Any]:
    """Each goal of issue #20's serving part, with the figure that meets it or not."""
    out: dict[str, Any] = {}
    if "polling" in r:
        best = max(r["polling"].values(), key=lambda p: p["full"]["requests_per_s"])["full"]
        out["polling >= 2000 req/s, p99 < 20 ms (best of workers 1, 2; full answers)"] = {
            "requests_per_s": best["requests_per_s"],
            "p99_ms": best["p99_ms"],
            "met": best["requests_per_s"] >= 2000 and best["p99_ms"] < 20,
        }
    if "embeddings" in r:
        single = r["embeddings"]["one_image_8_clients"]["images_per_s"]
        ceiling = r["embeddings"]["in_process_batched"]["images_per_s"]
        out["one-image requests, 8 clients >= 50 % of in-process batched"] = {
            "images_per_s": single,
            "in_process_images_per_s": ceiling,
            "fraction": round(single / ceiling, 3),
            "met": single >= 0.5 * ceiling,
        }
        if "in_process_batch_8" in r["embeddings"]:  # what the model alone allows 8 one-image clients
            batch_8 = r["embeddings"]["in_process_batch_8"]["images_per_s"]
            out["one-image requests, 8 clients >= 50 % of in-process batched"]["model_bound_fraction"] = round(
                batch_8 / ceiling, 3
            )
    return out


def markdown(r: dict[str, Any]) -> str:
    """The benchmark-doc tables of a result: polling, images, goals."""
    lines = ["| Polling `GET /v1/jobs/{id}`, 16 connections | requests/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    runs = [(f"this branch, {k.replace('_', ' ')}", v) for k, v in r.get("polling", {}).items()]
    runs += [("before (baseline), workers 1", v) for k, v in r.get("baseline", {}).get("polling", {}).items()]
    for name, p in runs:
        for kind, m in p.items():
            lines.append(
                f"| {name}, {kind.replace('_', '-')} | {m['requests_per_s']:.0f} | {m['p50_ms']} | {m['p99_ms']} |"
            )
    lines += ["", "| Images | images/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    for who, source in (("this branch", r), ("before", r.get("baseline", {}))):
        for route in ("embeddings", "predictions"):
            for kind, m in source.get(route, {}).items():
                if isinstance(m, dict) and "images_per_s" in m:
                    p50, p99 = m.get("p50_ms", "-"), m.get("p99_ms", "-")
                    lines.append(
                        f"| {who}: {route}, {kind.replace('_', ' ')} | {m['images_per_s']:.0f} | {p50} | {p99} |"
                    )
    lines += ["", "| Goal | Figure | Met |", "|---|---|---|"]
    for goal, g in r.get("goals", {}).items():
        figure = ", ".join(f"{k} {v}" for k, v in g.items() if k != "met")
        lines.append(f"| {goal} | {figure} | {'yes' if g['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=PARTS, action="append", help="measure only this part (repeatable)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/serve-<date>.json)")
    parser.add_argument("--baseline", type=Path, help="also measure this checkout's code (e.g. the main branch)")
    parser.add_argument("--extra-path", action="append", default=[], help="a folder the servers import from too")
    parser.add_argument("--markdown", type=Path, help="print the tables of this result file and stop")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and the server logs")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    EXTRA_PATH.extend(args.extra_path)
    if not Path(WRK).exists():
        sys.exit(f"bench: wrk not found ({WRK}); apt-get install wrk")
    results = run(tuple(args.only or PARTS), args.duration, args.keep, args.baseline)
    results["command"] = " ".join(["python", "bench/serve.py", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or RESULTS_DIR / f"serve-{datetime.now(UTC):%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["goals"], indent=2))
    print(f"bench: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
