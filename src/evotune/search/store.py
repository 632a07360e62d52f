"""The study store: Optuna as the record of a search.

The study storage is the catalog entry ``search_study_store``
(:class:`evotune.io.StudyStoreDataset`), whose load gives a :class:`StudyStore`. A
search's study is named by :func:`study_name_for`.

The search loop is the project's own (:mod:`evotune.search.evolution`); every evaluation it
asks for is stored as one Optuna trial: the genes as parameters named after their blocks
(``gene_<block>``, ``gene_threshold`` last: :func:`evotune.genome.gene_names`, the column
names of the trials table; ``FloatDistribution(0, 1)``), the fitness as the value (the
study's metric name, :data:`SEARCH_METRIC`), the span of its trainings as the trial's start
and end (the dashboard's timeline), and the request key, generation, role, chunk, block mask,
per-seed accuracies and timings as user attributes. Because the loop is deterministic given
its seed and the fitness values, a finished trial with the same key and genes is reused
instead of trained again: that is how a killed search resumes.

Trials recorded before the genes were named after their blocks carry the index names
``g00..gNN`` (:func:`index_gene_names`). A study holding them is still read and resumed:
trials are matched by their key and genes (user attributes), never by parameter name, and
:func:`genes_from_params` reads genes under either naming.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ..genome import gene_names, genome_key
from ..lineage import tensor_fingerprint
from .config import SearchConfig

log = logging.getLogger(__name__)


#: the objective of a search study (its trials' value), as the dashboard names it
SEARCH_METRIC = "fitness (1 - val macro acc, lower is better)"

#: what a search study holds (its user attribute ``description``)
SEARCH_DESCRIPTION = (
    "One trial per genome evaluation of a search (BioTune's, or a search baseline's: DEFT, random "
    "search, TPE). Parameters: the genes, gene_<block> for each block of the backbone and "
    "gene_threshold (a block is trained iff its gene > gene_threshold). Value: the fitness, 1 - mean "
    "over seeds of the best validation macro accuracy on the evaluation's search chunk (lower is "
    "better; 1.0 for a genome that selects no block or diverged). Start/end: the first of its "
    "trainings started, the last ended. User attributes: key (e.g. g3/child/2), generation, role, "
    "chunk, mask, per-seed val_accs, epochs and seconds."
)


def gene_param_names(block_names: Sequence[str]) -> list[str]:
    """The parameter names of a search's trials: :func:`evotune.genome.gene_names`."""
    return gene_names(block_names)


def index_gene_names(num_genes: int) -> list[str]:
    """``g00..gNN``: the parameter names trials carried before they were named after blocks
    (still read, see :func:`genes_from_params`; TPE's own in-memory sampler study keeps them)."""
    return [f"g{i:02d}" for i in range(num_genes)]


def genes_from_params(params: Mapping[str, Any], names: Sequence[str]) -> tuple[float, ...]:
    """The genes of a trial whose parameters are ``names`` or, recorded by an earlier version,
    the index names ``g00..gNN``."""
    for candidate in (list(names), index_gene_names(len(names))):
        if all(n in params for n in candidate):
            return tuple(float(params[n]) for n in candidate)
    raise RuntimeError(
        f"A trial's parameters {sorted(params)} are not the genes {list(names)}: the study was written "
        "for another backbone. Set search.study_name to a new name (or delete the study)."
    )


def describe_study(study: optuna.Study, metric: str, description: str) -> None:
    """Name the study's objective (``Study.set_metric_names``) and say what it holds (user
    attribute ``description``): what the Optuna dashboard shows. Written only when it changed."""
    if study.metric_names != [metric]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
    if study.user_attrs.get("description") != description:
        study.set_user_attr("description", description)


def local_datetime(timestamp: float) -> datetime.datetime:
    """A ``time.time()`` timestamp as Optuna's trial datetimes are (naive, local time)."""
    return datetime.datetime.fromtimestamp(float(timestamp))


