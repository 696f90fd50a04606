"""Typed, strict loading of ``params.yaml``.

``params.yaml`` is the single source of configuration. Each section loads into a frozen dataclass
(defined next to the step that reads it); :func:`from_dict` rejects unknown keys and wrong types with a
message naming the full key (``split.min_user_interactions``), so a typo in params fails loudly instead of
silently falling back to a default.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")

#: The top-level keys of params.yaml (``seed`` is a scalar, every other one a section). A key not listed here
#: is a typo or a leftover and is refused by :func:`load_params`; add a new section's name here.
SECTIONS = ("seed", "ingest", "validate", "split", "models", "train", "evaluate", "index", "export", "gates",
            "kfp", "registry")


class ParamsError(ValueError):
    """A params file or section is malformed; the message names the offending key."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, but numbers such as ``1e-3`` and ``1.0e3`` are floats.

    PyYAML follows YAML 1.1, whose float pattern needs a dot and a signed exponent, so ``lr: 1e-3`` (what
    people write, and a float to DVC's YAML 1.2 parser) would be the string "1e-3". This uses the YAML 1.2
    core-schema float pattern instead; everything else is :class:`yaml.SafeLoader`.
    """


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
# ...but a plain integer stays an int: the int resolver is tried first for the same first characters
for _ch, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _resolvers.sort(key=lambda r: r[0] != "tag:yaml.org,2002:int")


def load_yaml(text: str) -> Any:
    """Parse YAML text like :func:`yaml.safe_load`, with YAML 1.2 floats (``1e-3`` is a float)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read a YAML params file into a dict, strictly.

    Raises:
        ParamsError: a missing or malformed file, a top-level key not in :data:`SECTIONS`, or an empty
            section (``train:`` with nothing under it; write ``train: {}`` to take every default).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    check_sections(data, str(path))
    return data


def check_sections(params: Mapping[str, Any], where: str = "params") -> None:
    """ParamsError for a top-level key not in :data:`SECTIONS` or one with an empty value."""
    unknown = sorted(str(k) for k in params if k not in SECTIONS)
    if unknown:
        raise ParamsError(f"{where}: unknown top-level key(s) {', '.join(repr(k) for k in unknown)} "
                          f"(known: {', '.join(SECTIONS)})")
    for key, value in params.items():
        if value is None:
            raise ParamsError(f"{where}: {key}: is empty; give its keys (or {{}} to take every default)"
                              if key != "seed" else f"{where}: seed: is empty; give an integer")


def section(params: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """Load ``params[name]`` (a dotted path such as ``"models.mind"`` is allowed) into ``cls``."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"params: missing section '{name}'")
        node = node[part]
    if node is None:
        raise ParamsError(f"{name}: section is empty; give its keys (or {{}} to take every default)")
    return from_dict(cls, node, name)


def from_dict(cls: type[T], data: Any, prefix: str) -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Unknown keys, missing required keys and values of the wrong type raise :class:`ParamsError` naming
    ``prefix.key``. Nested dataclasses, ``list[...]``, ``dict[str, ...]``, ``Optional`` and ``Literal``
    annotations are checked recursively. ``__post_init__`` of ``cls`` then checks value ranges.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(data).__name__} ({data!r})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ParamsError(f"{prefix}: unknown key(s) {', '.join(repr(k) for k in unknown)} (known: {known})")
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}"
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{key}: required key is missing")
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{prefix}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) to plain dicts/lists, for manifests and logging."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def check_value(tp: Any, value: Any, key: str) -> Any:
    """``value`` checked against annotation ``tp`` as :func:`from_dict` checks a field (ParamsError naming
    ``key``); returns the value as the field would hold it (an int for a float field becomes a float)."""
    return _coerce(tp, value, key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ParamsError as exc:
                errors.append(str(exc))
        if len(errors) == 1:  # Optional[X]: X's own message names the inner key (gates.vs_prod.alpha ...)
            raise ParamsError(errors[0])
        raise ParamsError(f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:  # `key:` with nothing under it (Optional[...] sections returned None above)
            raise ParamsError(f"{key}: section is empty; give its keys (or {{}} to take every default)")
        return from_dict(tp, value, key)
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {type(value).__name__} ({value!r})")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, typing.Mapping, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__} ({value!r})")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ParamsError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a path string, got {value!r}")
        return Path(value)
    return value
