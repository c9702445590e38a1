"""The ``jaga`` command: serve, worker, db upgrade, keys (create, list, revoke), tenants (list, set-quota), and the
client commands of ``jaga.cli`` (login, datasets, jobs, models, search)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from datetime import datetime
from functools import partial
from typing import Any

from pydantic import ValidationError

from api import logs
from api.core.auth import SCOPES
from api.core.settings import Settings, get_settings
from jaga import cli as client_commands

log = logging.getLogger("jaga")
#: An option not given on the command line (None means "back to the default" for quotas).
_UNSET = object()


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


def _ensure_device(settings: Settings) -> None:
    """Refuse to start on a device this machine lacks, rather than fail every job and embedding request."""
    from ssl_core.device import DeviceUnavailable, resolve_device

    try:
        resolve_device(settings.device)
    except DeviceUnavailable as exc:
        sys.exit(f"jaga: JAGA_DEVICE: {exc}")


def _setting_problem(error: Any) -> str:
    """One of the settings' validation errors as ``JAGA_NAME: reason`` (rules across settings name theirs)."""
    reason = str(error["msg"]).removeprefix("Value error, ")
    return f"JAGA_{'_'.join(map(str, error['loc'])).upper()}: {reason}" if error["loc"] else reason


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


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the worker's shutdown short
    raise KeyboardInterrupt


#: The most API processes ``jaga serve --workers`` starts.
MAX_API_WORKERS = 64


def _workers(text: str) -> int:
    """``--workers``: a whole number of API processes from 1 to ``MAX_API_WORKERS``."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_API_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_API_WORKERS}, not {text!r}")
    return int(text)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from api.supervisor import WorkerSupervisor

    if not args.no_worker:
        # Read by the API processes (inherited by uvicorn's workers); the training worker ignores it.
        os.environ["JAGA_READY_REQUIRES_WORKER"] = "true"
        get_settings.cache_clear()
    settings = get_settings()
    _ensure_device(settings)
    _ensure_migrated(settings)
    settings.artifacts.mkdir(parents=True, exist_ok=True)
    if settings.bootstrap_key:  # once here, so N API processes starting together do not race to insert it
        from api.core.auth import ensure_bootstrap_key
        from api.core.db import session_scope

        with session_scope(settings.database_url) as s:
            ensure_bootstrap_key(s, settings.bootstrap_key)
    # uvicorn re-raises SIGTERM once it has shut down; this makes it an exception, so the worker is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    supervisor = None
    try:
        if not args.no_worker:
            supervisor = WorkerSupervisor(worker_command(), {**os.environ, "JAGA_PARENT_PID": str(os.getpid())})
            supervisor.start()
        processes = "" if args.workers == 1 else f" ({args.workers} processes)"
        print(
            f"jaga: API on http://{args.host}:{args.port}{processes}  data in {settings.data_dir}"
            f"{'' if supervisor is None else f'  (worker pid {supervisor.pid}, restarted if it dies)'}",
            flush=True,
        )
        # N API processes share the port; the one training worker above is this process's, never theirs.
        uvicorn.run(
            "api.main:create_served_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="info",
            log_config=None,
            access_log=not args.no_access_log,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if supervisor is not None:
            supervisor.stop()  # warm: a running job checkpoints and goes back to the queue
    print("jaga: stopped", flush=True)


def cmd_worker(args: argparse.Namespace) -> None:
    settings = get_settings()
    _ensure_device(settings)
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
    scope = "admin" if args.admin else args.scope
    with session_scope(settings.database_url) as s:
        key, secret = create_key(
            s, tenant_name=args.tenant, name=args.name or "", scope=scope, rate_limit_per_minute=args.rate_limit
        )
        print(f"created {scope} key {key.id} for tenant {args.tenant!r}; it is shown only once:\n{secret}")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def cmd_keys_list(args: argparse.Namespace) -> None:
    from api.core.db import session_scope
    from api.schemas import KeyOut
    from api.services.keys import all_keys

    settings = get_settings()
    _ensure_migrated(settings)
    with session_scope(settings.database_url) as s:
        keys = all_keys(s, tenant_name=args.tenant)
    if args.json:
        rows = [{**KeyOut.model_validate(key).model_dump(mode="json"), "tenant": tenant} for key, tenant in keys]
        print(json.dumps(rows, indent=2))
        return
    table = [("ID", "TENANT", "NAME", "SCOPE", "RATE/MIN", "CREATED", "LAST USED", "REVOKED")]
    for key, tenant in keys:
        rate = "default" if key.rate_limit_per_minute is None else str(key.rate_limit_per_minute or "no limit")
        when = (_when(key.created_at), _when(key.last_used_at), _when(key.revoked_at))
        table.append((key.id, tenant, key.name or "-", key.scope, rate, *when))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    from api.core.db import session_scope
    from api.services.keys import find_key, has_active_admin, revoke

    settings = get_settings()
    _ensure_migrated(settings)
    with session_scope(settings.database_url) as s:
        key = find_key(s, args.key_id)
        if key is None:
            sys.exit(f"jaga: no key {args.key_id!r}")
        if revoke(s, key, keep_an_admin=False):  # the operator may; the API keeps one admin key per tenant
            print(f"revoked key {key.id}")
        else:
            print(f"key {key.id} was already revoked at {_when(key.revoked_at)}")
        if not has_active_admin(s, key.tenant_id):
            print(
                "jaga: its tenant has no active admin key left; `jaga keys create --scope admin` makes one",
                file=sys.stderr,
            )


#: The largest values the columns hold: rate limits and active jobs are 32-bit, stored bytes 64-bit.
INT32_MAX, INT64_MAX = 2**31 - 1, 2**63 - 1


def _limit(text: str, maximum: int = INT32_MAX) -> int:
    """A limit on the command line: a whole number up to ``maximum``, 0 for no limit."""
    if not text.isdigit() or int(text) > maximum:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 (no limit) to {maximum}, not {text!r}")
    return int(text)


def _quota(text: str, maximum: int = INT32_MAX) -> int | None:
    """A quota on the command line: a limit, or ``default`` for the settings' default."""
    return None if text == "default" else _limit(text, maximum)