def config_fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (parameters, data identity)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def make_storage(storage: str | None):
    """An Optuna storage from a storage URL (``search.storage``).

    * ``null`` - in memory (one process, nothing survives the run);
    * ``sqlite:///path.db`` - a local file (several local processes; writes are serialised);
    * ``journal:///path.log`` - Optuna's journal file (several local processes, e.g. one per GPU);
    * ``postgresql://user:pass@host/db`` (or any SQLAlchemy URL) - several machines.
    """
    if not storage:
        return None
    if storage.startswith("journal://"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(storage[len("journal://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {}
    if storage.startswith("sqlite:///"):
        path = Path(storage[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)


def open_study(storage: str | None, study_name: str, direction: str = "minimize", *,
               metric: str = SEARCH_METRIC, description: str = SEARCH_DESCRIPTION) -> optuna.Study:
    """Create or load a study, its objective named ``metric`` and described by ``description``
    (:func:`describe_study`); a storage that cannot be opened is a clear error."""
    try:
        study = optuna.create_study(
            storage=make_storage(storage),
            study_name=study_name,
            direction=direction,
            load_if_exists=True,
        )
    except Exception as exc:  # sqlalchemy / driver errors are deep and long
        raise ValueError(
            f"Could not open the Optuna storage '{storage}' (catalog entry search_study_store, set with "
            f"--params search.storage=...) for study "
            f"'{study_name}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. Use a "
            "writable 'sqlite:///path/to/file.db' or 'journal:///path/to/file.log', a reachable "
            "'postgresql://user:pass@host/db', or null for an in-memory study."
        ) from exc
    describe_study(study, metric, description)
    return study


class TrialRecorder:
    """Writes evaluations to a study and finds the ones already there."""

    def __init__(self, study: optuna.Study, block_names: Sequence[str]) -> None:
        self.study = study
        self.names = gene_param_names(block_names)
        self.distributions = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self.names}
        self._done: dict[str, optuna.trial.FrozenTrial] = {}
        self.refresh()
        legacy = sum(1 for t in self._done.values() if self.names[0] not in t.params)
        if legacy:
            log.info("study %s holds %d evaluation(s) recorded with the gene names g00..g%02d (an earlier "
                     "version): they are reused; new ones are named %s", study.study_name, legacy,
                     len(self.names) - 1, ", ".join(self.names))

    def refresh(self) -> None:
        states = (optuna.trial.TrialState.COMPLETE,)
        for t in self.study.get_trials(deepcopy=False, states=states):
            key = t.user_attrs.get("key")
            if key is not None and key not in self._done:
                self._done[key] = t

    @property
    def completed(self) -> int:
        """How many evaluations the study already holds."""
        return len(self._done)

    def lookup(self, key: str, genes) -> optuna.trial.FrozenTrial | None:
        """A finished trial for this request, or None. A key with other genes is an error."""
        t = self._done.get(key)
        if t is None:
            return None
        if t.user_attrs.get("genome") != genome_key(genes):
            raise RuntimeError(
                f"The study '{self.study.study_name}' already holds evaluation '{key}' with other "
                "genes: it was written by a search with different settings. Set search.study_name "
                "to a new name (or delete the study) to start afresh."
            )
        return t

    def record(self, key: str, genes, fitness: float, attrs: dict[str, Any], *, started: float,
               finished: float) -> optuna.trial.FrozenTrial:
        """Record one evaluation; ``started`` / ``finished``: ``time.time()`` of when its first
        training started and its last ended (the trial's start and end)."""
        params = {n: float(v) for n, v in zip(self.names, np.asarray(genes, dtype=float), strict=True)}
        user_attrs = {"key": key, "genome": genome_key(genes), **_jsonable(attrs)}
        trial = optuna.trial.create_trial(
            params=params,
            distributions=self.distributions,
            value=float(fitness),
            user_attrs=user_attrs,
        )
        trial.datetime_start = local_datetime(started)
        trial.datetime_complete = local_datetime(max(started, finished))
        self.study.add_trial(trial)
        self._done[key] = trial
        return trial


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


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
        """A search study (minimised fitness, :data:`SEARCH_METRIC`)."""
        return open_study(self.url, study_name)


def study_name_for(cfg: SearchConfig, training: Any, backbone: dict, train: dict, val: dict,
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
