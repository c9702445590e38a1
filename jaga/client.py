"""Jaga's Python SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

    from jaga.client import Client
    jaga = Client()                                   # JAGA_URL / JAGA_API_KEY, or what `jaga login` saved
    ds = jaga.datasets.upload("photos/")              # a folder of class folders, zipped while it uploads
    job = jaga.jobs.pretrain(dataset_id=ds.id, method="byol", epochs=50)
    job.wait(progress=True)                           # a live bar: step, loss, ETA, online kNN
    vectors = jaga.models.embed(job.result["model_id"], ["a.png", "b.png"])   # (2, D) float32

Responses are the API's own pydantic models (``api.schemas``). Requests are retried with backoff on connection
errors, 429 and 503 (honouring ``Retry-After``); every submission carries an ``Idempotency-Key``, so a retried
submission never makes a second job. Every refusal raises ``JagaError`` with the problem's fields.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from api.schemas import (
    DatasetOut,
    DeliveryOut,
    EventOut,
    IndexOut,
    JobOut,
    ModelOut,
    PredictionsOut,
    SearchOut,
    UsageOut,
    WebhookCreatedOut,
    WebhookOut,
)
from jaga.config import resolve
from jaga.errors import JagaError, JobFailedError
from jaga.inputs import ARCHIVE_SUFFIXES, ImageLike, IterReader, as_list, image_bytes, zip_chunks
from jaga.progress import ProgressBar

__all__ = ["AsyncClient", "AsyncJob", "Client", "JagaError", "Job", "JobFailedError"]

M = TypeVar("M", bound=BaseModel)
TERMINAL = ("succeeded", "failed", "cancelled")
#: Images per embedding or prediction request (the service's default ``max_images_per_request`` is 64).
IMAGES_PER_REQUEST = 64
#: Methods a transport error may repeat: the service did nothing, or doing it twice changes nothing.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 503})


def _id(value: str | BaseModel | Job | AsyncJob) -> str:
    return value if isinstance(value, str) else str(value.id)  # type: ignore[union-attr]


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (a number of seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class RetryPolicy:
    """Exponential backoff, each wait drawn from ±50 % of its nominal value and capped at ``max_wait``; a
    ``Retry-After`` is honoured up to ``max_wait``."""

    def __init__(self, retries: int = 4, backoff: float = 0.5, max_wait: float = 60.0) -> None:
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        asked = retry_after(response) if response is not None else None
        if asked is not None:
            return min(asked, self.max_wait)
        return min(self.max_wait, self.backoff * 2**attempt * random.uniform(0.5, 1.5))

    @staticmethod
    def may_resend(method: str, headers: dict[str, str], error: httpx.TransportError) -> bool:
        """A connection never made is always safe to retry; a request that may have arrived only when it is
        idempotent by method or by its ``Idempotency-Key``."""
        if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
            return True
        return method in IDEMPOTENT or "Idempotency-Key" in headers

    def after_error(
        self, attempt: int, method: str, headers: dict[str, str], error: httpx.TransportError, url: str
    ) -> float:
        """Seconds to wait before resending after ``error``; ``JagaError`` when it may not be resent."""
        if attempt >= self.retries or not self.may_resend(method, headers, error):
            raise JagaError(f"cannot reach {url}: {error!r}", code="unreachable") from error
        return self.delay(attempt)

    def after_response(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before resending after a 429 or 503 while retries are left; else None."""
        if response.status_code in RETRY_STATUSES and attempt < self.retries:
            return self.delay(attempt, response)
        return None


def _parse(model: type[M], response: httpx.Response) -> M:
    return model.model_validate(response.json())


def _job_body(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, **{k: v for k, v in spec.items() if v is not None}}


def _image_parts(field: str, images: list[ImageLike]) -> list[tuple[str, tuple[str, bytes]]]:
    return [(field, image_bytes(image)) for image in images]


def _embeddings(body: dict[str, Any], n: int) -> np.ndarray:
    out = np.empty((n, int(body["dim"])), dtype=np.float32)
    for row in body["data"]:
        out[row["index"]] = row["embedding"]
    return out


