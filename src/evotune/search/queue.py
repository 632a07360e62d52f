"""Evaluations as Optuna trials shared by the search and its worker processes.

An evaluation is queued with ``Study.enqueue_trial`` (WAITING; its genes as the fixed
parameters, its request as user attributes), claimed with ``Study.ask`` (Optuna moves one
WAITING trial to RUNNING atomically in its storage, so two processes never claim the same
one), trained one seed after the other (each finished training saved on the trial, user
attribute ``runs``) and finished with ``Study.tell``. Optuna is the coordinator; there is no other.

* **Resume.** A search killed at any moment and started again finds its finished evaluations
  COMPLETE and does not train them again. A trial left RUNNING by a dead process is failed
  and queued again with ``RetryHeartbeatStaleTrialCallback``, which carries its user attributes: the
  trainings it finished are not repeated. Stale is: on a database, Optuna's heartbeat silent
  for ``search.stale_after_s`` (``fail_stale_trials``); on a journal file (no heartbeat in
  Optuna) its ``alive_at`` as long; anywhere, a worker of this host whose pid is gone, or a
  claim that never named its worker :data:`ORPHAN_AFTER_S` after it started.
* **Parallel workers.** Any number of worker processes (one per GPU, or on several machines
  with a PostgreSQL storage) claim evaluations of the same study while the search waits.
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
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's heartbeat and retry are marked experimental, and its heartbeat is meant for ``optimize``
    (here the training records it: :meth:`TrialQueue.beat`): warnings a user can do nothing about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


class TrialQueue:
    """The evaluations of one search study, queued, claimed and told."""

    def __init__(self, study: optuna.Study, block_names: Sequence[str], *, storage: Any = None,
                 stale_after_s: float = 900.0) -> None:
        self.study = study
        # the study's storage (:func:`~evotune.search.store.make_storage`) when it records Optuna's heartbeat
        self.heartbeat = storage if isinstance(storage, optuna.storages.RDBStorage) else None
        self.names = gene_names(block_names)
        self.distributions: dict[str, optuna.distributions.BaseDistribution] = {
            n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self.names}
        self.stale_after_s = stale_after_s
        self.me = worker_id()
        self._study_id: int | None = None

    def by_key(self) -> dict[str, optuna.trial.FrozenTrial]:
        """The newest trial of every evaluation (a COMPLETE one wins over any other)."""
        out: dict[str, optuna.trial.FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False):
            key = t.user_attrs.get("key")
            if key is not None and (key not in out or out[key].state != COMPLETE):
                out[key] = t
        return out

    def enqueue(self, key: str, genes: Genes, attrs: dict[str, Any]) -> None:
        self.study.enqueue_trial({n: float(g) for n, g in zip(self.names, genes, strict=True)},
                                 user_attrs={"key": key, "genome": genome_key(genes), **attrs})

    def add(self, key: str, genes: Genes, fitness: float, attrs: dict[str, Any]) -> None:
        """Record an evaluation that trains nothing (a genome that selects no block)."""
        self.study.add_trial(optuna.trial.create_trial(
            params={n: float(g) for n, g in zip(self.names, genes, strict=True)}, distributions=self.distributions,
            value=fitness, user_attrs={"key": key, "genome": genome_key(genes), **attrs}))

    def claim(self) -> optuna.trial.Trial | None:
        """Take one waiting evaluation, or None when none is waiting."""
        while self.study.get_trials(deepcopy=False, states=(WAITING,)):
            with _quiet():
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
            if self._study_id is None:
                self._study_id = self.heartbeat.get_study_id_from_name(self.study.study_name)
            self.heartbeat.record_heartbeat(
                self.heartbeat.get_trial_id_from_study_id_trial_number(self._study_id, trial.number))

    def release(self, trial: optuna.trial.Trial) -> None:
        """Give a claimed evaluation back: failed, and queued again with the trainings it finished."""
        self.study.tell(trial, state=FAIL)
        with _quiet():
            optuna.storages.RetryHeartbeatStaleTrialCallback()(self.study,
                                                               self.study.get_trials(deepcopy=False)[trial.number])

    def requeue_stale(self) -> int:
        """Fail the RUNNING evaluations whose process is gone and queue them again; how many."""
        with _quiet():
            optuna.storages.fail_stale_trials(self.study)  # a database's silent heartbeats (and their retries)
        now, heartbeat = time.time(), self.heartbeat is not None
        stale = []
        for t in self.study.get_trials(deepcopy=False, states=(RUNNING,)):
            worker = str(t.user_attrs.get("worker", ""))
            if "key" not in t.user_attrs or worker == self.me:
                continue
            started = t.datetime_start.timestamp() if t.datetime_start is not None else now
            silent = not heartbeat and now - float(t.user_attrs.get("alive_at", now)) > self.stale_after_s
            if (not worker and now - started > min(self.stale_after_s, ORPHAN_AFTER_S)) or (
                    worker and (_pid_gone(worker) or silent)):
                stale.append(t)
        n = 0
        for t in stale:
            try:
                self.study.tell(t.number, state=FAIL)
            except (ValueError, RuntimeError):  # finished (or failed by another process) meanwhile
                continue
            with _quiet():
                optuna.storages.RetryHeartbeatStaleTrialCallback()(self.study, t)
            n += 1
            log.warning("evaluation %s was left running by %s: queued again", t.user_attrs["key"],
                        t.user_attrs.get("worker") or "a process killed while claiming it")
        return n

