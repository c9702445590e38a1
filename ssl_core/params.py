"""Parameters as frozen, keyword-only dataclasses that check themselves: each field's bounds and description sit
in its metadata (``param``), and ``Checked.__post_init__`` refuses a value of the wrong type or out of bounds with
``ParamsError`` naming the field. Unknown keywords are refused the same way. The service builds its request models
from the same metadata (``api.core.params``).

Example::

    @dataclass(frozen=True, kw_only=True)
    class Params(Checked):
        temperature: float = param(0.2, gt=0.0, le=10.0, description="softmax temperature")

    Params(temperature=-1)  # ParamsError: Params: temperature: must be greater than 0.0, got -1
"""

from __future__ import annotations

import dataclasses
import operator
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, Union, get_args, get_origin, get_type_hints

#: A field's location: its name, then list positions and names within nested parameters.
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Constraints:
    """What ``param`` records in a field's metadata under ``"param"``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    description: str = ""


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    description: str = "",
) -> Any:
    """A dataclass field with bounds (numbers: ``ge``, ``gt``, ``le``, ``lt``; lists: ``min_length``,
    ``max_length``) and a description; no default and no ``default_factory`` makes it required."""
    metadata = {"param": Constraints(ge, gt, le, lt, min_length, max_length, description)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def constraints(field: dataclasses.Field[Any]) -> Constraints:
    """The bounds and description ``param`` gave ``field`` (none for a plain field)."""
    found = field.metadata.get("param")
    return found if isinstance(found, Constraints) else Constraints()


class ParamsError(ValueError):
    """Values a ``Checked`` class refuses: ``errors`` holds (location, reason) pairs, the message all of them."""

    def __init__(self, owner: str, errors: Sequence[tuple[Loc, str]], hint: str = "") -> None:
        self.owner = owner
        self.errors = list(errors)
        self.hint = hint
        lines = "; ".join(f"{'.'.join(map(str, loc))}: {reason}" for loc, reason in self.errors)
        super().__init__(f"{owner}: {lines}" + (f" ({hint})" if hint else ""))


@dataclass(frozen=True, kw_only=True)
class Checked:
    """Base of parameter dataclasses (decorate each subclass with ``@dataclass(frozen=True, kw_only=True)``).
    Construction refuses unknown keywords, values of another type than the annotation's (an ``int`` passes as a
    ``float``, nested ``Checked`` values may be given as dicts) and values outside a field's bounds, raising
    ``ParamsError``. Rules across fields go in a subclass's ``__post_init__``, after ``super().__post_init__()``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # The keywords reach __new__ before the generated __init__: an unknown one is refused here as a ParamsError
        # naming it, not as __init__'s TypeError.
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [name for name in kwargs if name not in names]
        if unknown:
            hint = f"{cls.__name__} takes {', '.join(names)}"
            raise ParamsError(cls.__name__, [((name,), "unknown field") for name in unknown], hint)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        errors: list[tuple[Loc, str]] = []
        hints: list[str] = []
        annotations = get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                checked = _check(value, annotations[field.name], constraints(field))
            except ParamsError as exc:
                errors += [((field.name, *loc), reason) for loc, reason in exc.errors]
                hints.append(exc.hint)
                continue
            if checked is not value:  # an int given for a float, a dict for nested parameters
                object.__setattr__(self, field.name, checked)
        if errors:
            raise ParamsError(type(self).__name__, errors, "; ".join(h for h in hints if h))


def _check(value: Any, annotation: Any, bounds: Constraints) -> Any:
    """``value`` as the field holds it (converted where allowed); raises ``ParamsError`` with locations relative to
    the field."""
    given, value = value, _check_type(value, annotation)
    if isinstance(value, int | float) and not isinstance(value, bool):
        for limit, holds, words in (
            (bounds.gt, operator.gt, "greater than"),
            (bounds.ge, operator.ge, "greater than or equal to"),
            (bounds.lt, operator.lt, "less than"),
            (bounds.le, operator.le, "less than or equal to"),
        ):
            if limit is not None and not holds(value, limit):  # NaN holds no bound
                raise ParamsError("", [((), f"must be {words} {limit}, got {given!r}")])
    if isinstance(value, list):
        if bounds.min_length is not None and len(value) < bounds.min_length:
            raise ParamsError("", [((), f"must have at least {bounds.min_length} items, got {len(value)}")])
        if bounds.max_length is not None and len(value) > bounds.max_length:
            raise ParamsError("", [((), f"must have at most {bounds.max_length} items, got {len(value)}")])
    return value


def _check_type(value: Any, annotation: Any) -> Any:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _check_type(value, option)
            except ParamsError:
                pass
        return _check_type(value, options[-1])
    if origin is Literal:
        if not any(value == choice and type(value) is type(choice) for choice in args):
            choices = ", ".join(map(repr, args[:-1])) + " or " * (len(args) > 1) + repr(args[-1])
            raise ParamsError("", [((), f"must be {choices}, got {value!r}")])
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError("", [((), f"must be a list, got {value!r}")])
        (item_type,) = args
        items, errors, hint = [], [], ""
        for i, item in enumerate(value):
            try:
                items.append(_check_type(item, item_type))
            except ParamsError as exc:
                errors += [((i, *loc), reason) for loc, reason in exc.errors]
                hint = hint or exc.hint
        if errors:
            raise ParamsError("", errors, hint)
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError("", [((), f"must be an object, got {value!r}")])
        return value
    if isinstance(annotation, type) and issubclass(annotation, Checked):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ParamsError("", [((), f"must be an object, got {value!r}")])
        return annotation(**value)  # a ParamsError locates its errors within the nested parameters
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamsError("", [((), f"must be true or false, got {value!r}")])
        return value
    if annotation is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParamsError("", [((), f"must be an integer, got {value!r}")])
        return value
    if annotation is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ParamsError("", [((), f"must be a number, got {value!r}")])
        return value if isinstance(value, float) else float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParamsError("", [((), f"must be a string, got {value!r}")])
        return value
    raise TypeError(f"Checked parameters cannot check values of type {annotation!r}")
