"""Validate lapstream messages against the v1 JSON Schemas (test helper).

    from schemacheck import validate, SCHEMA_KINDS
    validate(event)   # raises jsonschema.ValidationError if the event is invalid

The schemas live in the installed ``schemas`` package, folder ``json``, one
``<kind>.schema.json`` per message kind. They are loaded once and cached.

Strictness beyond plain JSON Schema: in JSON Schema ``1.0`` *is* an integer,
so a schema cannot reject ``"time_ms": 34320.0``. For the pipeline's own
output that is still a bug (a Python float leaking into an integer field), so
this helper's validators use a type checker whose "integer" accepts Python
``int`` only (never ``bool``, never ``float``). The schema files themselves
keep standard semantics for other consumers.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any, Mapping

import jsonschema
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource

__all__ = ["SCHEMA_KINDS", "ValidationError", "load_schemas", "validator_for", "validate"]

_SUFFIX = ".schema.json"


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_StrictValidator = jsonschema.validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer),
)


@functools.cache
def load_schemas() -> Mapping[str, dict]:
    """kind -> schema (parsed JSON), from schemas/json/*.schema.json."""
    folder = importlib.resources.files("schemas") / "json"
    out: dict[str, dict] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(_SUFFIX):
            out[entry.name[: -len(_SUFFIX)]] = json.loads(entry.read_text(encoding="utf-8"))
    if not out:
        raise RuntimeError(f"no *{_SUFFIX} files found in {folder}")
    return out


@functools.cache
def _registry() -> Registry:
    # All schemas by $id, so cross-file refs (standings -> result's ranking entry) resolve
    # locally and never over the network.
    return Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in load_schemas().values()
    )


@functools.cache
def validator_for(kind: str) -> Draft202012Validator:
    """The cached validator of one kind (KeyError if the kind has no schema)."""
    return _StrictValidator(load_schemas()[kind], registry=_registry())


def validate(event: dict) -> None:
    """Raise jsonschema.ValidationError unless `event` is a valid message of its kind."""
    if not isinstance(event, dict):
        raise ValidationError(f"message is not a JSON object: {type(event).__name__}")
    kind = event.get("kind")
    if not isinstance(kind, str):
        raise ValidationError(f"'kind' missing or not a string: {kind!r}")
    if kind not in SCHEMA_KINDS:
        raise ValidationError(f"unknown kind {kind!r}")
    error = jsonschema.exceptions.best_match(validator_for(kind).iter_errors(event))
    if error is not None:
        raise error


SCHEMA_KINDS: frozenset[str] = frozenset(load_schemas())
