"""Reading parameters: ``conf/base`` is the only source of defaults.

Every parameter the project reads is written, with its default and a comment, in
``conf/base/parameters_<pipeline>.yml``; the code holds no second set of fallbacks.
A node or a check reads a group with :func:`from_params` (into a dataclass whose
fields are the group's keys, with their types) or :func:`require`, so that

* a missing key is an error that names it and the file it belongs in,
* a key nobody reads (a typo) is an error that lists the valid keys,
* a value of the wrong type (``--params search.generations=abc``, a single seed where
  a list is expected) is an error that names the parameter and the expected type,

all as one :class:`~evotune.errors.ParameterError`, before anything trains.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar, Union

from .errors import ParameterError

#: the file under conf/base/ that holds each top-level parameter group
PARAMETER_FILES = {
    "source_pretraining": "parameters_source_pretraining.yml",
    "data": "parameters_data_processing.yml",
    "backbone": "parameters_backbone.yml",
    "search": "parameters_search.yml",
    "training": "parameters_training.yml",
    "retrain": "parameters_retrain.yml",
    "fidelity": "parameters_fidelity.yml",
    "compare": "parameters_compare.yml",
    "export": "parameters_export.yml",
    "predict": "parameters_predict.yml",
    "progress": "parameters.yml",
    "tracking": "parameters_tracking.yml",
    "paper": "conf/paper/parameters.yml",
}

T = TypeVar("T")


def where(path: str) -> str:
    """The parameter file that holds ``path`` (a dotted parameter name)."""
    name = PARAMETER_FILES.get(path.split(".")[0], "parameters.yml")
    return name if "/" in name else f"conf/base/{name}"


def section(params: Any, path: str) -> dict[str, Any]:
    """``params`` as a mapping, or an error naming ``path``."""
    if not isinstance(params, Mapping):
        raise ParameterError(f"{path} must be a mapping of parameters ({where(path)}); got {params!r}.")
    return dict(params)


def require(params: Any, key: str, path: str) -> Any:
    """``params[key]``; a missing key is an error naming ``path.key`` and its file."""
    mapping = section(params, path)
    if key not in mapping:
        raise ParameterError(missing_message([f"{path}.{key}"]))
    return mapping[key]


def missing_message(names: list[str]) -> str:
    files = sorted({where(n) for n in names})
    return (f"Missing parameter(s) {', '.join(names)}: every parameter is set in conf/base "
            f"({', '.join(files)}); restore the key there, or override it in conf/local or with --params.")


def require_keys(params: Any, path: str, keys: Sequence[str]) -> dict[str, Any]:
    """The group ``path`` as a dict holding exactly ``keys``: a missing key is an error naming it
    and its file, an unknown key (a typo) an error listing the valid ones. For groups whose
    values need checks of their own (see :func:`from_params` for typed dataclasses)."""
    mapping = section(params, path)
    missing = [f"{path}.{k}" for k in keys if k not in mapping]
    if missing:
        raise ParameterError(missing_message(missing))
    unknown = sorted(set(mapping) - set(keys))
    if unknown:
        raise ParameterError(f"Unknown parameter(s) {', '.join(f'{path}.{k}' for k in unknown)}; valid keys of "
                             f"{path} are {', '.join(keys)} ({where(path)}).")
    return mapping


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        parts = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        inner = typing.get_args(annotation)[0]
        return f"a list of {_describe(inner).removeprefix('an ').removeprefix('a ')}s"
    if annotation is Any:
        return "any value"
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


class _Mismatch(Exception):
    pass


def _convert(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        inner = typing.get_args(annotation)[0]
        return origin(_convert(v, inner) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported parameter annotation {annotation!r}")


def check_type(value: Any, annotation: Any, name: str) -> Any:
    """``value`` converted to ``annotation`` (int, float, bool, str, X | None, tuple[X, ...],
    list[X]); otherwise a :class:`ParameterError` naming ``name`` and the expected type."""
    try:
        return _convert(value, annotation)
    except _Mismatch:
        hint = " (a list goes in brackets: --params \"name=[a,b]\")" if typing.get_origin(annotation) in (tuple, list) else ""
        raise ParameterError(f"{name} must be {_describe(annotation)}, got {value!r}{hint}.") from None


def from_params(cls: type[T], params: Any, path: str) -> T:
    """Build the dataclass ``cls`` from the parameter group ``path``: every field is a
    required key, checked against the field's type. One error lists every problem."""
    mapping = section(params, path)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    problems = []
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        problems.append(f"Unknown parameter(s) {', '.join(f'{path}.{k}' for k in unknown)}; valid keys of {path} "
                        f"are {', '.join(names)} ({where(path)}).")
    missing = [f"{path}.{n}" for n in names if n not in mapping]
    if missing:
        problems.append(missing_message(missing))
    values = {}
    for n in names:
        if n in mapping:
            try:
                values[n] = check_type(mapping[n], hints[n], f"{path}.{n}")
            except ParameterError as exc:
                problems.append(str(exc))
    if problems:
        raise ParameterError("\n  - ".join(problems) if len(problems) == 1 else
                             "Invalid parameters:\n  - " + "\n  - ".join(problems))
    return cls(**values)
