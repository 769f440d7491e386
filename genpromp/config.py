"""Configuration: load, fill defaults and validate against the workflow's JSON schema.

Validation runs before any rule; errors name the offending key by its dotted path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

__all__ = ["SCHEMA_PATH", "load_schema", "validate_config", "load_config", "variant_name", "settings_from_section"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path=SCHEMA_PATH):
    with open(path) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance, schema, root):
    """Recursively insert schema defaults for missing keys of objects."""
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[1:]
        node = root
        for part in ref:
            node = node[part]
        schema = node
    if not isinstance(instance, dict) or schema.get("type") not in ("object", ["object", "null"]):
        return instance
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key not in instance and sub.get("type") == "object" and "properties" in sub:
            instance[key] = {}
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in props:
                _fill_defaults(value, extra, root)
    return instance


def _describe(error):
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known)) if isinstance(error.instance, dict) else []
        hint = f"; known keys here: {', '.join(known)}" if known else ""
        return f"unknown config key {'.'.join([path, *extra]) if path != '<top level>' else ', '.join(extra)!s}{hint}"
    return f"config key {path}: {error.message}"


_JSON_TYPES = {"number": (int, float), "integer": (int,), "boolean": (bool,), "null": (type(None),),
               "array": (list,), "object": (dict,)}


def _coerce_strings(config, validator):
    """Turn strings into the scalar the schema asks for (``--config 'test={"combine_ratio": 0.4}'``
    reaches the workflow as the string '0.4'); only where the YAML reading of the string has the
    expected type. Returns True when something changed."""
    changed = False
    for error in validator.iter_errors(config):
        if error.validator != "type" or not isinstance(error.instance, str) or not error.absolute_path:
            continue
        try:
            value = yaml.safe_load(error.instance)
        except yaml.YAMLError:
            continue
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if any(isinstance(value, _JSON_TYPES.get(t, ())) and not (t != "boolean" and isinstance(value, bool))
               for t in expected):
            parent = config
            for part in list(error.absolute_path)[:-1]:
                parent = parent[part]
            parent[error.absolute_path[-1]] = value
            changed = True
    return changed


def validate_config(config, schema=None):
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError naming the key."""
    schema = schema or load_schema()
    _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    while _coerce_strings(config, validator):
        pass
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    for name, ds in config["datasets"].items():
        keep = ds.get("keep_class")
        if keep is not None and len(keep) == 2 and keep[0] > keep[1]:
            raise ConfigError(f"config key datasets.{name}.keep_class: range [{keep[0]}, {keep[1]}] is empty")
    for name, run in config["runs"].items():
        if run["tokens"] == "meta" and any(w != 0 for w in [config["test"]["combine_ratio"]]):
            raise ConfigError(f"config key runs.{name}.tokens: 'meta' runs need test.combine_ratio 0 "
                              "(there are no concept tokens to mix in)")
    return config


def load_config(path, overrides=None):
    """Read a YAML config, apply a nested ``overrides`` dict, validate, return it."""
    with open(path) as fh:
        config = yaml.safe_load(fh) or {}
    if overrides:
        _merge(config, overrides)
    return validate_config(config)


def _merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def variant_name(mode, ratio, timesteps):
    """CAM cache variant: what changes the maps, e.g. ``top1_w0.60_t0-99``."""
    return f"{mode}_w{ratio:.2f}_t{'-'.join(str(int(t)) for t in timesteps)}"


def settings_from_section(cls, config, section):
    """A settings dataclass from ``config[section]`` (keys the dataclass knows), plus the global
    ``seed`` and the ``compute`` keys it declares (``mixed_precision``, ``num_workers``)."""
    fields = cls.__dataclass_fields__
    kwargs = {k: v for k, v in config[section].items() if k in fields}
    compute = config.get("compute", {})
    kwargs["seed"] = int(config.get("seed", 0))
    kwargs["mixed_precision"] = compute.get("mixed_precision", "no")
    if "num_workers" in fields:
        kwargs["num_workers"] = int(compute.get("num_workers", 0))
    return cls(**kwargs)
