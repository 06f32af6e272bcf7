"""Check a dashboard JSON against Grafana's own dashboard types (grafana-foundation-sdk).

The SDK's `Dashboard.from_json` parses into Grafana's generated models (panels, their plugin
options and field config, the Prometheus queries), but it drops a key it does not know and
stores whatever value it is given. So the check is two-fold: what the model writes back must
hold every key and value of the file (a dropped key is an unknown or misspelled field), and
every value in the model must have the type Grafana declares for it (a mistyped field).
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

register_default_plugins()  # the panel and query types (timeseries, stat, prometheus, ...)


def dashboard_problems(data: dict[str, Any]) -> list[str]:
    """Everything in `data` that Grafana's Dashboard type does not accept (empty: none)."""
    model = Dashboard.from_json(data)
    written = json.loads(json.dumps(model, cls=JSONEncoder))
    return _dropped(data, written, "dashboard") + _mistyped(model, Dashboard, "dashboard")


def _dropped(original: Any, written: Any, path: str) -> list[str]:
    if isinstance(original, dict):
        if not isinstance(written, dict):
            return [f"{path}: an object, read as {type(written).__name__}"]
        problems = [f"{path}.{key}: unknown field" for key in original if key not in written]
        for key in original:
            if key in written:
                problems += _dropped(original[key], written[key], f"{path}.{key}")
        return problems
    if isinstance(original, list):
        if not isinstance(written, list) or len(written) != len(original):
            return [f"{path}: a list, read as {written!r}"]
        problems = []
        for index, (item, back) in enumerate(zip(original, written, strict=True)):
            problems += _dropped(item, back, f"{path}[{index}]")
        return problems
    if original != written or type(original) is not type(written):
        return [f"{path}: {original!r} read back as {written!r}"]
    return []


def _mistyped(value: Any, hint: Any, path: str) -> list[str]:
    """Why `value` is not a `hint` (empty: it is)."""
    if hint is Any or hint is object:
        return []
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        tried = [_mistyped(value, arg, path) for arg in typing.get_args(hint)]
        if any(not problems for problems in tried):
            return []
        # name the inner problem of the alternative the value was read as (a Panel, not null)
        alternatives = [
            (arg, problems)
            for arg, problems in zip(typing.get_args(hint), tried, strict=True)
            if arg is not type(None)
        ]
        read_as = [
            problems
            for arg, problems in alternatives
            if isinstance(arg, type) and isinstance(value, arg)
        ]
        if len(read_as) == 1:
            return read_as[0]
        if len(alternatives) == 1:
            return alternatives[0][1]
        return [f"{path}: {value!r} is none of {[arg for arg, _ in alternatives]}"]
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        (item,) = typing.get_args(hint)
        return [p for i, v in enumerate(value) for p in _mistyped(v, item, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        _, item = typing.get_args(hint)
        return [p for k, v in value.items() for p in _mistyped(v, item, f"{path}.{k}")]
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if hint in (int, float):
        numeric = (int,) if hint is int else (int, float)
        ok = isinstance(value, numeric) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a number ({hint.__name__})"]
    if hint in (str, bool):
        return [] if isinstance(value, hint) else [f"{path}: {value!r} is not {hint.__name__}"]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        ok = isinstance(value, hint) or value in {member.value for member in hint}
        return [] if ok else [f"{path}: {value!r} is not one of {[m.value for m in hint]}"]
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{path}: {value!r} is not a {hint.__name__}"]
        if not hasattr(value, "to_json"):
            return []
        fields = typing.get_type_hints(type(value))
        return [
            problem
            for name, field_hint in fields.items()
            for problem in _mistyped(getattr(value, name, None), field_hint, f"{path}.{name}")
        ]
    raise TypeError(f"{path}: no check for the type {hint!r}")