def _search_request(
    image: ImageLike | None, vector: Iterable[float] | None, item: int | None, k: int
) -> dict[str, Any]:
    given = [name for name, value in (("image", image), ("vector", vector), ("item", item)) if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of image, vector or item")
    if image is not None:
        return {"files": [("image", image_bytes(image))], "data": {"k": str(k)}}
    if vector is not None:
        return {"json": {"vector": [float(v) for v in vector], "k": k}}
    return {"json": {"item": item, "k": k}}


def _download_target(path: str | os.PathLike[str] | None, stem: str, suffix: str) -> Path:
    """``path``, or ``<stem><suffix>`` in it when it is a folder, or in the working directory when it is None."""
    target = Path(path) if path is not None else Path(f"{stem}{suffix}")
    return target / f"{stem}{suffix}" if target.is_dir() else target


#: The file suffix of each download format.
SUFFIXES = {"state_dict": ".pt", "safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}


class _Upload:
    """A dataset upload's request: a new reader per attempt (a half-sent stream cannot be resent), each closed by
    ``close``. A folder is zipped while it is sent."""

    def __init__(self, path: str | os.PathLike[str], name: str | None) -> None:
        self.source = Path(path)
        if self.source.is_dir():
            self.filename, self.ctype = f"{self.source.resolve().name or 'dataset'}.zip", "application/zip"
        elif not self.source.is_file():
            raise FileNotFoundError(f"no such file or folder: {self.source}")
        elif not self.source.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"upload a folder of images or one of {', '.join(ARCHIVE_SUFFIXES)}, not {self.source.name}"
            )
        else:
            self.filename, self.ctype = self.source.name, "application/octet-stream"
        self.data = {"name": name or self.source.resolve().name}
        self._readers: list[Any] = []

    def body(self) -> dict[str, Any]:
        reader = IterReader(zip_chunks(self.source)) if self.source.is_dir() else self.source.open("rb")
        self._readers.append(reader)
        return {"files": {"file": (self.filename, reader, self.ctype)}}

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


# --------------------------------------------------------------------------------------------------- blocking


class Client:
    """The blocking client. ``base_url`` and ``api_key`` default to ``JAGA_URL`` / ``JAGA_API_KEY``, then to what
    ``jaga login`` saved. ``transport`` is httpx's (tests may pass one)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        conn = resolve(base_url, api_key)
        self.base_url = conn.url
        headers = {"User-Agent": "jaga-python"}
        if conn.api_key:
            headers["Authorization"] = f"Bearer {conn.api_key}"
        self.retry = RetryPolicy(retries, backoff, max_wait)
        self._http = httpx.Client(base_url=conn.url, headers=headers, timeout=timeout, transport=transport)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.indexes = Indexes(self)
        self.webhooks = Webhooks(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def usage(self) -> UsageOut:
        """The tenant's quotas, its usage of them, and this key's rate limit."""
        return _parse(UsageOut, self.request("GET", "/v1/usage"))

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], dict[str, Any]] | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send with retries; ``body`` rebuilds per attempt what cannot be sent twice (a file being read).
        Raises ``JagaError`` for an error status; a ``stream`` response must be closed."""
        headers = headers or {}
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, headers=headers, **kwargs, **(body() if body else {}))
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                time.sleep(self.retry.after_error(attempt, method, headers, error, self.base_url))
                attempt += 1
                continue
            if (wait := self.retry.after_response(attempt, response)) is not None:
                response.close()
                time.sleep(wait)
                attempt += 1
                continue
            if response.is_error:
                if stream:
                    response.read()
                    response.close()
                raise JagaError.from_response(response)
            return response

    def save(self, path: str, target: Path, params: dict[str, Any] | None = None) -> Path:
        """Stream a download to ``target`` through a temporary file beside it: never half a file."""
        response = self.request("GET", path, params=params, stream=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            response.close()
        return target

    def lines(self, path: str) -> Iterator[str]:
        """The lines of a streamed text answer (JSON Lines), read as they arrive."""
        response = self.request("GET", path, stream=True)
        try:
            yield from (line for line in response.iter_lines() if line)
        finally:
            response.close()

    def pages(self, path: str, model: type[M], params: dict[str, Any]) -> Iterator[M]:
        """Every item of a cursor-paginated list, fetching pages as they are needed."""
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self.request("GET", path, params=params).json()
            for item in page["data"]:
                yield model.model_validate(item)
            if not page.get("has_more"):
                return
            params["after"] = page["next_after"]


class Datasets:
    def __init__(self, client: Client) -> None:
        self._c = client

    def upload(
        self, path: str | os.PathLike[str], *, name: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> DatasetOut:
        """Upload a folder (class folders become labels; zipped while it is sent) or an archive (.zip, .tar,
        .tar.gz, .npz); with ``wait``, return once ingestion ended and raise ``JagaError`` if it failed."""
        upload = _Upload(path, name)
        try:
            dataset = _parse(DatasetOut, self._c.request("POST", "/v1/datasets", data=upload.data, body=upload.body))
        finally:
            upload.close()
        return self.wait(dataset.id, timeout=timeout) if wait else dataset

    def get(self, dataset: str | DatasetOut) -> DatasetOut:
        return _parse(DatasetOut, self._c.request("GET", f"/v1/datasets/{_id(dataset)}"))

    def list(self) -> Iterator[DatasetOut]:
        return self._c.pages("/v1/datasets", DatasetOut, {})

    def delete(self, dataset: str | DatasetOut) -> None:
        self._c.request("DELETE", f"/v1/datasets/{_id(dataset)}")

    def wait(self, dataset: str | DatasetOut, *, timeout: float | None = None, poll: float = 1.0) -> DatasetOut:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (current := self.get(dataset)).status == "ingesting":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset {current.id} still ingesting after {timeout} s")
            time.sleep(poll)
        if current.status == "failed":
            error = current.error or {}
            raise JagaError(
                f"dataset {current.id} failed: {error.get('message', '')}", code=str(error.get("code", "failed"))
            )
        return current


class Job:
    """A submitted job: its latest state in ``data`` (a ``JobOut``; its fields read as attributes)."""

    def __init__(self, client: Client, data: JobOut) -> None:
        self._c = client
        self.data = data
        self._etag: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["data"], name)

    def __repr__(self) -> str:
        return f"Job({self.data.id!r}, kind={self.data.kind!r}, status={self.data.status!r})"

    @property
    def done(self) -> bool:
        return self.data.status in TERMINAL

    def refresh(self) -> Job:
        """Fetch the job again; an unchanged job answers 304 to its ETag and costs no body."""
        self._poll()
        return self

    def _poll(self) -> bool:
        """Refresh; True when the job changed."""
        headers = {"If-None-Match": self._etag} if self._etag else {}
        response = self._c.request("GET", f"/v1/jobs/{self.data.id}", headers=headers)
        if response.status_code == 304:
            return False
        self.data = _parse(JobOut, response)
        self._etag = response.headers.get("ETag")
        return True

    def events(self, after: int = 0) -> Iterator[EventOut]:
        """State changes, messages and metrics, oldest first, from event id ``after``."""
        while True:
            page = self._c.request("GET", f"/v1/jobs/{self.data.id}/events", params={"after": after}).json()
            for event in page["data"]:
                yield EventOut.model_validate(event)
            if not page.get("has_more"):
                return
            after = page["next_after"]

    def metrics(self) -> list[dict[str, Any]]:
        """The job's metrics events (``GET /v1/jobs/{id}/metrics``, JSON Lines): one per epoch for training jobs
        and its representation checks, with ``event_id`` and ``created_at``, oldest first."""
        return [json.loads(line) for line in self._c.lines(f"/v1/jobs/{self.data.id}/metrics")]

    def cancel(self) -> Job:
        self.data = _parse(JobOut, self._c.request("POST", f"/v1/jobs/{self.data.id}/cancel"))
        return self

    def download_embeddings(self, path: str | os.PathLike[str] | None = None, *, format: str = "npy") -> Path:
        """A succeeded embed job's embeddings: ``npy`` (a structured array: item, label, filename, embedding;
        ``np.load(path, allow_pickle=False)``) or ``parquet``, saved to ``path`` (a file or a folder)."""
        target = _download_target(path, self.data.id, f".{format}")
        return self._c.save(f"/v1/jobs/{self.data.id}/embeddings", target, params={"format": format})

    def delete_embeddings(self) -> None:
        """Delete a succeeded embed job's result files (the job stays)."""
        self._c.request("DELETE", f"/v1/jobs/{self.data.id}/embeddings")

    def download_tensorboard(self, path: str | os.PathLike[str] | None = None) -> Path:
        """The TensorBoard event files of a job run with ``integrations=["tensorboard"]``, as a .tar.gz."""
        target = _download_target(path, self.data.id, ".tensorboard.tar.gz")
        return self._c.save(f"/v1/jobs/{self.data.id}/tensorboard", target)

    def wait(
        self,
        *,
        progress: bool = False,
        timeout: float | None = None,
        poll: float = 1.0,
        check: bool = True,
        file: TextIO | None = None,
    ) -> Job:
        """Block until the job ends. ``progress`` draws a live bar (step, loss, ETA, the latest epoch's online
        kNN) on ``file`` (stderr). With ``check``, a failed or cancelled job raises ``JobFailedError``."""
        bar = ProgressBar(file or sys.stderr) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        after, latest = 0, {}  # the latest value of each metric: epochs and representation checks report apart
        first = True
        while True:
            if (self._poll() or first) and bar is not None:
                for event in self.events(after):
                    after = event.id
                    latest.update(event.data if event.type == "metrics" else {})
                (bar.close if self.done else bar.update)(self.data, latest)
            first = False
            if self.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.data.id} still {self.data.status} after {timeout} s")
            time.sleep(poll)
        if check and self.data.status != "succeeded":
            raise JobFailedError(self.data)
        return self


