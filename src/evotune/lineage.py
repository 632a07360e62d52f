"""Which data and backbone an artifact was made from, so that stages refuse inputs that
do not belong together.

Kedro keeps every version of every artifact and loads the newest of each. After a
failed or partial run the newest ``backbone`` can belong to another dataset than the
newest ``target_train`` (a 6-class backbone beside 2-class tensors). Each artifact
therefore carries the fingerprint of the data it was made for (``dataset``: a hash of
the split index, i.e. every item, label, split and chunk) and, after the backbone
stage, of the backbone it starts from (``backbone_id``); every stage checks them with
:func:`check_same_lineage` before it trains.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from .errors import InputMismatchError

INDEX_KEY_COLUMNS = ("item", "label", "class_name", "split", "chunk")


def dataset_fingerprint(target_index: pd.DataFrame) -> str:
    """A short hash of the split index (items, labels, class names, splits, chunks), independent of row order."""
    cols = [c for c in INDEX_KEY_COLUMNS if c in target_index.columns]
    rows = sorted(map(tuple, target_index[cols].astype(str).to_numpy().tolist()))
    return hashlib.sha256(repr((cols, rows)).encode()).hexdigest()[:12]


def now() -> str:
    """The creation time recorded in artifacts (UTC, ISO 8601)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_same_lineage(stage: str, key: str, artifacts: dict[str, Any], rerun: str) -> str:
    """All ``artifacts`` (name -> artifact: a dict or a typed :class:`~evotune.artifacts.Artifact`)
    record the same ``key`` (``dataset`` or ``backbone_id``); otherwise :class:`InputMismatchError`
    naming each artifact's value and the command to rerun (``rerun``). Returns the common value."""
    values = {name: (a.get(key) if isinstance(a, dict) else getattr(a, key, None)) for name, a in artifacts.items()}
    if len(set(values.values())) == 1 and None not in values.values():
        return next(iter(values.values()))
    what = {"dataset": "data", "backbone_id": "backbone"}.get(key, key)
    listing = ", ".join(f"{name}: {v or 'not recorded (made by an older version)'}" for name, v in values.items())
    raise InputMismatchError(
        f"{stage}: its inputs were made from different {what} ({key} {listing}); nothing was run. "
        f"This happens when an earlier run stopped half-way. Make them again together: {rerun}."
    )


def tensor_fingerprint(*objs: Any) -> str:
    """sha1 over the bytes of the tensors (and the text of everything else) in nested containers."""
    import torch

    h = hashlib.sha1()

    def feed(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            for x in o:
                feed(x)
        else:
            h.update(repr(o).encode())

    for o in objs:
        feed(o)
    return h.hexdigest()[:10]
