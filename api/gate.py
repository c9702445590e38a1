"""Keys are checked before bodies are read.

FastAPI reads a route's body (a JSON document, or a whole multipart upload spooled to disk) before it solves the
route's dependencies, so ``current_key`` alone would refuse a request without a valid key only after its body had
arrived: an anonymous client could make the service take in a 1 GiB upload per request. ``AuthorizeFirst``
authorises every request that may carry a body as soon as its headers are in, with ``api.deps.authorize`` (401,
403 and 429 exactly as the route would answer them), and hands the key on to ``current_key`` on the scope, so a
request is authorised, and charged to its key's rate limit, once. A route may also have a check of its own that
needs only the key (an upload's quotas), run here too."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from starlette.datastructures import Headers, State
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from api.core.models import ApiKey
from api.core.problems import Problem
from api.deps import AUTHORIZED_KEY, READ_METHODS, authorize, current_key, depends_on
from api.errors import problem_response

#: A route's own check before its body, given the app's state and the request's key: it raises a ``Problem``.
Precheck = Callable[[State, ApiKey], Awaitable[None]]


class AuthorizeFirst:
    """ASGI middleware: authorise requests to key-protected routes, other than reads, before their bodies."""

    def __init__(
        self,
        app: ASGIApp,
        state: State,
        routes: Sequence[BaseRoute],
        prechecks: Mapping[tuple[str, str], Precheck] | None = None,
    ) -> None:
        self.app = app
        self.state = state  # the FastAPI app's
        self.routes = routes  # the API routers' own routes (an app's list holds its included routers, not these)
        self.prechecks = prechecks or {}  # by (method, path template)
        self._protected: dict[int, bool] = {}

    def _needs_key(self, route: BaseRoute) -> bool:
        protected = self._protected.get(id(route))
        if protected is None:
            dependant = getattr(route, "dependant", None)
            protected = self._protected[id(route)] = dependant is not None and depends_on(dependant, current_key)
        return protected

    def _route(self, scope: Scope) -> BaseRoute | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route if self._needs_key(route) else None
        return None  # unknown path or method: the router answers 404 or 405

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] not in READ_METHODS:
            route = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route  # names the request in metrics, as the router would
        try:
            key = await authorize(self.state, Headers(scope=scope).get("authorization"), scope["method"], route)
            precheck = self.prechecks.get((scope["method"], getattr(route, "path", "")))
            if precheck is not None:
                await precheck(self.state, key)
        except Problem as problem:
            await problem_response(problem, Request(scope))(scope, receive, send)
            return
        scope[AUTHORIZED_KEY] = key
        await self.app(scope, receive, send)