class Jobs:
    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(self, kind: str, *, idempotency_key: str | None = None, **spec: Any) -> Job:
        """Submit ``{"kind": kind, **spec}`` (None values left out). A generated ``Idempotency-Key`` makes a
        retried request return the job the first one made."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        response = self._c.request("POST", "/v1/jobs", headers=headers, json=_job_body(kind, spec))
        return Job(self._c, _parse(JobOut, response))

    def pretrain(self, *, dataset_id: str, **spec: Any) -> Job:
        return self.submit("pretrain", dataset_id=dataset_id, **spec)

    def evaluate(self, *, dataset_id: str, **spec: Any) -> Job:
        return self.submit("evaluate", dataset_id=dataset_id, **spec)

    def index(self, *, dataset_id: str, model_id: str, **spec: Any) -> Job:
        return self.submit("index", dataset_id=dataset_id, model_id=model_id, **spec)

    def distill(self, *, teacher_model_id: str, dataset_id: str, **spec: Any) -> Job:
        return self.submit("distill", teacher_model_id=teacher_model_id, dataset_id=dataset_id, **spec)

    def embed(self, *, model_id: str, dataset_id: str, **spec: Any) -> Job:
        """Embeddings of every image of a dataset, in bulk (``job.download_embeddings`` once it succeeded)."""
        return self.submit("embed", model_id=model_id, dataset_id=dataset_id, **spec)

    def get(self, job: str | Job) -> Job:
        return Job(self._c, _parse(JobOut, self._c.request("GET", f"/v1/jobs/{_id(job)}")))

    def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        dataset_id: str | None = None,
        model_id: str | None = None,
    ) -> Iterator[Job]:
        """Newest first; ``model_id`` keeps the jobs that read that model."""
        params = {"status": status, "kind": kind, "dataset_id": dataset_id, "model_id": model_id}
        for data in self._c.pages("/v1/jobs", JobOut, params):
            yield Job(self._c, data)


class Models:
    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, model: str | ModelOut) -> ModelOut:
        return _parse(ModelOut, self._c.request("GET", f"/v1/models/{_id(model)}"))

    def list(self, *, type: str | None = None) -> Iterator[ModelOut]:
        return self._c.pages("/v1/models", ModelOut, {"type": type})

    def delete(self, model: str | ModelOut) -> None:
        """Delete a model and its files (refused while an active job uses it); its indexes stay, searchable by
        vector or item."""
        self._c.request("DELETE", f"/v1/models/{_id(model)}")

    def embed(self, model: str | ModelOut, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """L2-normalised embeddings (N, D) float32 of paths, bytes, PIL images or arrays, in their order."""
        batch, parts = as_list(images), []
        for start in range(0, len(batch), IMAGES_PER_REQUEST):
            chunk = batch[start : start + IMAGES_PER_REQUEST]
            body = self._c.request(
                "POST", f"/v1/models/{_id(model)}/embeddings", files=_image_parts("files", chunk)
            ).json()
            parts.append(_embeddings(body, len(chunk)))
        return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)

    def predict(
        self, model: str | ModelOut, images: ImageLike | Iterable[ImageLike], *, top_k: int | None = None
    ) -> PredictionsOut:
        """A classifier's most probable classes per image."""
        params = {"top_k": top_k} if top_k is not None else {}
        files = _image_parts("files", as_list(images))
        response = self._c.request("POST", f"/v1/models/{_id(model)}/predictions", params=params, files=files)
        return _parse(PredictionsOut, response)

    def download(
        self,
        model: str | ModelOut,
        path: str | os.PathLike[str] | None = None,
        *,
        format: str = "state_dict",
        target: str | None = None,
    ) -> Path:
        """Save the model in ``format`` (state_dict, safetensors, torchscript, onnx) to ``path`` (a file, or a
        folder to put ``<model id><suffix>`` in); written to a temporary file first, so never half a file.
        ``target`` (torchscript, onnx): ``embedding`` or, for a classifier, ``classifier``."""
        model_id = _id(model)
        where = _download_target(path, model_id, SUFFIXES.get(format, f".{format}"))
        params = {"format": format, **({"target": target} if target else {})}
        return self._c.save(f"/v1/models/{model_id}/download", where, params=params)


