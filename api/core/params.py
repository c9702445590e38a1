"""Pydantic models of ``ssl_core``'s parameter dataclasses, for validating requests and describing them in JSON
schemas: one field per dataclass field, with its default, bounds and description (``ssl_core.params.param``),
unknown keys refused. After the fields, the model builds the dataclass, so its own rules (values across fields,
defaults that depend on others) apply too: a ``ValueError`` becomes a validation error of the whole body, a
``ParamsError`` one error per field it names, and a field the dataclass fills in (a ``None`` it replaces) takes
that value."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from ssl_core.params import Checked, ParamsError, constraints

_models: dict[type[Checked], type[BaseModel]] = {}


def params_model(cls: type[Checked]) -> type[BaseModel]:
    """The pydantic model of the parameter dataclass ``cls``, named like it (one per class)."""
    if cls not in _models:
        _models[cls] = _build_model(cls)
    return _models[cls]


def _build_model(cls: type[Checked]) -> type[BaseModel]:
    hints = get_type_hints(cls)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        bounds = constraints(field)
        kwargs: dict[str, Any] = {
            name: value
            for name in ("ge", "gt", "le", "lt", "min_length", "max_length")
            if (value := getattr(bounds, name)) is not None
        }
        if bounds.description:
            kwargs["description"] = bounds.description
        if field.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = _model_default_factory(field.default_factory)
        elif field.default is not dataclasses.MISSING:
            kwargs["default"] = field.default
        fields[field.name] = (_model_type(hints[field.name]), Field(**kwargs))
    doc = cls.__doc__ or ""
    validators: dict[str, Any] = {f"_build_{cls.__name__}": model_validator(mode="after")(_builder(cls))}
    model: type[BaseModel] = create_model(
        cls.__name__,
        __config__=ConfigDict(extra="forbid"),
        __doc__=None if doc.startswith(f"{cls.__name__}(") else doc,  # not dataclass's generated signature
        __module__=cls.__module__,
        __validators__=validators,
        **fields,
    )
    return model


def _model_type(annotation: Any) -> Any:
    """``annotation`` with every parameter dataclass in it replaced by its model."""
    if isinstance(annotation, type) and issubclass(annotation, Checked):
        return params_model(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is None or not args:
        return annotation
    converted = tuple(_model_type(a) for a in args)
    if converted == args:
        return annotation
    if origin is types.UnionType:
        return Union[converted]  # noqa: UP007  # a tuple of types has no ``|``
    return origin[converted]


def _model_default_factory(factory: Any) -> Any:
    """A default factory whose parameter dataclasses, if any, come out as instances of their models (pydantic
    does not validate defaults)."""

    def make() -> Any:
        return _model_value(factory())

    return make


def _model_value(value: Any) -> Any:
    if isinstance(value, Checked):
        return params_model(type(value)).model_validate(dataclasses.asdict(value))
    if isinstance(value, list):
        return [_model_value(v) for v in value]
    return value


def _builder(cls: type[Checked]) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    optional = {name for name, hint in get_type_hints(cls).items() if _admits_none(hint)}

    def build(model: BaseModel) -> BaseModel:
        values = model.model_dump(include=set(names))
        # A subclass may widen a field to None, filled in later (a distill spec's image size): the dataclass
        # checks its default then.
        given = {name: value for name, value in values.items() if value is not None or name in optional}
        try:
            built = cls(**given)
        except ParamsError as exc:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("value_error", "{reason}", {"reason": reason}),
                        loc=loc,
                        input=values.get(str(loc[0])) if loc else values,
                    )
                    for loc, reason in exc.errors
                ],
            ) from None
        for name, value in given.items():
            if value is None and getattr(built, name) is not None:
                setattr(model, name, getattr(built, name))
        return model

    return build


def _admits_none(annotation: Any) -> bool:
    origin = get_origin(annotation)
    return annotation is None or ((origin is Union or origin is types.UnionType) and type(None) in get_args(annotation))
