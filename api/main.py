"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api import logs
from api.core.artifacts import ArtifactStore
from api.core.auth import KeyCache, ensure_bootstrap_key
from api.core.db import session_factory, session_scope
from api.core.queue import make_celery, queue_depth, send_job
from api.core.ratelimit import RateLimiter
from api.core.settings import Settings, get_settings
from api.core.sweeper import Sweeper
from api.dispatcher import Dispatcher
from api.errors import install_error_handlers
from api.fastpath import PollFastPath
from api.gate import AuthorizeFirst
from api.head import HeadAsGet
from api.limits import BodySizeLimit
from api.logs import RequestId
from api.metrics import RequestMetrics, make_registry
from api.openapi import install_openapi, problems
from api.routers import dashboard, datasets, indexes, jobs, keys, methods, models, ops, queue, webhooks
from api.serving import ServingCache

# Requests other than uploads are small; this caps what a client can make us buffer.
MAX_SMALL_BODY = 64 << 20
#: Every route of these needs a key (``current_key``): 401 without a valid one, 429 past its rate limit.
API = (datasets, jobs, models, indexes, methods, keys, queue, webhooks)


def create_app(settings: Settings | None = None, *, make_session: sessionmaker[Session] | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        celery = app.state.celery
        sweeper = Sweeper(settings, partial(send_job, celery), partial(queue_depth, celery, settings.queue_name))
        sweeper.start()
        dispatcher = Dispatcher(settings)  # webhook deliveries
        dispatcher.start()
        # Blocking calls no more than database connections: a thread never opens one past the pool.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size
        try:
            yield
        finally:
            dispatcher.stop()
            sweeper.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="Jaga",
        version="0.1.0",
        description="Self-supervised pretraining as a service: datasets, pretraining jobs, models, "
        "embeddings and kNN search.",
    )
    app.state.settings = settings
    app.state.sessionmaker = make_session or session_factory(settings.database_url, settings.db_pool_size)
    app.state.reads_inline = app.state.sessionmaker.kw["bind"].dialect.name == "sqlite"
    app.state.store = ArtifactStore(settings.artifacts)
    app.state.celery = make_celery(settings)
    app.state.serving = ServingCache(
        settings.device,
        concurrency=settings.inference_concurrency,
        max_pending=settings.inference_max_pending,
        batch_max_images=settings.batch_max_images,
        batch_wait_seconds=settings.batch_wait_ms / 1000,
    )
    app.state.rate_limiter = RateLimiter()
    app.state.key_cache = KeyCache(settings.auth_cache_seconds)
    registry, requests, latency = make_registry(app.state.sessionmaker)
    app.state.metrics_registry = registry
    if settings.bootstrap_key:
        with session_scope(settings.database_url, settings.db_pool_size) as s:
            ensure_bootstrap_key(s, settings.bootstrap_key)

    # Inside the others: polls and refusals before the body get request ids, body limits and metrics too.
    app.add_middleware(
        AuthorizeFirst,
        state=app.state,
        routes=[r for m in API for r in m.router.routes],
        prechecks={("POST", "/v1/datasets"): datasets.before_upload},
    )
    app.add_middleware(PollFastPath, state=app.state, routes=jobs.router.routes)
    app.add_middleware(RequestMetrics, requests=requests, latency=latency)

    def body_limit(path: str) -> int:
        return settings.max_upload_bytes + (1 << 20) if path == "/v1/datasets" else MAX_SMALL_BODY

    app.add_middleware(BodySizeLimit, limit_for=body_limit)
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestId)  # outermost: every response, errors included, carries the id
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(dashboard.router)
    app.mount("/dashboard/static", dashboard.static_files(), name="dashboard-static")
    for module in API:
        app.include_router(module.router, responses=problems(401, 429))
    install_openapi(app)
    return app


def create_served_app() -> FastAPI:
    """``create_app`` for ``jaga serve``: uvicorn's worker processes start fresh, so each configures its logs."""
    settings = get_settings()
    logs.configure(settings.log_format)
    return create_app(settings)