class Webhooks:
    """Endpoints for job events (admin keys). Check a delivery's signature with ``jaga.verify_webhook``."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def create(self, url: str, events: Iterable[str], *, description: str = "") -> WebhookCreatedOut:
        """Register ``url`` for ``events``; the result's ``secret`` is shown this once."""
        body = {"url": url, "events": list(events), "description": description}
        return _parse(WebhookCreatedOut, self._c.request("POST", "/v1/webhooks", json=body))

    def get(self, webhook: str | WebhookOut) -> WebhookOut:
        return _parse(WebhookOut, self._c.request("GET", f"/v1/webhooks/{_id(webhook)}"))

    def list(self) -> Iterator[WebhookOut]:
        return self._c.pages("/v1/webhooks", WebhookOut, {})

    def delete(self, webhook: str | WebhookOut) -> None:
        self._c.request("DELETE", f"/v1/webhooks/{_id(webhook)}")

    def deliveries(self, webhook: str | WebhookOut, *, status: str | None = None) -> Iterator[DeliveryOut]:
        """Its deliveries with every attempt and the last answer, newest first."""
        return self._c.pages(f"/v1/webhooks/{_id(webhook)}/deliveries", DeliveryOut, {"status": status})

    def test(self, webhook: str | WebhookOut) -> DeliveryOut:
        """Queue a ``webhook.test`` delivery to the endpoint."""
        return _parse(DeliveryOut, self._c.request("POST", f"/v1/webhooks/{_id(webhook)}/test"))


