"""Configuration: load, fill defaults and validate against the workflow's JSON schema.

Validation runs before any rule; errors name the offending key by its dotted path.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError

__all__ = ["SCHEMA_PATH", "load_schema", "schema_entry", "schema_default", "validate_config", "load_config",
           "settings_from_section"]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path=SCHEMA_PATH):
    with open(path) as fh:
        return yaml.safe_load(fh)


@functools.lru_cache(maxsize=1)
def _packaged_schema():
    return load_schema()


def _schema_node(key, root):
    """The sub-schema of the dotted config key ``key``; a map keyed by name (``datasets``) takes any name."""
    node = _resolve(root, root)
    for part in key.split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            raise ConfigError(f"the config schema has no key {key} (nothing named {part!r} there)")
        node = _resolve(node, root)
    return node


def schema_entry(key):
    """A copy of the config schema's entry for the dotted key ``key``, e.g. ``schema_entry("evaluation.protocols")``."""
    return copy.deepcopy(_schema_node(key, _packaged_schema()))


def schema_default(key):
    """The config schema's default of the dotted key ``key`` (a copy).

    ``schema_default("evaluation.frame")`` → 512; a name-keyed map takes any name, e.g.
    ``schema_default("datasets.*.cam_thr")``. An object without a default of its own gets its sub-keys'
    defaults (``schema_default("evaluation.sweep")`` → {start, stop, step}). ConfigError when there is none.
    """
    root = _packaged_schema()
    node = _schema_node(key, root)
    if "default" in node:
        return copy.deepcopy(node["default"])
    if "object" in _types(node) and "properties" in node:
        return _fill_defaults({}, node, root)
    raise ConfigError(f"config key {key} has no default in the schema; give it explicitly")


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


def _describe(error, root):
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    bad = _string_error(error, root)
    if bad is not None:
        where = ".".join(str(p) for p in bad.absolute_path) or "<top level>"
        return f"config key {where} is the string {bad.instance!r}; expected {_expected(bad.schema, root)}"
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known)) if isinstance(error.instance, dict) else []
        hint = f"; known keys here: {', '.join(known)}" if known else ""
        return f"unknown config key {'.'.join([path, *extra]) if path != '<top level>' else ', '.join(extra)!s}{hint}"
    return f"config key {path}: {error.message}"


_JSON_TYPES = {"number": (int, float), "integer": (int,), "boolean": (bool,), "null": (type(None),),
               "array": (list,), "object": (dict,), "string": (str,)}
# How YAML writes null; Snakemake's --config hands a nested ``null`` over as the string 'null'.
_NULL_WORDS = ("null", "Null", "NULL", "~")


def _resolve(schema, root):
    """Follow a local ``$ref`` ('#/definitions/...') to the schema it names."""
    while isinstance(schema, dict) and "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            node = node[part]
        schema = node
    return schema


def _types(schema):
    t = schema.get("type")
    return [t] if isinstance(t, str) else list(t or [])


def _is_type(value, name):
    if name in ("number", "integer") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(name, ()))


def _read_string(text, types):
    """The value of ``text`` as the first of ``types`` it can be read as, or ``text`` itself."""
    for name in types:
        if name == "null" and text.strip() in _NULL_WORDS + ("",):
            return None
        if name == "boolean":
            value = _yaml_scalar(text)
            if isinstance(value, bool):
                return value
        if name == "integer":
            try:
                return int(text.strip())
            except ValueError:
                value = _number(text)
                if value is not None and value.is_integer():
                    return int(value)
        if name == "number":
            try:
                return int(text.strip())  # '0' reads as 0, as YAML reads it
            except ValueError:
                value = _number(text)
                if value is not None:
                    return value
        if name in ("array", "object"):
            value = _yaml_scalar(text)
            if _is_type(value, name):
                return value
    return text


def _yaml_scalar(text):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _number(text):
    try:
        return float(text)  # accepts 1e-5, which YAML 1.1 reads as a string
    except ValueError:
        return None


