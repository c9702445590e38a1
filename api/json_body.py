"""JSON request bodies, read the same way by every route that takes one: what is not JSON, or is nested too
deeply to handle safely, is a 400 ``malformed_json`` naming ``body``, never a 500."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.core.problems import Problem, field_error

#: Deeper than any body the API takes (a multitask spec is 4 levels); far below Python's recursion limit.
MAX_DEPTH = 32
#: Bodies larger than this are parsed in a worker thread, keeping the event loop free.
INLINE_PARSE_BYTES = 256 << 10


def malformed_json(reason: str) -> Problem:
    return field_error("body", reason, status=400, code="malformed_json")


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels deep (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in ``raw`` (UTF-8, -16 or -32). Raises ``Problem`` (400 ``malformed_json``) for invalid JSON,
    the non-standard ``NaN`` and ``Infinity``, and lists or objects nested more than ``max_depth`` levels."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise malformed_json(f"is nested more than {max_depth} levels deep") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise malformed_json(f"is not valid JSON ({exc})") from None
    if isinstance(value, dict | list) and _deeper_than(value, max_depth):
        raise malformed_json(f"is nested more than {max_depth} levels deep")
    return value


async def read_json(request: Request, *, empty: Any = ...) -> Any:
    """The request's JSON body (``parse_json``); ``empty`` is the value of an empty body, which is otherwise
    malformed."""
    raw = await request.body()
    if not raw and empty is not ...:
        return empty
    if len(raw) > INLINE_PARSE_BYTES:
        return await run_in_threadpool(parse_json, raw)
    return parse_json(raw)