class Indexes:
    def __init__(self, client: Client) -> None:
        self._c = client

    def get(self, index: str | IndexOut) -> IndexOut:
        return _parse(IndexOut, self._c.request("GET", f"/v1/indexes/{_id(index)}"))

    def list(self) -> Iterator[IndexOut]:
        return self._c.pages("/v1/indexes", IndexOut, {})

    def delete(self, index: str | IndexOut) -> None:
        self._c.request("DELETE", f"/v1/indexes/{_id(index)}")

    def search(
        self,
        index: str | IndexOut,
        *,
        image: ImageLike | None = None,
        vector: Iterable[float] | None = None,
        item: int | None = None,
        k: int = 5,
    ) -> SearchOut:
        """The ``k`` nearest items to one image, vector or stored item, nearest first."""
        kwargs = _search_request(image, vector, item, k)
        return _parse(SearchOut, self._c.request("POST", f"/v1/indexes/{_id(index)}/search", **kwargs))


# --------------------------------------------------------------------------------------------------- asyncio


class AsyncClient:
    """The asyncio client: the same resources as ``Client``, each call awaited (``async with AsyncClient() as
    jaga``)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        conn = resolve(base_url, api_key)
        self.base_url = conn.url
        headers = {"User-Agent": "jaga-python"}
        if conn.api_key:
            headers["Authorization"] = f"Bearer {conn.api_key}"
        self.retry = RetryPolicy(retries, backoff, max_wait)
        self._http = httpx.AsyncClient(base_url=conn.url, headers=headers, timeout=timeout, transport=transport)
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.models = AsyncModels(self)
        self.indexes = AsyncIndexes(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """As ``Client.request`` (no streaming)."""
        headers = headers or {}
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, headers=headers, **kwargs, **(body() if body else {}))
                response = await self._http.send(request)
            except httpx.TransportError as error:
                await asyncio.sleep(self.retry.after_error(attempt, method, headers, error, self.base_url))
                attempt += 1
                continue
            if (wait := self.retry.after_response(attempt, response)) is not None:
                await response.aclose()
                await asyncio.sleep(wait)
                attempt += 1
                continue
            if response.is_error:
                raise JagaError.from_response(response)
            return response

    async def pages(self, path: str, model: type[M], params: dict[str, Any]) -> AsyncIterator[M]:
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = (await self.request("GET", path, params=params)).json()
            for item in page["data"]:
                yield model.model_validate(item)
            if not page.get("has_more"):
                return
            params["after"] = page["next_after"]


class AsyncDatasets:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def upload(
        self, path: str | os.PathLike[str], *, name: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> DatasetOut:
        """As ``Client.datasets.upload``; the file is read in a worker thread's chunks by httpx."""
        upload = _Upload(path, name)
        try:
            request = self._c.request("POST", "/v1/datasets", data=upload.data, body=upload.body)
            dataset = _parse(DatasetOut, await request)
        finally:
            upload.close()
        return await self.wait(dataset.id, timeout=timeout) if wait else dataset

    async def get(self, dataset: str | DatasetOut) -> DatasetOut:
        return _parse(DatasetOut, await self._c.request("GET", f"/v1/datasets/{_id(dataset)}"))

    def list(self) -> AsyncIterator[DatasetOut]:
        return self._c.pages("/v1/datasets", DatasetOut, {})

    async def wait(self, dataset: str | DatasetOut, *, timeout: float | None = None, poll: float = 1.0) -> DatasetOut:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (current := await self.get(dataset)).status == "ingesting":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset {current.id} still ingesting after {timeout} s")
            await asyncio.sleep(poll)
        if current.status == "failed":
            error = current.error or {}
            raise JagaError(
                f"dataset {current.id} failed: {error.get('message', '')}", code=str(error.get("code", "failed"))
            )
        return current


