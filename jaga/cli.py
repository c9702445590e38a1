"""The ``jaga`` command's client side, on the SDK: login, datasets, jobs, models, search. ``--json`` on every
command prints machine-readable output on stdout. Exit status: 0 done (a watched job succeeded), 1 a refused
request or an unreachable service (the problem on stderr), 3 a watched job failed, 4 it was cancelled."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from jaga.client import SUFFIXES, Client, Job
from jaga.config import config_path, resolve, save_file
from jaga.errors import JagaError

EXIT_ERROR, EXIT_FAILED, EXIT_CANCELLED = 1, 3, 4
#: ``jobs submit`` options and the spec field each sets.
SPEC_OPTIONS = {
    "dataset": "dataset_id",
    "model": "model_id",
    "teacher": "teacher_model_id",
    "method": "method",
    "backbone": "backbone",
    "epochs": "epochs",
    "max_minutes": "max_minutes",
    "batch_size": "batch_size",
    "image_size": "image_size",
    "protocol": "protocol",
    "objective": "objective",
}


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Job):
        return value.data.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_dump(value), indent=2))


def _table(rows: Iterable[Iterable[object]], header: list[str]) -> None:
    cells = [header, *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _value(text: str) -> Any:
    """A ``-p key=value`` value: JSON when it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, _value(value)


# ------------------------------------------------------------------------------------------------- commands


def cmd_login(args: argparse.Namespace) -> int:
    conn = resolve(args.url, None)
    key = args.api_key or getpass.getpass(f"API key for {conn.url}: ").strip()
    with Client(conn.url, key, retries=1) as client:
        next(client.jobs.list(), None)  # a refused key raises here, before anything is saved
    path = save_file(url=conn.url, api_key=key)
    if args.json:
        _print_json({"url": conn.url, "config": str(path)})
    else:
        print(f"jaga: logged in to {conn.url}; saved to {path}")
    return 0


def cmd_datasets_upload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        dataset = client.datasets.upload(args.path, name=args.name, wait=not args.no_wait)
    if args.json:
        _print_json(dataset)
    else:
        classes = ", ".join(f"{c.name} {c.count}" for c in dataset.classes[:10])
        print(f"{dataset.id} {dataset.status}: {dataset.num_images} images, {dataset.num_rejected} rejected")
        if classes:
            print(f"classes: {classes}{' …' if len(dataset.classes) > 10 else ''}")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        datasets = list(client.datasets.list())
    if args.json:
        _print_json(datasets)
    else:
        _table(
            ([d.id, d.name, d.status, d.num_images, len(d.classes)] for d in datasets),
            ["ID", "NAME", "STATUS", "IMAGES", "CLASSES"],
        )
    return 0


def cmd_datasets_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.datasets.get(args.dataset))
    return 0


def cmd_datasets_delete(args: argparse.Namespace) -> int:
    return _deleted(args, args.dataset, lambda client: client.datasets.delete(args.dataset))


def _deleted(args: argparse.Namespace, resource: str, delete: Callable[[Client], None]) -> int:
    with _client(args) as client:
        delete(client)
    if args.json:
        _print_json({"id": resource, "deleted": True})
    return 0


def _watch(job: Job, args: argparse.Namespace) -> int:
    job.wait(progress=not args.json, check=False, poll=args.poll)
    if args.json:
        _print_json(job)
    elif job.status == "succeeded":
        print(json.dumps(job.result, indent=2))
    else:
        print(f"{job.id} {job.status}: {json.dumps(job.error)}", file=sys.stderr)
    return {"succeeded": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}[job.status]


