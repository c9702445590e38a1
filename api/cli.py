"""The ``jaga`` command: serve, worker, db upgrade, keys create."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from api.core.settings import Settings, get_settings

log = logging.getLogger("jaga")


def _ensure_migrated(settings: Settings) -> None:
    """Embedded mode migrates on start; anything else refuses to run on an out-of-date database."""
    from migrations import current_revision, head_revision, upgrade

    if settings.embedded:
        upgrade(settings.database_url)
        return
    current, head = current_revision(settings.database_url), head_revision()
    if current != head:
        sys.exit(
            f"jaga: the database is at revision {current or 'none (empty)'}, this code needs {head}. "
            "Run `jaga db upgrade` first."
        )


def worker_command(concurrency: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--pool=solo",
        f"--concurrency={concurrency}",
        "--prefetch-multiplier=1",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]  # the queue is the app's task_default_queue (JAGA_QUEUE_NAME)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = get_settings()
    _ensure_migrated(settings)
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    worker = None
    if not args.no_worker:
        worker = subprocess.Popen(worker_command(), env=os.environ.copy())
    print(
        f"jaga: API on http://{args.host}:{args.port}  data in {settings.data_dir}"
        f"{'' if worker is None else f'  (worker pid {worker.pid})'}",
        flush=True,
    )
    try:
        uvicorn.run("api.main:create_app", factory=True, host=args.host, port=args.port, log_level="info")
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown: a running job checkpoints and re-queues
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()


def cmd_worker(args: argparse.Namespace) -> None:
    settings = get_settings()
    _ensure_migrated(settings)
    os.execv(sys.executable, worker_command(args.concurrency))


def cmd_db_upgrade(args: argparse.Namespace) -> None:
    from migrations import upgrade

    upgrade(get_settings().database_url, args.revision)
    print(f"jaga: database upgraded to {args.revision}")


def cmd_keys_create(args: argparse.Namespace) -> None:
    from api.core.auth import create_key
    from api.core.db import session_scope

    settings = get_settings()
    _ensure_migrated(settings)
    with session_scope(settings.database_url) as s:
        key, secret = create_key(s, tenant_name=args.tenant, name=args.name or "", scope="admin" if args.admin else "write")
        print(f"created key {key.id} for tenant {args.tenant!r}; it is shown only once:\n{secret}")


def cmd_example_data(args: argparse.Namespace) -> None:
    from pathlib import Path

    from ssl_core.fashion_mnist import write_archive

    n = write_archive(Path(args.out), args.split, args.limit, args.offset)
    print(f"jaga: wrote {n} Fashion-MNIST {args.split} images to {args.out}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin on every start otherwise
    parser = argparse.ArgumentParser(prog="jaga", description="Self-supervised pretraining as a service.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API (and, unless --no-worker, one worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="API only (production: run workers apart)")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a worker process (one job at a time)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="migrate the database to the newest revision")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=cmd_db_upgrade)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key for a tenant")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name")
    create.add_argument("--admin", action="store_true")
    create.set_defaults(func=cmd_keys_create)
    example = sub.add_parser(
        "example-data",
        help="write a Fashion-MNIST subset as a zip of class folders (needs Debian's dataset-fashion-mnist)",
    )
    example.add_argument("--out", default="fashion-mnist.zip")
    example.add_argument("--split", choices=["train", "test"], default="train")
    example.add_argument("--limit", type=int, default=2000)
    example.add_argument("--offset", type=int, default=0)
    example.set_defaults(func=cmd_example_data)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