class AsyncJob:
    """As ``Job``, with awaited methods."""

    def __init__(self, client: AsyncClient, data: JobOut) -> None:
        self._c = client
        self.data = data
        self._etag: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["data"], name)

    def __repr__(self) -> str:
        return f"AsyncJob({self.data.id!r}, kind={self.data.kind!r}, status={self.data.status!r})"

    @property
    def done(self) -> bool:
        return self.data.status in TERMINAL

    async def refresh(self) -> AsyncJob:
        await self._poll()
        return self

    async def _poll(self) -> bool:
        headers = {"If-None-Match": self._etag} if self._etag else {}
        response = await self._c.request("GET", f"/v1/jobs/{self.data.id}", headers=headers)
        if response.status_code == 304:
            return False
        self.data = _parse(JobOut, response)
        self._etag = response.headers.get("ETag")
        return True

    async def events(self, after: int = 0) -> AsyncIterator[EventOut]:
        while True:
            response = await self._c.request("GET", f"/v1/jobs/{self.data.id}/events", params={"after": after})
            page = response.json()
            for event in page["data"]:
                yield EventOut.model_validate(event)
            if not page.get("has_more"):
                return
            after = page["next_after"]

    async def cancel(self) -> AsyncJob:
        self.data = _parse(JobOut, await self._c.request("POST", f"/v1/jobs/{self.data.id}/cancel"))
        return self

    async def wait(
        self,
        *,
        progress: bool = False,
        timeout: float | None = None,
        poll: float = 1.0,
        check: bool = True,
        file: TextIO | None = None,
    ) -> AsyncJob:
        bar = ProgressBar(file or sys.stderr) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        after, latest = 0, {}
        first = True
        while True:
            if (await self._poll() or first) and bar is not None:
                async for event in self.events(after):
                    after = event.id
                    latest.update(event.data if event.type == "metrics" else {})
                (bar.close if self.done else bar.update)(self.data, latest)
            first = False
            if self.done:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.data.id} still {self.data.status} after {timeout} s")
            await asyncio.sleep(poll)
        if check and self.data.status != "succeeded":
            raise JobFailedError(self.data)
        return self


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def submit(self, kind: str, *, idempotency_key: str | None = None, **spec: Any) -> AsyncJob:
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        response = await self._c.request("POST", "/v1/jobs", headers=headers, json=_job_body(kind, spec))
        return AsyncJob(self._c, _parse(JobOut, response))

    async def pretrain(self, *, dataset_id: str, **spec: Any) -> AsyncJob:
        return await self.submit("pretrain", dataset_id=dataset_id, **spec)

    async def get(self, job: str | AsyncJob) -> AsyncJob:
        return AsyncJob(self._c, _parse(JobOut, await self._c.request("GET", f"/v1/jobs/{_id(job)}")))

    async def list(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        dataset_id: str | None = None,
        model_id: str | None = None,
    ) -> AsyncIterator[AsyncJob]:
        params = {"status": status, "kind": kind, "dataset_id": dataset_id, "model_id": model_id}
        async for data in self._c.pages("/v1/jobs", JobOut, params):
            yield AsyncJob(self._c, data)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def get(self, model: str | ModelOut) -> ModelOut:
        return _parse(ModelOut, await self._c.request("GET", f"/v1/models/{_id(model)}"))

    def list(self, *, type: str | None = None) -> AsyncIterator[ModelOut]:
        return self._c.pages("/v1/models", ModelOut, {"type": type})

    async def delete(self, model: str | ModelOut) -> None:
        await self._c.request("DELETE", f"/v1/models/{_id(model)}")

    async def embed(self, model: str | ModelOut, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """As ``Client.models.embed``; the requests of a long list run one after another."""
        batch, parts = as_list(images), []
        for start in range(0, len(batch), IMAGES_PER_REQUEST):
            chunk = batch[start : start + IMAGES_PER_REQUEST]
            response = await self._c.request(
                "POST", f"/v1/models/{_id(model)}/embeddings", files=_image_parts("files", chunk)
            )
            parts.append(_embeddings(response.json(), len(chunk)))
        return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)


class AsyncIndexes:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def delete(self, index: str | IndexOut) -> None:
        await self._c.request("DELETE", f"/v1/indexes/{_id(index)}")

    async def search(
        self,
        index: str | IndexOut,
        *,
        image: ImageLike | None = None,
        vector: Iterable[float] | None = None,
        item: int | None = None,
        k: int = 5,
    ) -> SearchOut:
        kwargs = _search_request(image, vector, item, k)
        return _parse(SearchOut, await self._c.request("POST", f"/v1/indexes/{_id(index)}/search", **kwargs))
