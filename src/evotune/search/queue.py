"""Per-seed trainings as work units shared through an Optuna study.

A genome evaluation is one training per seed. Each such training is a *unit*:
an Optuna trial in the study ``<search study>-units`` whose parameters are the
genes (named as in the search study: ``gene_<block>``, ``gene_threshold``), whose
value is that training's best validation macro accuracy (:data:`UNIT_METRIC`) and
whose user attributes say which evaluation (``key``), ``seed`` and data ``chunk``
it is; the study says so in its user attribute ``description`` (:data:`UNITS_DESCRIPTION`).
Units are queued with ``Study.enqueue_trial`` (WAITING), claimed with ``Study.ask`` (Optuna moves one WAITING trial to RUNNING
atomically in its storage, so two processes never claim the same unit) and
finished with ``Study.tell``. Optuna is the coordinator; there is no other.

This gives the search its two survival properties:

* **Resume.** A search killed at any moment and started again finds the units
  already COMPLETE and does not train them again. A unit left RUNNING by a dead
  process is failed and queued again: at once when that process ran on this
  host (its pid is gone), otherwise when its ``alive_at`` heartbeat is older
  than ``stale_after_s``. A unit that a process claimed but was killed before
  naming itself on it (between ``Study.ask`` and the ``worker`` attribute) is
  queued again :data:`ORPHAN_AFTER_S` after it was claimed.
* **Parallel workers.** Any number of worker processes (one per GPU, or on
  several machines with a PostgreSQL storage) claim units of the same search
  while the driver waits for a batch to finish.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from ..genome import genome_key
from .store import gene_param_names, genes_from_params, open_study

log = logging.getLogger(__name__)

UNITS_SUFFIX = "-units"
WAITING = optuna.trial.TrialState.WAITING
RUNNING = optuna.trial.TrialState.RUNNING
COMPLETE = optuna.trial.TrialState.COMPLETE
FAIL = optuna.trial.TrialState.FAIL

#: the objective of a units study (one training's value)
UNIT_METRIC = "best val macro acc of one training (higher is better)"

#: what a units study holds (its user attribute ``description``)
UNITS_DESCRIPTION = (
    "The work queue of a BioTune search, shared by the search and its worker processes: one trial per "
    "training of one genome with one seed on one search chunk (user attributes key, seed, chunk, genome; "
    "worker and alive_at while it runs). WAITING: queued; RUNNING: being trained; COMPLETE: value = that "
    "training's best validation macro accuracy; FAIL: given back or left by a dead process (queued again). "
    "The genome's fitness (1 - mean over its seeds) is recorded in the search study, the study of the same "
    "name without '-units'."
)


#: a claim names its worker at once (milliseconds after ``Study.ask``); a RUNNING unit without a worker this
#: long after it started was claimed by a process killed in between, which no heartbeat or pid can tell
ORPHAN_AFTER_S = 60.0


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Unit:
    key: str
    seed: int
    chunk: int
    genes: tuple[float, ...]

    @property
    def uid(self) -> tuple[str, int]:
        return (self.key, self.seed)


class UnitQueue:
    """The queue of per-seed trainings of one search."""

    def __init__(self, storage: str | None, search_study: str, block_names: Sequence[str], *,
                 study: optuna.Study | None = None, stale_after_s: float = 900.0) -> None:
        self.study = study or open_study(storage, search_study + UNITS_SUFFIX, direction="maximize",
                                         metric=UNIT_METRIC, description=UNITS_DESCRIPTION)
        self.names = gene_param_names(block_names)
        self.distributions = {n: optuna.distributions.FloatDistribution(0.0, 1.0) for n in self.names}
        self.stale_after_s = stale_after_s
        self.me = worker_id()

    # -- reading ---------------------------------------------------------------
    def trials_by_uid(self) -> dict[tuple[str, int], optuna.trial.FrozenTrial]:
        """The newest trial of every unit (a COMPLETE one wins over any other)."""
        out: dict[tuple[str, int], optuna.trial.FrozenTrial] = {}
        for t in self.study.get_trials(deepcopy=False):
            if "key" not in t.user_attrs:
                continue
            uid = (t.user_attrs["key"], int(t.user_attrs["seed"]))
            old = out.get(uid)
            if old is None or old.state != COMPLETE:
                out[uid] = t
        return out

    def results(self, units: list[Unit]) -> dict[tuple[str, int], optuna.trial.FrozenTrial]:
        trials = self.trials_by_uid()
        return {u.uid: trials[u.uid] for u in units if u.uid in trials and trials[u.uid].state == COMPLETE}

    # -- writing ---------------------------------------------------------------
    def enqueue_missing(self, units: list[Unit]) -> int:
        """Queue the units that are not complete, running or waiting already."""
        trials = self.trials_by_uid()
        n = 0
        for u in units:
            t = trials.get(u.uid)
            if t is not None and t.state in (COMPLETE, RUNNING, WAITING):
                if t.state == COMPLETE and t.user_attrs.get("genome") != genome_key(u.genes):
                    raise RuntimeError(
                        f"The unit study '{self.study.study_name}' holds {u.key} seed {u.seed} with other "
                        "genes: it belongs to a search with other settings. Use another search.study_name."
                    )
                continue
            self.study.enqueue_trial(
                {n_: float(g) for n_, g in zip(self.names, u.genes)},
                user_attrs={"key": u.key, "seed": int(u.seed), "chunk": int(u.chunk), "genome": genome_key(u.genes)},
            )
            n += 1
        return n

    def claim(self) -> tuple[optuna.trial.Trial, Unit] | None:
        """Take one waiting unit, or None when none is waiting."""
        while self.study.get_trials(deepcopy=False, states=(WAITING,)):
            trial = self.study.ask(self.distributions)
            attrs = trial.user_attrs
            if "key" not in attrs:  # another process took the last waiting unit first
                self.study.tell(trial, state=FAIL)
                continue
            genes = tuple(float(trial.params[n]) for n in self.names)
            if genome_key(genes) != attrs.get("genome"):
                # queued under other parameter names (g00..gNN, by an earlier version): Optuna did not
                # fix these genes but sampled them. Fail it; the search queues the unit again.
                log.warning("unit %s seed %s was queued under other gene names: failed, to be queued again",
                            attrs["key"], attrs.get("seed"))
                self.study.tell(trial, state=FAIL)
                continue
            trial.set_user_attr("worker", self.me)
            trial.set_user_attr("alive_at", time.time())
            return trial, Unit(attrs["key"], int(attrs["seed"]), int(attrs["chunk"]), genes)
        return None

    def heartbeat(self, trial: optuna.trial.Trial) -> None:
        trial.set_user_attr("alive_at", time.time())

    def complete(self, trial: optuna.trial.Trial, val_acc: float, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v.item() if isinstance(v, np.generic) else v)
        self.study.tell(trial, float(val_acc))

    def release(self, trial: optuna.trial.Trial, unit: Unit) -> None:
        """Give a claimed unit back (fail this trial, queue the unit again)."""
        self.study.tell(trial, state=FAIL)
        self.enqueue_missing([unit])

    def requeue_stale(self) -> int:
        """Fail RUNNING units whose worker is gone, and queue them again."""
        host = socket.gethostname()
        now = time.time()
        stale = []
        for t in self.study.get_trials(deepcopy=False, states=(RUNNING,)):
            if "key" not in t.user_attrs:
                continue
            w = str(t.user_attrs.get("worker", ""))
            if not w:  # claimed by a process killed before it could name itself
                started = t.datetime_start.timestamp() if t.datetime_start is not None else now
                if now - started > min(self.stale_after_s, ORPHAN_AFTER_S):
                    stale.append(t)
                continue
            w_host, _, pid = w.rpartition(":")
            dead_here = w_host == host and pid.isdigit() and not _pid_alive(int(pid))
            silent = now - float(t.user_attrs.get("alive_at", now)) > self.stale_after_s
            if w != self.me and (dead_here or silent):
                stale.append(t)
        units = []
        for t in stale:
            try:
                self.study.tell(t.number, state=FAIL)
            except Exception:  # finished meanwhile
                continue
            # killed between Study.ask and the first suggest: an enqueued unit's genes are still only its fixed params
            genes = genes_from_params(t.params or t.system_attrs.get("fixed_params", {}), self.names)
            units.append(Unit(t.user_attrs["key"], int(t.user_attrs["seed"]), int(t.user_attrs["chunk"]), genes))
            log.warning("unit %s seed %s was left running by %s: queued again",
                        t.user_attrs["key"], t.user_attrs["seed"], t.user_attrs.get("worker"))
        if units:
            self.enqueue_missing(units)
        return len(units)

    def pending(self, units: list[Unit]) -> list[Unit]:
        done = self.results(units)
        return [u for u in units if u.uid not in done]


#: trains one unit (calling the heartbeat now and then); returns its facts, ``val_acc`` among them
TrainUnit = Callable[[Unit, Callable[[], None]], dict[str, Any]]


def run_claimed(queue: UnitQueue, train: TrainUnit) -> dict[str, Any] | None:
    """Claim one waiting unit, train it, tell the result. None when nothing was waiting."""
    claimed = queue.claim()
    if claimed is None:
        return None
    trial, unit = claimed
    try:
        out = train(unit, lambda: queue.heartbeat(trial))
    except BaseException:
        queue.release(trial, unit)
        raise
    queue.complete(trial, out["val_acc"], {k: v for k, v in out.items() if k != "val_acc"})
    return {"key": unit.key, "seed": unit.seed, "chunk": unit.chunk, **out}


def work(queue: UnitQueue, train: TrainUnit, *, finished: Callable[[], bool], idle_timeout_s: float,
         poll_s: float) -> list[dict[str, Any]]:
    """A worker: train waiting units of the search until it is finished (or idle too long)."""
    done: list[dict[str, Any]] = []
    idle_since = time.monotonic()
    while True:
        out = run_claimed(queue, train)
        if out is not None:
            done.append(out)
            log.info("worker %s: %s seed %d -> val acc %.4f (%.1fs)", queue.me, out["key"], out["seed"],
                     out["val_acc"], out["seconds"])
            idle_since = time.monotonic()
            continue
        if finished():
            break
        if time.monotonic() - idle_since > idle_timeout_s:
            log.warning("worker %s: no work for %.0fs, stopping", queue.me, idle_timeout_s)
            break
        queue.requeue_stale()
        time.sleep(poll_s)
    return done
