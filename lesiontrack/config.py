"""Configuration: JSON-Schema validation with defaults and one clear message per error."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"  # shipped inside the package


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range; names key path and value."""


Settings = TypeVar("Settings")


def settings_from(values: Mapping[str, Any] | None, cls: type[Settings], section: str,
                  workflow_keys: Iterable[str] = (), base: Settings | None = None) -> Settings:
    """The settings dataclass ``cls`` from a config ``section`` (lists become tuples), laid over
    ``base`` (default: the class's defaults). Keys of ``workflow_keys`` belong to the workflow and
    are passed over; any other key that is not a field is an error naming ``section.key``, and so
    is a value of the wrong kind; a ``ValueError`` of the class's own checks becomes a
    :class:`ConfigError` naming ``section``."""
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names - set(workflow_keys))
    if unknown:
        raise ConfigError(f"unknown key '{section}.{unknown[0]}' (settings: {', '.join(sorted(names))})")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    defaults = base if base is not None else cls()
    nullable = {f.name for f in dataclasses.fields(cls) if "None" in str(f.type)}
    for key, value in converted.items():
        if not (value is None and key in nullable):
            _check_kind(f"{section}.{key}", value, getattr(defaults, key))
    try:  # the class's own checks (__post_init__): ranges, choices, lengths that agree
        return dataclasses.replace(base, **converted) if base is not None else cls(**converted)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{section}: {error}") from None


def _check_kind(key: str, value: Any, default: Any) -> None:
    """Stop, naming ``key`` and ``value``, where a value is not of its default's kind: a number
    (int or float, never a bool), a bool, a string or a list; a setting whose default is None takes
    anything (the caller lets None through where the field's type allows it)."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    kinds = ((bool, lambda v: isinstance(v, bool), "boolean"), (int | float, number, "number"),
             (str, lambda v: isinstance(v, str), "string"), (tuple, lambda v: isinstance(v, tuple), "list"))
    for kind, accepts, name in kinds:
        if isinstance(default, kind):
            if not accepts(value):
                raise ConfigError(f"{key} = {list(value) if isinstance(value, tuple) else value!r}: expected {name} "
                                  f"(default {default!r})")
            return


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
    _check_finite(config, [], source)
    if not errors:
        _check_ranges(config, schema, schema, [], source)
        _check_reference(config, source)
        _check_processes(config, source)
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
    raise ConfigError(f"{source}: {where} = {_shown(error.instance)}: {expected}")


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_finite(instance: Any, path: list[str], source: str) -> None:
    """Every number of a config is finite: YAML's .nan and .inf pass the schema's bounds (a NaN
    compares false with every bound) and would fail much later."""
    if isinstance(instance, float) and not math.isfinite(instance):
        raise ConfigError(f"{source}: {'.'.join(path)} = {instance!r}: expected a finite number")
    if isinstance(instance, dict):
        for key, value in instance.items():
            _check_finite(value, [*path, str(key)], source)
    elif isinstance(instance, list):
        for k, value in enumerate(instance):
            _check_finite(value, [*path, str(k)], source)


def _check_ranges(instance: Any, schema: Mapping, root: Mapping, path: list[str], source: str) -> None:
    """Ranges (``$ref: #/definitions/range_*``) must read [low, high] with low <= high."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/definitions/range_") and instance[0] > instance[1]:
        raise ConfigError(f"{source}: {'.'.join(path)} = {_shown(instance)}: must be [low, high] with low <= high")
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


def _check_processes(config: dict[str, Any], source: str) -> None:
    """Data-parallel training splits each batch evenly over its processes."""
    train = config.get("train", {})
    processes, batch = train.get("processes", 1), train.get("batch_size")
    if batch is not None and batch % processes:
        raise ConfigError(f"{source}: train.batch_size = {batch}: must be a multiple of train.processes = "
                          f"{processes}")


def load(paths: list[str | os.PathLike]) -> dict[str, Any]:
    """Read YAML config files, later ones overriding earlier ones key by key, and validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        merge(merged, read_yaml(path))
    return validate(merged, source=", ".join(str(p) for p in paths) or "the packaged defaults")


MAX_CONFIG_BYTES = 1 << 20  # a config is a page of settings; anything near a megabyte is not one


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, without anchors and aliases (a config needs neither, and aliases of
    aliases expand exponentially: the "billion laughs") and with each key once per mapping (a key
    given twice would otherwise keep the last value without a word)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML {kind}{event.anchor} refused: a config file "
                              "holds plain keys and values (no anchors or aliases)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice in one mapping "
                                  f"(first at line {seen[key] + 1})")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _ConfigLoader.construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a mapping; a syntax error, an anchor or alias, a key given twice and a
    file over :data:`MAX_CONFIG_BYTES` name the file (and line)."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size} bytes: not a config file (at most {MAX_CONFIG_BYTES})")
        with open(path) as fh:
            values = yaml.load(fh, Loader=_ConfigLoader)  # a SafeLoader: no tag builds a Python object
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: {where}not valid YAML ({problem})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file holds keys and values, not {type(values).__name__}")
    return values


def merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update, as Snakemake applies ``--configfile`` overlays."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