def cmd_jobs_submit(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = json.loads(Path(args.spec).read_text()) if args.spec else {}
    spec.update({field: getattr(args, option) for option, field in SPEC_OPTIONS.items() if getattr(args, option)})
    spec.update(dict(args.param or []))
    spec.pop("kind", None)
    with _client(args) as client:
        job = client.jobs.submit(args.kind, idempotency_key=args.idempotency_key, **spec)
        if args.watch:
            return _watch(job, args)
    if args.json:
        _print_json(job)
    else:
        print(job.id)
    return 0


def cmd_jobs_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _watch(client.jobs.get(args.job), args)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = list(client.jobs.list(status=args.status, kind=args.kind, dataset_id=args.dataset, model_id=args.model))
    if args.json:
        _print_json(jobs)
    else:
        _table(
            ([j.id, j.kind, j.status, f"{j.progress:.0%}", j.created_at.strftime("%Y-%m-%d %H:%M")] for j in jobs),
            ["ID", "KIND", "STATUS", "PROGRESS", "CREATED"],
        )
    return 0


def cmd_jobs_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.jobs.get(args.job))
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.jobs.get(args.job).cancel()
    if args.json:
        _print_json(job)
    else:
        print(f"{job.id} {job.status}")
    return 0


def cmd_jobs_metrics(args: argparse.Namespace) -> int:
    """One JSON object per line: the job's metrics events, oldest first, as the service streams them."""
    with _client(args) as client:
        for line in client.lines(f"/v1/jobs/{args.job}/metrics"):
            print(line)
    return 0


def cmd_jobs_embeddings(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.jobs.get(args.job).download_embeddings(args.out, format=args.format)
    if args.json:
        _print_json({"job_id": args.job, "format": args.format, "path": str(path), "bytes": path.stat().st_size})
    else:
        print(f"jaga: saved {args.job}'s embeddings as {args.format} to {path}")
    return 0


def cmd_webhooks_create(args: argparse.Namespace) -> int:
    with _client(args) as client:
        created = client.webhooks.create(args.url_to, args.events, description=args.description)
    if args.json:
        _print_json(created)
    else:
        print(f"{created.id} {created.url} {' '.join(created.events)}")
        print(f"secret (shown once): {created.secret}")
    return 0


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        hooks = list(client.webhooks.list())
    if args.json:
        _print_json(hooks)
    else:
        _table(([h.id, h.url, ",".join(h.events)] for h in hooks), ["ID", "URL", "EVENTS"])
    return 0


def cmd_webhooks_delete(args: argparse.Namespace) -> int:
    return _deleted(args, args.webhook, lambda client: client.webhooks.delete(args.webhook))


def cmd_webhooks_deliveries(args: argparse.Namespace) -> int:
    with _client(args) as client:
        deliveries = list(client.webhooks.deliveries(args.webhook, status=args.status))
    if args.json:
        _print_json(deliveries)
    else:
        rows = (
            [d.id, d.event_type, d.job_id or "", d.status, len(d.attempts), d.response_status_code or d.error or ""]
            for d in deliveries
        )
        _table(rows, ["ID", "EVENT", "JOB", "STATUS", "ATTEMPTS", "LAST ANSWER"])
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = list(client.models.list(type=args.type))
    if args.json:
        _print_json(models)
    else:
        _table(
            ([m.id, m.type, m.method, m.backbone, m.embedding_dim, m.dataset_id] for m in models),
            ["ID", "TYPE", "METHOD", "BACKBONE", "DIM", "DATASET"],
        )
    return 0


def cmd_models_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.models.get(args.model))
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    with _client(args) as client:
        usage = client.usage()
    if args.json:
        _print_json(usage)
        return 0
    quotas, used = usage.quotas, usage.usage
    print(f"tenant {usage.tenant}")
    print(f"active jobs   {used.active_jobs} of {quotas.max_active_jobs or 'no limit'}")
    print(f"stored bytes  {used.stored_bytes} of {quotas.max_stored_bytes or 'no limit'}")
    print(f"requests      {usage.rate_limit_per_minute or 'no limit'} a minute for this key")
    return 0


def cmd_models_delete(args: argparse.Namespace) -> int:
    return _deleted(args, args.model, lambda client: client.models.delete(args.model))


