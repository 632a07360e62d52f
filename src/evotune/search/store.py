"""The study store: Optuna as the record of a search, one study per search (named by :func:`study_name_for`).

The storage is the catalog entry ``search_study_store`` (:class:`evotune.io.StudyStoreDataset`), whose
load gives a :class:`StudyStore`. Every evaluation the search asks for is one trial of its study
(:data:`SEARCH_DESCRIPTION`; queued, claimed and told by :mod:`evotune.search.queue`). The evolution is
deterministic given its seed and the fitness values, so a finished trial with the same key and genes
is reused instead of trained again: that is how a killed search resumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.storages.journal import JournalFileBackend

from ..lineage import tensor_fingerprint
from .config import SearchConfig
from .queue import quiet

if TYPE_CHECKING:
    from ..backbones.checkpoint import BackboneCheckpoint
    from ..data.split import Split

#: the objective of a search study (its trials' value), as the dashboard names it
SEARCH_METRIC = "fitness (1 - val macro acc, lower is better)"

#: what a search study holds (its user attribute ``description``)
SEARCH_DESCRIPTION = (
    "One trial per genome evaluation of a search (BioTune's, or a search baseline's: DEFT, random "
    "search, TPE). Parameters: the genes, gene_<block> for each block of the backbone and "
    "gene_threshold (a block is trained iff its gene > gene_threshold). Value: the fitness, 1 - mean "
    "over seeds of the best validation macro accuracy on the evaluation's search chunk (lower is "
    "better; 1.0 for a genome that selects no block or diverged). WAITING: queued; RUNNING: being "
    "trained (user attributes worker, alive_at; runs: the trainings finished so far, by seed); "
    "FAIL: left by a dead process (queued again). User attributes: key (e.g. g3/child/2), "
    "generation, role, chunk, mask, per-seed val_accs, epochs and seconds."
)


def config_fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (parameters, data identity)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def make_storage(storage: str | None, grace_period_s: float | None = None) -> optuna.storages.BaseStorage | None:
    """An Optuna storage from a storage URL (``search.storage``).

    * ``null`` - in memory (one process, nothing survives the run);
    * ``sqlite:///path.db`` - a local file (several local processes; every transaction takes the write lock
      at its start, ``BEGIN IMMEDIATE``: SQLite has no row locks, and without it two processes' ``Study.ask``
      could both claim one waiting trial);
    * ``journal:///path.log`` - Optuna's journal file (several local processes, e.g. one per GPU);
    * ``postgresql://user:pass@host/db`` (or any SQLAlchemy URL) - several machines.

    A database's trials carry Optuna's heartbeat: one silent ``grace_period_s`` is failed and queued
    again (``RetryHeartbeatStaleTrialCallback``; :meth:`evotune.search.queue.TrialQueue.requeue_stale`).
    """
    if not storage:
        return None
    if storage.startswith("journal://"):
        path = Path(storage[len("journal://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {}
    if storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120, "isolation_level": None}}  # SQLAlchemy emits BEGIN
    grace = max(1, int(grace_period_s or 900))
    with quiet():
        opened = optuna.storages.RDBStorage(
            storage, engine_kwargs=engine_kwargs, heartbeat_interval=max(1, grace // 2), grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
        )
    if engine_kwargs:  # SQLAlchemy's recipe for pysqlite's transactions, with the write lock taken at once
        sqlalchemy.event.listen(opened.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return opened


def open_study(storage: str | None, study_name: str, *, grace_period_s: float | None = None
               ) -> tuple[optuna.Study, optuna.storages.BaseStorage | None]:
    """Create or load a search study (minimised :data:`SEARCH_METRIC`, described by
    :data:`SEARCH_DESCRIPTION`: what the Optuna dashboard shows), and its storage (None: in
    memory); a storage that cannot be opened is a clear error."""
    try:
        opened = make_storage(storage, grace_period_s)
        study = optuna.create_study(storage=opened, study_name=study_name, direction="minimize", load_if_exists=True)
    except Exception as exc:  # sqlalchemy / driver errors are deep and long
        raise ValueError(
            f"Could not open the Optuna storage '{storage}' (catalog entry search_study_store, set with "
            f"--params search.storage=...) for study "
            f"'{study_name}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Use a "
            "writable 'sqlite:///path/to/file.db' or 'journal:///path/to/file.log', a reachable "
            "'postgresql://user:pass@host/db', or null for an in-memory study."
        ) from exc
    if study.metric_names != [SEARCH_METRIC]:
        with quiet():
            study.set_metric_names([SEARCH_METRIC])
    if study.user_attrs.get("description") != SEARCH_DESCRIPTION:
        study.set_user_attr("description", SEARCH_DESCRIPTION)
    return study, opened


@dataclass(frozen=True)
class StudyStore:
    """Where a search's studies live: a storage URL (``None``: in memory, this process only).

    What the catalog entry ``search_study_store`` loads. A persistent store is what makes a
    rerun reuse the trainings already recorded, and what workers share with the search.
    """

    url: str | None

    @property
    def shared(self) -> bool:
        """Whether other processes (workers, a rerun) can see the studies."""
        return bool(self.url)

    def open(self, study_name: str) -> optuna.Study:
        """A search study (:func:`open_study`)."""
        return open_study(self.url, study_name)[0]


def study_name_for(cfg: SearchConfig, training: Any, backbone: BackboneCheckpoint, train: Split, val: Split,
                   train_chunks: Any, val_chunks: Any, *, study_name: str | None = None) -> str:
    """The study name carries a fingerprint of everything that decides the results.

    The same settings, backbone and data (with its search chunks) give the same study, so a
    rerun (or a run killed half-way) continues from the trials already recorded; anything else
    starts a fresh study beside it. ``study_name`` replaces ``search.study_name`` as the prefix
    (the search baselines name their own studies).
    """
    train_cfg = {k: v for k, v in training.__dict__.items() if k not in ("device", "cpu_threads")}
    if train_cfg.get("augment") == "none":  # no augmentation: the studies recorded before training.augment existed
        del train_cfg["augment"]
    fp = config_fingerprint(
        cfg.fingerprint_fields(), train_cfg, tensor_fingerprint(backbone.state_dict),
        tensor_fingerprint(train.labels, train_chunks, train.images),
        tensor_fingerprint(val.labels, val_chunks, val.images),
    )
    return f"{study_name or cfg.study_name}-{fp}"
