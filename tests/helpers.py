"""Helpers shared by the test folders: small image archives, and polling a job until it gets somewhere."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

# Data factories -----------------------------------------------------------------------------------------


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def class_folder_zip(
    n_per_class: int = 4, classes: tuple[str, ...] = ("cat", "dog"), size: int = 12, seed: int = 0, colour: bool = False
) -> bytes:
    """A zip of random images in class folders (``cat/0.png``)."""
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if colour else (size, size)
    files = {
        f"{c}/{i}.png": png_bytes(rng.integers(0, 256, shape, dtype=np.uint8))
        for c in classes
        for i in range(n_per_class)
    }
    return make_zip(files)


# Jobs ---------------------------------------------------------------------------------------------------


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def wait_for_job(
    client: Any,
    job_id: str,
    until: Callable[[dict], bool] = finished,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
    interval: float = 0.2,
) -> dict:
    """Poll ``GET /v1/jobs/{job_id}`` (``client``: a TestClient or an httpx.Client) until ``until(job)`` holds
    and return that job; fail with the job's last state after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    job: dict = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if until(job):
            return job
        time.sleep(interval)
    raise AssertionError(f"job {job_id} timed out in state {job.get('status')}: {job}")


def upload_dataset(client: Any, headers: dict[str, str] | None, data: bytes, name: str = "d") -> dict:
    """Upload an archive, wait for its ingest job to succeed, and return the dataset."""
    r = client.post("/v1/datasets", headers=headers, files={"file": ("d.zip", data)}, data={"name": name})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["ingest_job_id"], headers=headers, timeout=120)
    assert job["status"] == "succeeded", job
    return dict(client.get(f"/v1/datasets/{r.json()['id']}", headers=headers).json())


def submit_job(client: Any, headers: dict[str, str] | None, body: dict) -> dict:
    r = client.post("/v1/jobs", headers=headers, json=body)
    assert r.status_code == 202, r.text
    return dict(r.json())
