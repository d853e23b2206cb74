"""Configuration: JSON-Schema validation with defaults and one clear message per error."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range; names key path and value."""


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema(path: str | os.PathLike = SCHEMA_PATH) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate(config: dict[str, Any], schema: Mapping[str, Any] | None = None, source: str = "config") -> dict:
    """Fill defaults into ``config`` in place and validate it; raise :class:`ConfigError` on the
    first problem, naming the key path (``preprocess.spacing_mm``) and the offending value."""
    schema = load_schema() if schema is None else schema
    errors = sorted(_Validator(schema).iter_errors(config),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        _check_ranges(config, schema, schema, [], source)
        _check_reference(config, source)
        return config
    error = errors[0]
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key {key!r} (allowed here: {', '.join(allowed)})")
    if error.validator == "required":
        raise ConfigError(f"{source}: {where or 'top level'}: {error.message}")
    expected = {
        "type": f"expected {error.validator_value}",
        "minimum": f"must be >= {error.validator_value}",
        "exclusiveMinimum": f"must be > {error.validator_value}",
        "maximum": f"must be <= {error.validator_value}",
        "exclusiveMaximum": f"must be < {error.validator_value}",
        "enum": f"must be one of {error.validator_value}",
        "minItems": f"needs at least {error.validator_value} item(s)",
        "maxItems": f"takes at most {error.validator_value} item(s)",
    }.get(str(error.validator), error.message)
    raise ConfigError(f"{source}: {where} = {error.instance!r}: {expected}")


def _check_ranges(instance: Any, schema: Mapping, root: Mapping, path: list[str], source: str) -> None:
    """Ranges (``$ref: #/definitions/range_*``) must read [low, high] with low <= high."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/definitions/range_") and instance[0] > instance[1]:
        raise ConfigError(f"{source}: {'.'.join(path)} = {instance!r}: must be [low, high] with low <= high")
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                _check_ranges(instance[key], sub, root, [*path, key], source)


def _check_reference(config: dict[str, Any], source: str) -> None:
    methods = config.get("track", {}).get("methods", [])
    reference = config.get("evaluate", {}).get("reference_method")
    if reference is not None and methods and reference not in methods:
        raise ConfigError(f"{source}: evaluate.reference_method = {reference!r}: must be one of track.methods "
                          f"{methods}")


def load(paths: list[str | os.PathLike]) -> dict[str, Any]:
    """Read YAML config files, later ones overriding earlier ones key by key, and validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        with open(path) as fh:
            merge(merged, yaml.safe_load(fh) or {})
    return validate(merged, source=", ".join(str(p) for p in paths))


def merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update, as Snakemake applies ``--configfile`` overlays."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
