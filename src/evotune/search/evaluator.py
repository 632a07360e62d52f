"""Genome evaluation: fitness = 1 - mean over seeds of the best validation accuracy.

:class:`GenomeEvaluator` is what the evolution loop (and the search baselines) call with a batch
of requests. Requests already recorded in the search study are not trained again; the others are
queued in the study (:class:`~evotune.search.queue.TrialQueue`) and trained by this process and
any worker process (:meth:`GenomeEvaluator.run_one`), one trial each, so that a killed search
loses at most the trainings that were running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna

from ..data.splitting import ChunkData
from ..genome import WORST_FITNESS, decode, genome_key
from ..progress import SearchProgress, StageProgress
from ..training import Trainer, TrainingPlan
from .evolution import EvalRequest
from .queue import COMPLETE, FAIL, Genes, TrialQueue

log = logging.getLogger(__name__)

#: the facts of a finished evaluation (user attributes of its trial, columns of the trials table), in order
FACTS = ("generation", "role", "chunk", "mask", "valid", "diverged", "val_accs", "epochs", "val_histories",
         "seconds", "device")


def genome_plan(genes, base_lr: float, *, force_head: bool = True, name: str = "genome") -> TrainingPlan:
    return TrainingPlan(block_lrs=list(decode(genes, base_lr, force_head=force_head).block_lrs), name=name)


def evaluation_facts(genes: Genes, runs: list[dict[str, Any]], *, base_lr: float, force_head: bool,
                     device: str) -> tuple[float, dict[str, Any]]:
    """An evaluation's fitness and facts from its trainings (one per seed, in seed order)."""
    d = decode(genes, base_lr, force_head=force_head)
    diverged = any(bool(x.get("diverged")) for x in runs)
    accs = [float(x["val_acc"]) for x in runs]
    fit = WORST_FITNESS if (not d.valid or diverged) else 1.0 - float(np.mean(accs))
    return fit, {"mask": d.mask, "valid": d.valid, "diverged": diverged, "val_accs": accs,
                 "epochs": [int(x["epochs"]) for x in runs], "val_histories": [list(x["val_history"]) for x in runs],
                 "seconds": float(sum(float(x["seconds"]) for x in runs)),
                 "device": str(runs[0]["device"]) if runs else device}


def train_genome(trainer: Trainer, chunks: dict[int, ChunkData], key: str, seed: int, chunk: int,
                 genes: Sequence[float], *, base_lr: float, force_head: bool,
                 heartbeat: Callable[[], None] | None = None, stage: StageProgress | None = None) -> dict[str, Any]:
    """One training of one genome on search chunk ``chunk`` with one seed, as the search evaluates it
    (also the confirmation stage's, :mod:`evotune.search.confirm`). Each epoch calls ``heartbeat`` and
    shows on ``stage``."""
    label = f"{key} seed {seed}"
    if stage is not None:
        stage.start(label)

    def on_epoch(record: dict) -> None:
        if heartbeat is not None:
            heartbeat()
        if stage is not None:
            stage.epoch(label, record, trainer.cfg.epochs)

    res = trainer.train(genome_plan(genes, base_lr, force_head=force_head, name=key), chunks[chunk].train,
                        chunks[chunk].val, seed=seed, data_key=("chunk", chunk), progress=on_epoch)
    return {"val_acc": float(res.best_val_acc), "epochs": int(res.epochs_run), "seconds": float(res.seconds),
            "diverged": bool(res.diverged), "device": str(trainer.device),
            "val_history": [round(float(h["val_macro_acc"]), 6) for h in res.history]}