def cmd_models_embed(args: argparse.Namespace) -> int:
    if args.out is None and not args.json:
        raise SystemExit("jaga: give --out FILE.npy, or --json to print the embeddings")
    with _client(args) as client:
        vectors = client.models.embed(args.model, args.files)
    if args.out is not None:
        np.save(args.out, vectors)
    if args.json:
        out = {"model_id": args.model, "dim": int(vectors.shape[1]), "count": len(vectors)}
        _print_json({**out, "out": args.out} if args.out else {**out, "embeddings": vectors.tolist()})
    else:
        print(f"jaga: wrote {len(vectors)} embeddings of dimension {vectors.shape[1]} to {args.out}")
    return 0


def cmd_models_predict(args: argparse.Namespace) -> int:
    with _client(args) as client:
        predictions = client.models.predict(args.model, args.files, top_k=args.top_k)
    if args.json:
        _print_json(predictions)
    else:
        for file, prediction in zip(args.files, predictions.data, strict=True):
            print(file + ": " + ", ".join(f"{c.name} {c.probability:.3f}" for c in prediction.predictions))
    return 0


def cmd_models_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        path = client.models.download(args.model, args.out, format=args.format, target=args.target)
    if args.json:
        _print_json({"model_id": args.model, "format": args.format, "path": str(path), "bytes": path.stat().st_size})
    else:
        print(f"jaga: saved {args.model} as {args.format} to {path}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.indexes.search(args.index, image=args.image, k=args.k)
    if args.json:
        _print_json(found)
    else:
        _table(
            ([i, r.item, f"{r.score:.4f}", r.label or "", r.filename or ""] for i, r in enumerate(found.results, 1)),
            ["RANK", "ITEM", "SCORE", "LABEL", "FILE"],
        )
    return 0


# --------------------------------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the client commands on the ``jaga`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the service (default: JAGA_URL, then `jaga login`'s, then 127.0.0.1:8000)")
    common.add_argument("--api-key", help="default: JAGA_API_KEY, then `jaga login`'s")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        parser = parent.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(func=func)
        return parser

    command(sub, "login", cmd_login, f"check an API key and save it with the URL ({config_path()})")

    datasets = sub.add_parser("datasets", help="upload and list datasets").add_subparsers(dest="sub", required=True)
    upload = command(datasets, "upload", cmd_datasets_upload, "upload a folder of class folders or an archive")
    upload.add_argument("path", help="a folder (zipped while it uploads), .zip, .tar, .tar.gz or .npz")
    upload.add_argument("--name", help="default: the file or folder name")
    upload.add_argument("--no-wait", action="store_true", help="return at once instead of after ingestion")
    command(datasets, "list", cmd_datasets_list, "the tenant's datasets")
    command(datasets, "get", cmd_datasets_get, "one dataset as JSON").add_argument("dataset")
    command(datasets, "delete", cmd_datasets_delete, "delete a dataset and its files").add_argument("dataset")

    jobs = sub.add_parser("jobs", help="submit, watch and list jobs").add_subparsers(dest="sub", required=True)
    submit = command(jobs, "submit", cmd_jobs_submit, "submit a job (the spec from options, -p and --spec)")
    submit.add_argument("kind", choices=["pretrain", "evaluate", "index", "distill", "embed"])
    for option in SPEC_OPTIONS:
        numeric = option in ("epochs", "batch_size", "image_size")
        submit.add_argument(
            f"--{option.replace('_', '-')}", type=int if numeric else float if option == "max_minutes" else str
        )
    submit.add_argument(
        "-p",
        "--param",
        type=_param,
        action="append",
        metavar="KEY=VALUE",
        help="any spec field (values as JSON where they parse: 0.1, true, [1,2])",
    )
    submit.add_argument("--spec", metavar="FILE", help="a JSON file with the spec (options override it)")
    submit.add_argument("--idempotency-key", help="default: a new one per invocation")
    submit.add_argument("--watch", action="store_true", help="then watch it as `jobs watch` does")
    submit.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    watch = command(jobs, "watch", cmd_jobs_watch, "a live progress bar until the job ends; exits with its status")
    watch.add_argument("job")
    watch.add_argument("--poll", type=float, default=2.0, help="seconds between polls (default 2)")
    listing = command(jobs, "list", cmd_jobs_list, "the tenant's jobs, newest first")
    listing.add_argument("--status", choices=["queued", "running", "cancelling", "succeeded", "failed", "cancelled"])
    listing.add_argument("--kind")
    listing.add_argument("--dataset", help="only the jobs of this dataset")
    listing.add_argument("--model", help="only the jobs that read this model")
    command(jobs, "get", cmd_jobs_get, "one job as JSON").add_argument("job")
    command(jobs, "cancel", cmd_jobs_cancel, "cancel a job").add_argument("job")
    command(jobs, "metrics", cmd_jobs_metrics, "the job's metrics as JSON lines").add_argument("job")
    embeddings = command(jobs, "embeddings", cmd_jobs_embeddings, "download an embed job's embeddings")
    embeddings.add_argument("job")
    embeddings.add_argument("--format", choices=["npy", "parquet"], default="npy")
    embeddings.add_argument("--out", help="a file or a folder (default: <job id>.<format> here)")

    models = sub.add_parser("models", help="embed with and export models").add_subparsers(dest="sub", required=True)
    models_list = command(models, "list", cmd_models_list, "the tenant's models, newest first")
    models_list.add_argument("--type", choices=["encoder", "classifier"])
    command(models, "get", cmd_models_get, "one model as JSON").add_argument("model")
    command(models, "delete", cmd_models_delete, "delete a model and its files").add_argument("model")
    embed = command(models, "embed", cmd_models_embed, "embeddings of image files, saved as an (N, D) .npy")
    embed.add_argument("model")
    embed.add_argument("files", nargs="+")
    embed.add_argument("--out", help="a .npy file")
    predict = command(models, "predict", cmd_models_predict, "a classifier's most probable classes per image")
    predict.add_argument("model")
    predict.add_argument("files", nargs="+")
    predict.add_argument("--top-k", type=int)
    export = command(models, "export", cmd_models_export, "download the model in a format")
    export.add_argument("model")
    export.add_argument("--format", choices=list(SUFFIXES), default="state_dict")
    export.add_argument("--target", choices=["embedding", "classifier"], help="torchscript, onnx: what it outputs")
    export.add_argument("--out", help="a file or a folder (default: <model id><suffix> here)")

    hooks = sub.add_parser("webhooks", help="endpoints for job events (admin keys)").add_subparsers(
        dest="sub", required=True
    )
    create = command(hooks, "create", cmd_webhooks_create, "register a URL for job events; prints its secret once")
    create.add_argument("url_to", metavar="URL")
    create.add_argument(
        "--events",
        nargs="+",
        default=["job.succeeded", "job.failed", "job.cancelled"],
        help="job.succeeded job.failed job.cancelled job.metrics (default: the first three)",
    )
    create.add_argument("--description", default="")
    command(hooks, "list", cmd_webhooks_list, "the tenant's endpoints")
    command(hooks, "delete", cmd_webhooks_delete, "remove an endpoint").add_argument("webhook")
    deliveries = command(hooks, "deliveries", cmd_webhooks_deliveries, "an endpoint's deliveries and attempts")
    deliveries.add_argument("webhook")
    deliveries.add_argument("--status", choices=["pending", "succeeded", "failed"])

    command(sub, "usage", cmd_usage, "the tenant's quotas and usage, and this key's rate limit")
    search = command(sub, "search", cmd_search, "the k nearest items of an index to an image")
    search.add_argument("index")
    search.add_argument("image")
    search.add_argument("-k", type=int, default=5)


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> None:
    """Run a client command: a refused request or an unreachable service prints the problem and exits 1."""
    try:
        code = func(args)
    except JagaError as error:
        if getattr(args, "json", False):
            print(
                json.dumps(
                    {"status": error.status, "code": error.code, "message": str(error), "problem": error.problem}
                ),
                file=sys.stderr,
            )
        else:
            print(f"jaga: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    sys.exit(code)