def cmd_tenants_list(args: argparse.Namespace) -> None:
    from api.core.db import session_scope
    from api.services.quotas import describe_tenants

    settings = get_settings()
    _ensure_migrated(settings)
    with session_scope(settings.database_url) as s:
        tenants = describe_tenants(s, settings)
    if args.json:
        print(json.dumps(tenants, indent=2))
        return
    for t in tenants:
        limits, usage = t["effective"], t["usage"]
        jobs_limit = limits["max_active_jobs"] or "no limit"
        bytes_limit = limits["max_stored_bytes"] or "no limit"
        print(
            f"{t['name']} ({t['id']}): active jobs {usage['active_jobs']} of {jobs_limit}"
            f"{'' if t['own']['max_active_jobs'] is not None else ' (default)'}, "
            f"stored bytes {usage['stored_bytes']} of {bytes_limit}"
            f"{'' if t['own']['max_stored_bytes'] is not None else ' (default)'}"
        )


def cmd_tenants_set_quota(args: argparse.Namespace) -> None:
    from api.core.db import session_scope
    from api.services.quotas import Quota, set_quotas

    settings = get_settings()
    _ensure_migrated(settings)
    changes: dict[Quota, int | None] = {}
    if args.max_active_jobs is not _UNSET:
        changes["max_active_jobs"] = args.max_active_jobs
    if args.max_stored_bytes is not _UNSET:
        changes["max_stored_bytes"] = args.max_stored_bytes
    if not changes:
        sys.exit("jaga: give --max-active-jobs and/or --max-stored-bytes")
    with session_scope(settings.database_url) as s:
        try:
            set_quotas(s, tenant_name=args.tenant, quotas=changes)
        except LookupError as exc:
            sys.exit(f"jaga: {exc.args[0]}")
    shown = ", ".join(f"{name} {'default' if value is None else value}" for name, value in changes.items())
    print(f"tenant {args.tenant!r}: {shown}")


def cmd_example_data(args: argparse.Namespace) -> None:
    from pathlib import Path

    from api.core.example_data import write_archive

    n = write_archive(Path(args.out), args.split, args.limit, args.offset)
    print(f"jaga: wrote {n} Fashion-MNIST {args.split} images to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jaga", description="Self-supervised pretraining as a service.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API (and, unless --no-worker, one worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="API only (production: run workers apart)")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="API processes sharing the port (default 1); still one training worker. Rate limits and caches are "
        "per process",
    )
    serve.add_argument(
        "--no-access-log", action="store_true", help="no log line per request (errors and app logs remain)"
    )
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run a worker process (one job at a time)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(func=cmd_worker)
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="migrate the database to the newest revision")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=cmd_db_upgrade)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create an API key for a tenant (and the tenant if it is new)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name")
    scope = create.add_mutually_exclusive_group()
    scope.add_argument("--scope", choices=SCOPES, default="write", help="read < write < admin (default: write)")
    scope.add_argument("--admin", action="store_true", help="the same as --scope admin")
    create.add_argument(
        "--rate-limit", type=_limit, metavar="N", help="requests a minute (0: no limit; default: the settings')"
    )
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", help="list keys, revoked ones included (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key at once (repeating it changes nothing)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)
    tenants = sub.add_parser("tenants", help="tenants and their quotas").add_subparsers(
        dest="tenants_command", required=True
    )
    tenant_list = tenants.add_parser("list", help="tenants with their quotas and usage")
    tenant_list.add_argument("--json", action="store_true")
    tenant_list.set_defaults(func=cmd_tenants_list)
    quota = tenants.add_parser("set-quota", help="set a tenant's quotas (a number, 0 for no limit, or 'default')")
    quota.add_argument("tenant")
    quota.add_argument("--max-active-jobs", type=_quota, default=_UNSET, metavar="N|default")
    quota.add_argument(
        "--max-stored-bytes", type=partial(_quota, maximum=INT64_MAX), default=_UNSET, metavar="BYTES|default"
    )
    quota.set_defaults(func=cmd_tenants_set_quota)
    example = sub.add_parser(
        "example-data",
        help="write a Fashion-MNIST subset as a zip of class folders (needs Debian's dataset-fashion-mnist)",
    )
    example.add_argument("--out", default="fashion-mnist.zip")
    example.add_argument("--split", choices=["train", "test"], default="train")
    example.add_argument("--limit", type=int, default=2000)
    example.add_argument("--offset", type=int, default=0)
    example.set_defaults(func=cmd_example_data)
    client_commands.add_commands(sub)
    args = parser.parse_args(argv)
    if args.func.__module__ == client_commands.__name__:
        client_commands.run(args.func, args)  # a client: no service settings, no service logs on stderr
    try:
        settings = get_settings()
    except ValidationError as exc:  # one line per bad variable, not a traceback
        sys.exit(f"jaga: bad settings: {'; '.join(_setting_problem(e) for e in exc.errors())}")
    logs.configure(settings.log_format)
    args.func(args)


if __name__ == "__main__":
    main()
