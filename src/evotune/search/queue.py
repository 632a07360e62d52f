"""Evaluations as Optuna trials shared by the search and its worker processes.

An evaluation is queued with ``Study.enqueue_trial`` (WAITING; its genes as the fixed parameters,
its request as user attributes), claimed with ``Study.ask`` (RUNNING), trained one seed after the
other (each finished training saved on the trial, user attribute ``runs``) and told with
``Study.tell``. Optuna is the coordinator; there is no other.

* **Claims.** ``Study.ask`` moves one WAITING trial to RUNNING atomically: on a journal file (its lock),
  on PostgreSQL (a row lock), on SQLite (no row locks: a transaction that takes the write lock at once,
  :func:`evotune.search.store.make_storage`). Two processes never claim the same trial.
* **Resume.** A search killed at any moment and started again finds its finished evaluations
  COMPLETE and does not train them again. A trial left RUNNING by a dead process is failed and
  queued again with ``RetryHeartbeatStaleTrialCallback``, which carries its user attributes (the
  trainings it finished are not repeated) and its fixed genes. Stale is: on a database, Optuna's
  heartbeat silent for ``search.stale_after_s`` (``fail_stale_trials``); on a journal file (no
  heartbeat in Optuna) its ``alive_at`` as long; anywhere, a worker of this host whose pid is gone,
  or a claim that never named its worker :data:`ORPHAN_AFTER_S` after it started.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import optuna

from ..genome import gene_names, genome_key

#: a genome: its genes in order (the evolution's numpy arrays, or floats)
Genes = Sequence[float] | np.ndarray

log = logging.getLogger(__name__)

WAITING, RUNNING, COMPLETE, FAIL = (optuna.trial.TrialState[s] for s in ("WAITING", "RUNNING", "COMPLETE", "FAIL"))

#: a claim names its worker at once (milliseconds after ``Study.ask``); a RUNNING trial without a worker this
#: long after it started was claimed by a process killed in between, which no heartbeat or pid can tell
ORPHAN_AFTER_S = 60.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_gone(worker: str) -> bool:
    """Whether ``worker`` (:func:`worker_id`) ran on this host and its process is gone."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except OSError as exc:
        return isinstance(exc, ProcessLookupError)
    return False


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna's heartbeat, retry and metric names are marked experimental, and its heartbeat is meant for
    ``optimize`` (here the training records it: :meth:`TrialQueue.beat`): warnings a user can do nothing about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


class TrialQueue:
    """The evaluations of one search study, queued, claimed and told. ``storage``: the study's
    (:func:`~evotune.search.store.make_storage`), whose heartbeat a database records."""

    def __init__(self, study: optuna.Study, block_names: Sequence[str], *, storage: Any = None,
                 stale_after_s: float = 900.0) -> None:
        self.study, self.stale_after_s, self.me = study, stale_after_s, worker_id()
        self.heartbeat = storage if isinstance(storage, optuna.storages.RDBStorage) else None
        self.names = gene_names(block_names)
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {
            n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self.names}

    def by_key(self) -> dict[str, optuna.trial.FrozenTrial]:
        """The newest trial of every evaluation (a COMPLETE one wins over any other)."""
        out: dict[str, optuna.trial.FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False):
            key = t.user_attrs.get("key")
            if key is not None and (key not in out or out[key].state != COMPLETE):
                out[key] = t
        return out

    def _params(self, genes: Genes) -> dict[str, float]:
        return {n: float(g) for n, g in zip(self.names, genes, strict=True)}

    def enqueue(self, key: str, genes: Genes, attrs: dict[str, Any]) -> None:
        self.study.enqueue_trial(self._params(genes), user_attrs={"key": key, "genome": genome_key(genes), **attrs})

    def add(self, key: str, genes: Genes, fitness: float, attrs: dict[str, Any]) -> None:
        """Record an evaluation that trains nothing (a genome that selects no block)."""
        self.study.add_trial(optuna.trial.create_trial(
            params=self._params(genes), distributions=self.distributions, value=fitness,
            user_attrs={"key": key, "genome": genome_key(genes), **attrs}))

    def claim(self) -> optuna.trial.Trial | None:
        """Take one waiting evaluation, or None when none is waiting."""
        while self.study.get_trials(deepcopy=False, states=(WAITING,)):
            with quiet():
                trial = self.study.ask(self.distributions)
            if "key" not in trial.user_attrs:  # another process took the last waiting one first
                self.study.tell(trial, state=FAIL)
                continue
            trial.set_user_attr("worker", self.me)
            self.beat(trial)
            return trial
        return None

    def genes(self, trial: optuna.trial.Trial) -> tuple[float, ...]:
        return tuple(float(trial.params[n]) for n in self.names)

    def beat(self, trial: optuna.trial.Trial) -> None:
        """The claim is alive: Optuna's heartbeat on a database, ``alive_at`` on any storage."""
        trial.set_user_attr("alive_at", time.time())
        if self.heartbeat is not None:
            study_id = self.heartbeat.get_study_id_from_name(self.study.study_name)
            self.heartbeat.record_heartbeat(self.heartbeat.get_trial_id_from_study_id_trial_number(study_id,
                                                                                                  trial.number))

    def release(self, trial: optuna.trial.Trial | int) -> None:
        """Fail a claimed evaluation and queue it again, with the trainings it finished."""
        with quiet():
            optuna.storages.RetryHeartbeatStaleTrialCallback()(self.study, self.study.tell(trial, state=FAIL))

    def requeue_stale(self) -> int:
        """Fail the RUNNING evaluations whose process is gone and queue them again; how many."""
        with quiet():
            optuna.storages.fail_stale_trials(self.study)  # a database's silent heartbeats (and their retries)
        now, n = time.time(), 0
        for t in self.study.get_trials(deepcopy=False, states=(RUNNING,)):
            worker = t.user_attrs.get("worker")
            if "key" not in t.user_attrs or worker == self.me:
                continue
            if worker:
                silent = self.heartbeat is None and now - t.user_attrs.get("alive_at", now) > self.stale_after_s
                stale = _pid_gone(worker) or silent
            else:  # a RUNNING trial has started
                stale = now - t.datetime_start.timestamp() > min(self.stale_after_s, ORPHAN_AFTER_S)  # type: ignore[union-attr]
            if not stale:
                continue
            try:
                self.release(t.number)
            except (ValueError, RuntimeError):  # finished (or failed by another process) meanwhile
                continue
            n += 1
            log.warning("evaluation %s was left running by %s: queued again", t.user_attrs["key"],
                        worker or "a process killed while claiming it")
        return n