class GenomeEvaluator:
    """Callable for :func:`evotune.search.evolution.biotune_search` (and the search baselines);
    ``queue``: the search study's (None: an in-memory study of this process)."""

    def __init__(self, trainer: Trainer, chunks: dict[int, ChunkData], *, seeds: Sequence[int], base_lr: float,
                 force_head: bool, queue: TrialQueue | None = None, progress: SearchProgress | None = None,
                 extra_attrs: dict[str, Any] | None = None, poll_s: float = 1.0) -> None:
        self.trainer, self.chunks, self.seeds = trainer, chunks, [int(s) for s in seeds]
        self.base_lr, self.force_head, self.progress, self.poll_s = base_lr, force_head, progress, poll_s
        self.queue = queue or TrialQueue(optuna.create_study(), list(trainer.model.block_names))
        self.extra_attrs = extra_attrs or {}
        self.rows: list[dict[str, Any]] = []
        self._fitness: dict[str, float] = {}
        self._own = 0  # trainings of this batch done by this process

    def _advance(self, n: int, *, timed: bool = True, note: str = "") -> None:
        if self.progress is not None and n:
            self.progress.stage.advance(n, timed=timed, note=note)

    def _facts(self, genes: Genes, runs: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
        return evaluation_facts(genes, runs, base_lr=self.base_lr, force_head=self.force_head,
                                device=str(self.trainer.device))

    def train(self, key: str, seed: int, chunk: int, genes: Sequence[float],
              heartbeat: Callable[[], None] | None = None) -> dict[str, Any]:
        """One training of one genome on its chunk with one seed (:func:`train_genome`)."""
        return train_genome(self.trainer, self.chunks, key, seed, chunk, genes, base_lr=self.base_lr,
                            force_head=self.force_head, heartbeat=heartbeat,
                            stage=self.progress.stage if self.progress is not None else None)

    def run_one(self) -> list[dict[str, Any]] | None:
        """Claim one queued evaluation, train its seeds not trained yet (each saved on the trial at once),
        tell its fitness; the trainings done here (None when nothing was waiting)."""
        q = self.queue
        trial = q.claim()
        if trial is None:
            return None
        key, chunk, genes = trial.user_attrs["key"], int(trial.user_attrs["chunk"]), q.genes(trial)
        runs = dict(trial.user_attrs.get("runs", {}))  # by seed (text): the trainings of an earlier claim
        done = []
        try:
            if genome_key(genes) != trial.user_attrs["genome"]:
                raise RuntimeError(f"The study '{q.study.study_name}' holds evaluation {key} with genes that are "
                                   "not its genome. Set search.study_name to a new name (or delete the study).")
            for seed in (s for s in self.seeds if str(s) not in runs):
                started = time.time()
                runs[str(seed)] = {**self.train(key, seed, chunk, genes, lambda: q.beat(trial)),
                                   "worker": q.me, "started_at": started}
                trial.set_user_attr("runs", runs)
                done.append({"key": key, "seed": seed, "chunk": chunk, **runs[str(seed)]})
                self._own += 1
                self._advance(1, note=f"{key} seed {seed}: val {runs[str(seed)]['val_acc']:.3f}")
            fit, facts = self._facts(genes, [runs[str(s)] for s in self.seeds])
            for k, v in facts.items():
                trial.set_user_attr(k, v)
            q.study.tell(trial, fit)
        except optuna.exceptions.UpdateFinishedTrialError:  # not a failure of this process: nothing to release
            log.warning("evaluation %s was queued again by another process while this one trained it (silent longer "
                        "than search.stale_after_s = %g s: raise it if an epoch takes that long here); its retry "
                        "keeps the %d training(s) recorded before, the last one made here is not recorded",
                        key, q.stale_after_s, len(done))
        except BaseException:
            q.release(trial)
            raise
        return done

    def __call__(self, reqs: list[EvalRequest]) -> list[float]:
        if self.progress is not None:
            self.progress.batch(reqs)
        trials = self.queue.by_key()
        todo = []
        for r in reqs:
            t = trials.get(r.key)
            if t is not None and t.state == COMPLETE:
                self._advance(len(self.seeds), timed=False, note=f"{r.key} from the study")
                self._row(r, t, cached=True)
                continue
            todo.append(r)
            if not decode(r.genes, self.base_lr).valid:  # trains nothing
                self._advance(len(self.seeds), timed=False)
                fit, facts = self._facts(r.genes, [])
                self.queue.add(r.key, r.genes, fit, {**self._attrs(r), **facts})
            elif t is None or t.state == FAIL:
                self._enqueue(r, t)
        self._own = reported = 0
        while True:
            trials = self.queue.by_key()
            states = [trials[r.key].state if r.key in trials else None for r in todo]
            workers = sum(len(trials[r.key].user_attrs.get("runs", {})) for r in todo if r.key in trials) - self._own
            self._advance(workers - reported)  # the trainings of worker processes
            reported = max(reported, workers)
            if all(s == COMPLETE for s in states):
                break
            if self.run_one() is not None:
                continue
            self.queue.requeue_stale()  # a worker may have died holding one of ours
            for r, s in zip(todo, states):  # failed, and not queued again (its process died in between)
                if s == FAIL:
                    self._enqueue(r, trials[r.key])
            time.sleep(self.poll_s)
        for r in todo:
            self._row(r, trials[r.key], cached=False)
        return [self._fitness[r.key] for r in reqs]

    def _attrs(self, r: EvalRequest) -> dict[str, Any]:
        return {"generation": r.generation, "role": r.role, "chunk": r.chunk, **self.extra_attrs}

    def _enqueue(self, r: EvalRequest, failed: optuna.trial.FrozenTrial | None) -> None:
        """Queue ``r``, new or ``failed`` (then with the trainings it finished: they are not repeated)."""
        runs = failed.user_attrs.get("runs") if failed is not None else None
        self.queue.enqueue(r.key, r.genes, {**self._attrs(r), **({"runs": runs} if runs is not None else {})})

    def _row(self, r: EvalRequest, t: optuna.trial.FrozenTrial, *, cached: bool) -> None:
        if t.user_attrs.get("genome") != genome_key(r.genes):
            raise RuntimeError(
                f"The study '{self.queue.study.study_name}' already holds evaluation '{r.key}' with other genes: it "
                "was written by a search with different settings. Set search.study_name to a new name (or delete "
                "the study) to start afresh.")
        attrs = {k: t.user_attrs[k] for k in (*FACTS, *self.extra_attrs) if k in t.user_attrs}
        fit = self._fitness[r.key] = float(t.value)  # type: ignore[arg-type]  # a COMPLETE trial has a value
        self.rows.append({"key": r.key, **attrs, "genes": [float(x) for x in r.genes], "fitness": fit,
                          "cached": cached})
        if self.progress:
            self.progress.step(r, fit, float(attrs.get("seconds", 0.0)), cached)