def _coerce(value, schema, root):
    """``value`` with every string turned into the type the schema asks for at its place.

    Snakemake's ``--config`` reads nested values with YAML's base loader, so
    ``'datasets={"cub": {"keep_class": [0, 2]}}'`` arrives as ``{"cub": {"keep_class": ["0", "2"]}}``
    and ``'test={"combine_ratio": 0.4}'`` as ``{"combine_ratio": "0.4"}``. This walks the value
    along the schema (``$ref``, ``oneOf``/``anyOf``/``allOf``, typed scalars, arrays, objects) and
    converts strings only where a string is not itself allowed; values that cannot be read as an
    allowed type stay as they are, so validation reports them.
    """
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return value
    for sub in schema.get("allOf", []):
        value = _coerce(value, sub, root)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            value = _coerce_alternatives(value, schema[key], root)
    types = _types(schema)
    if isinstance(value, str) and "null" in types and value.strip() in _NULL_WORDS:
        value = None
    elif isinstance(value, str) and types and "string" not in types:
        value = _read_string(value, types)
    if isinstance(value, list) and (not types or "array" in types):
        items = schema.get("items")
        prefix = schema.get("prefixItems", [])
        value = [_coerce(v, prefix[i] if i < len(prefix) else items, root) if (i < len(prefix) or items) else v
                 for i, v in enumerate(value)]
    if isinstance(value, dict) and (not types or "object" in types):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        value = {k: _coerce(v, props[k], root) if k in props else
                 (_coerce(v, extra, root) if isinstance(extra, dict) else v) for k, v in value.items()}
    return value


def _coerce_alternatives(value, alternatives, root):
    """The first reading of ``value`` that one of the ``alternatives`` accepts (else ``value``)."""
    for sub in alternatives:
        if jsonschema.Draft202012Validator(_with_definitions(sub, root)).is_valid(value):
            return value
    fallback = value
    for sub in alternatives:
        candidate = _coerce(value, sub, root)
        if jsonschema.Draft202012Validator(_with_definitions(sub, root)).is_valid(candidate):
            return candidate
        if fallback is value and candidate is not value and \
                any(_is_type(candidate, t) for t in _types(_resolve(sub, root))):
            fallback = candidate  # right shape, a bad part: validation names that part
    return fallback


def _with_definitions(schema, root):
    """``schema`` with the root's definitions, so its local ``$ref`` resolve on their own."""
    return {**schema, "definitions": root.get("definitions", {})} if isinstance(schema, dict) else schema


def _expected(schema, root):
    """Plain words for what ``schema`` accepts, e.g. 'null or an array of integer'."""
    schema = _resolve(schema, root)
    words = []
    for key in ("oneOf", "anyOf"):
        words += [_expected(sub, root) for sub in schema.get(key, [])]
    for name in _types(schema):
        if name == "array" and isinstance(schema.get("items"), dict) and _types(_resolve(schema["items"], root)):
            words.append(f"a list of {_expected(schema['items'], root)}")
        else:
            words.append(name)
    if "enum" in schema:
        words.append("one of " + ", ".join(map(str, schema["enum"])))
    return " or ".join(dict.fromkeys(w for w in words if w)) or "a value the schema allows"


def _string_error(error, root):
    """For a string that no allowed type could read: the error naming that string, else None."""
    candidates = [error] + list(getattr(error, "context", None) or [])
    for err in sorted(candidates, key=lambda e: -len(e.absolute_path)):
        if err.validator in ("type", "oneOf", "anyOf") and isinstance(err.instance, str):
            return err
    return None


def _coerce_strings(config, schema):
    """Convert, in place, the strings of ``config`` that the schema wants as another type."""
    coerced = _coerce(config, schema, schema)
    config.clear()
    config.update(coerced)


def validate_config(config, schema=None):
    """Validate ``config`` in place (defaults filled) and return it; raise ConfigError naming the key."""
    schema = schema or load_schema()
    _coerce_strings(config, schema)
    _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e, schema) for e in errors))
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
