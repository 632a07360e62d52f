"""Typed artifacts: the contracts between the pipeline's nodes.

Every artifact a node hands to another (a data split, a backbone checkpoint, a genome
record, a trained method, test metrics) is a dataclass deriving from :class:`Artifact`.
Nodes take and return these objects; they become plain data (dicts, lists, numbers,
strings, tensors) only at the catalog boundary, in the typed datasets of
:mod:`evotune.io.typed` (``TypedJSONDataset``, ``TypedTorchDataset``), which call
:meth:`Artifact.to_dict` when saving and :meth:`Artifact.from_dict` when loading.

The default conversion covers dataclass fields holding plain data, other artifacts, and
lists or dicts of artifacts (found from the field's type hint). A file that lacks a
field, or has one the class does not know, was written by another version of the
project: loading it raises :class:`ArtifactError` naming the file and what to rerun.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from .errors import EvotuneError

A = TypeVar("A", bound="Artifact")


class ArtifactError(EvotuneError):
    """A saved artifact does not have the fields its class expects (another project version)."""


def _artifact_type(hint: Any) -> tuple[str, type[Artifact]] | None:
    """('one' | 'list' | 'dict', the Artifact class) when a type hint holds artifacts."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, Artifact):
        return "one", hint
    if origin in (list, tuple) and args and isinstance(args[0], type) and issubclass(args[0], Artifact):
        return "list", args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], Artifact):
        return "dict", args[1]
    if origin is typing.Union or origin is types.UnionType:
        for a in args:  # Optional[...] / X | None
            found = _artifact_type(a)
            if found:
                return found
    return None


@dataclasses.dataclass
class Artifact:
    """Base class of the typed artifacts (subclasses are dataclasses)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the catalog: nested artifacts become dicts too."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Artifact):
                v = v.to_dict()
            elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Artifact) for x in v):
                v = [x.to_dict() for x in v]
            elif isinstance(v, dict) and v and all(isinstance(x, Artifact) for x in v.values()):
                v = {k: x.to_dict() for k, x in v.items()}
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[A], data: dict[str, Any], *, source: str = "") -> A:
        """The artifact from plain data; ``source`` (a file path) is named in errors."""
        if isinstance(data, cls):
            return data
        where = f" in {source}" if source else ""
        if not isinstance(data, dict):
            raise ArtifactError(f"Expected a {cls.__name__} record{where}, found a {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        unknown = [k for k in data if k not in names]
        if missing or unknown:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(map(str, unknown))}"] if unknown else [])
            raise ArtifactError(
                f"The {cls.__name__} record{where} does not match this version of evotune ({'; '.join(parts)}): "
                "it was written by another version. Rerun the stage that writes it (or the whole kedro run)."
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for n in names:
            if n not in data:
                continue
            v = data[n]
            found = _artifact_type(hints.get(n))
            if found and v is not None:
                kind, sub = found
                if kind == "one":
                    v = sub.from_dict(v, source=source)
                elif kind == "list":
                    v = [sub.from_dict(x, source=source) for x in v]
                else:
                    v = {k: sub.from_dict(x, source=source) for k, x in v.items()}
            kwargs[n] = v
        return cls(**kwargs)
