"""Walking params models: which fields exist at a location, and which carry a marker (files, models)."""

from __future__ import annotations

import types
import typing
from typing import Any, Iterator

from pydantic import BaseModel


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated/list/dict annotations."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    if origin in (list, tuple, set, frozenset):
        out = []
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                out.extend(_unwrap(arg))
        return out
    if origin is dict:
        args = typing.get_args(annotation)
        return _unwrap(args[1]) if len(args) == 2 else []
    return [annotation]


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    return [t for t in _unwrap(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]


def fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str] | None:
    """Field names of the (nested) model found at ``loc``; None if ``loc`` leaves the models."""
    current: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt: list[type[BaseModel]] = []
        for m in current:
            f = m.model_fields.get(str(part))
            if f is not None:
                nxt.extend(_submodels(f.annotation))
        if not nxt:
            return None
        current = nxt
    names: set[str] = set()
    for m in current:
        names.update(m.model_fields)
    return names


def iter_marked(instance: BaseModel, marker: object, loc: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Yield (loc, value) for every non-empty field value annotated with ``marker`` (recursively)."""
    for name, f in type(instance).model_fields.items():
        value = getattr(instance, name)
        if value is None:
            continue
        here = loc + (name,)
        if _has_marker(f.annotation, marker) or marker in f.metadata:
            if isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    if v is not None:
                        yield here + (i,), v
            else:
                yield here, value
            continue
        if isinstance(value, BaseModel):
            yield from iter_marked(value, marker, here)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, BaseModel):
                    yield from iter_marked(v, marker, here + (i,))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, BaseModel):
                    yield from iter_marked(v, marker, here + (k,))


def _has_marker(annotation: Any, marker: object) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        args = typing.get_args(annotation)
        return any(a is marker for a in args[1:]) or _has_marker(args[0], marker)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(_has_marker(a, marker) for a in typing.get_args(annotation) if a is not Ellipsis)
    return False
