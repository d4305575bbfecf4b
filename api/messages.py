"""422 answers people can act on: each error names its field, says what was expected and, for a
misspelt name, suggests the nearest valid one.

Pydantic's own messages say what was wrong with a value but not, for an unknown field, which
fields exist (``Extra inputs are not permitted``), and a validator's message comes prefixed
``Value error,``. :func:`shape` rewrites them once for every request: the API's
``RequestValidationError`` handler calls it.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from nas.errors import UnknownName, did_you_mean
from nas.specs import PluginRef

_PREFIXES = ("Value error, ", "Assertion failed, ")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


def _model_of(annotation: Any) -> Any:
    """``annotation`` without ``Annotated``, ``None`` in a union, or a list around it."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return None
            annotation = rest[0]
        elif origin is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


def fields_at(model: type[BaseModel] | None, loc: Sequence[str | int], body: Any) -> list[str] | None:
    """The field names of the object at ``loc`` (below ``model``), or None where no model says.

    A plug-in's ``params`` are its registered ``Params``, found by the ``name`` beside them in ``body``.
    """
    node: Any = model
    for part in loc:
        if isinstance(part, int):
            body = body[part] if isinstance(body, list) and -len(body) <= part < len(body) else None
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
        if issubclass(node, PluginRef) and part == "params":
            try:
                node = node.registry.get(body.get("name") if isinstance(body, dict) else None).Params
            except UnknownName:
                return None
        else:
            field = node.model_fields.get(part)
            if field is None:
                return None
            node = _model_of(field.annotation)
        body = body.get(part) if isinstance(body, dict) else None
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else None


def _field(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path") else loc)) or "the body"


def _shape_one(
    error: dict[str, Any], model: type[BaseModel] | None, body: Any, forms: Mapping[str, str]
) -> dict[str, Any]:
    error = dict(error)
    kind, loc, given = error.get("type", ""), list(error.get("loc", ())), error.get("input")
    ctx = error.get("ctx") or {}
    message = str(error.get("msg", ""))
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    if kind == "extra_forbidden" and loc:
        valid = ctx.get("valid") or (fields_at(model, loc[1:-1], body) if loc[0] == "body" else None)
        if valid:
            name = str(loc[-1])
            what = f"query parameter {name!r}" if loc[0] == "query" else f"field {name!r} in {_field(loc[:-1])}"
            message = f"unknown {what} (valid: {', '.join(valid)}){did_you_mean(name, valid)}"
    elif kind in ("literal_error", "enum") and isinstance(given, str):
        expected = _QUOTED.findall(str(ctx.get("expected", "")))
        message = f"{given!r} is not one of {ctx.get('expected', '')}{did_you_mean(given, expected)}"
    elif kind == "string_pattern_mismatch" and len(loc) > 1 and loc[0] == "query" and loc[1] in forms:
        message = f"{given!r} is not of the form {forms[str(loc[1])]}"
    elif kind in ("model_type", "model_attributes_type", "dict_type") and isinstance(given, str):
        if str(ctx.get("class_name", "")).endswith("Ref") or (loc and fields_at(model, loc[1:], body) == ["name", "params"]):
            message = f"expected a mapping {{name, params}}: write {{name: {given}, params: {{}}}}"
    error["msg"] = message  # ``loc`` names the field; clients print it beside the message
    return error


def shape(
    errors: Sequence[dict[str, Any]], model: type[BaseModel] | None = None, body: Any = None,
    forms: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """``errors`` (pydantic's or FastAPI's) with messages that name the field, say what was expected
    and suggest the nearest valid name; ``model`` is the request body's model, ``body`` what was sent,
    ``forms`` the described form of each query parameter (said instead of a pattern)."""
    return [_shape_one(error, model, body, forms or {}) for error in errors]
