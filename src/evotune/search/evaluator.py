"""Genome evaluation: fitness = 1 - mean over seeds of the best validation accuracy.

:class:`GenomeEvaluator` is what the evolution loop (and the search baselines) call
with a batch of requests. Requests already recorded in the search study are not trained again;
the others are queued in the study (:class:`~evotune.search.queue.TrialQueue`) and trained by
this process and any worker process (:meth:`GenomeEvaluator.run_one`), one trial each, so
that a killed search loses at most the trainings that were running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import torch

from ..genome import WORST_FITNESS, decode, genome_key
from ..progress import StageProgress, format_seconds
from ..training import DeviceData, Trainer, TrainingPlan
from .evolution import EvalRequest
from .queue import COMPLETE, FAIL, RUNNING, WAITING, Genes, TrialQueue

if TYPE_CHECKING:
    from ..data.split import Split

log = logging.getLogger(__name__)

#: the facts of a finished evaluation (user attributes of its trial, columns of the trials table), in order
FACTS = ("generation", "role", "chunk", "mask", "valid", "diverged", "val_accs", "epochs", "val_histories",
         "seconds", "device")


def genome_plan(genes, base_lr: float, *, force_head: bool = True, name: str = "genome") -> TrainingPlan:
    d = decode(genes, base_lr, force_head=force_head)
    return TrainingPlan(block_lrs=list(d.block_lrs), name=name)


@dataclass
class ChunkData:
    train: DeviceData
    val: DeviceData


def chunk_data(trainer: Trainer, train_split: Split, val_split: Split, train_chunks: torch.Tensor,
               val_chunks: torch.Tensor, n_chunks: int) -> dict[int, ChunkData]:
    """Per search chunk, its train and validation images on the trainer's device.

    ``train_chunks`` / ``val_chunks``: the chunk of every image of the split
    (:func:`evotune.search.runner.search_chunks`)."""
    n_cls = len(train_split.classes)
    out = {}
    for c in range(n_chunks):
        out[c] = ChunkData(_chunk(train_split, train_chunks, c, trainer.device, n_cls),
                           _chunk(val_split, val_chunks, c, trainer.device, n_cls))
        if len(out[c].train) == 0 or len(out[c].val) == 0:
            raise ValueError(
                f"Search chunk {c} has no training or validation images; lower the number of "
                "chunks by raising search.train_split_pct (or give more data)."
            )
    return out


def _chunk(split: Split, chunks: torch.Tensor, c: int, device: torch.device, n_cls: int) -> DeviceData:
    mask = chunks == c
    return DeviceData(split.images[mask].to(device), split.labels[mask].to(device), n_cls)


class Progress:
    """The search's progress: a log line per evaluation ('search i/n, gen g, role, fitness, ETA') and
    the trainings on the stage's view (:mod:`evotune.progress`: a live bar or periodic lines)."""

    def __init__(self, total: int, stage: StageProgress, generations: int | None = None, name: str = "search") -> None:
        self.total = total
        self.name = name
        self.stage = stage
        self.generations = generations
        self.done = 0

    def batch(self, reqs: list[EvalRequest]) -> None:
        """A batch of evaluations is asked for (a generation's offspring, its elites' exploitation)."""
        if reqs:
            of = f"/{self.generations}" if self.generations is not None else ""
            self.stage.set_status(f"generation {reqs[0].generation}{of} ({reqs[0].role})")

    def step(self, req: EvalRequest, fitness: float, seconds: float, cached: bool) -> None:
        self.done += 1
        log.info(
            "%s %d/%d  gen %d  %-12s fitness %.4f%s  (%.1fs)  ETA %s", self.name,
            self.done, self.total, req.generation, req.role, fitness,
            "  [from study]" if cached else "", seconds, format_seconds(self.stage.eta()),
        )


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
    (the search's evaluations and the confirmation stage, :mod:`evotune.search.confirm`). Each epoch
    calls ``heartbeat`` and shows on ``stage``."""
    data = chunks[chunk]
    plan = genome_plan(genes, base_lr, force_head=force_head, name=key)
    label = f"{key} seed {seed}"
    if stage is not None:
        stage.start(label)

    def on_epoch(record: dict) -> None:
        if heartbeat is not None:
            heartbeat()
        if stage is not None:
            stage.epoch(label, record, trainer.cfg.epochs)

    res = trainer.train(plan, data.train, data.val, seed=seed, data_key=("chunk", chunk), progress=on_epoch)
    return {"val_acc": float(res.best_val_acc), "epochs": int(res.epochs_run), "seconds": float(res.seconds),
            "diverged": bool(res.diverged), "device": str(trainer.device),
            "val_history": [round(float(h["val_macro_acc"]), 6) for h in res.history]}


class GenomeEvaluator:
    """Callable for :func:`evotune.search.evolution.biotune_search` (and the search baselines);
    ``queue``: the search study's (None: an in-memory study of this process)."""

    def __init__(self, trainer: Trainer, chunks: dict[int, ChunkData], *, seeds: Sequence[int], base_lr: float,
                 force_head: bool, queue: TrialQueue | None = None, progress: Progress | None = None,
                 extra_attrs: dict[str, Any] | None = None, poll_s: float = 1.0) -> None:
        self.trainer = trainer
        self.chunks = chunks
        self.seeds = [int(s) for s in seeds]
        self.base_lr = base_lr
        self.force_head = force_head
        self.queue = queue or TrialQueue(optuna.create_study(), list(trainer.model.block_names))
        self.progress = progress
        self.extra_attrs = extra_attrs or {}
        self.poll_s = poll_s
        self.rows: list[dict[str, Any]] = []
        self._fitness: dict[str, float] = {}
        self._own = 0  # trainings of this batch done by this process

    @property
    def stage(self) -> StageProgress | None:
        return self.progress.stage if self.progress is not None else None

    def _advance(self, n: int, *, timed: bool = True, note: str = "") -> None:
        if self.stage is not None and n:
            self.stage.advance(n, timed=timed, note=note)

    def train(self, key: str, seed: int, chunk: int, genes: Sequence[float],
              heartbeat: Callable[[], None] | None = None) -> dict[str, Any]:
        """One training of one genome on its chunk with one seed (:func:`train_genome`). Each epoch
        calls ``heartbeat`` and shows on the stage's progress."""
        return train_genome(self.trainer, self.chunks, key, seed, chunk, genes, base_lr=self.base_lr,
                            force_head=self.force_head, heartbeat=heartbeat, stage=self.stage)

    def run_one(self) -> list[dict[str, Any]] | None:
        """Claim one queued evaluation, train its seeds not trained yet, tell its fitness; the
        trainings done here (None when nothing was waiting)."""
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
            for seed in self.seeds:
                if str(seed) not in runs:
                    started = time.time()
                    runs[str(seed)] = {**self.train(key, seed, chunk, genes, lambda: q.beat(trial)),
                                       "worker": q.me, "started_at": started}
                    trial.set_user_attr("runs", runs)
                    done.append({"key": key, "seed": seed, "chunk": chunk, **runs[str(seed)]})
                    self._own += 1
                    self._advance(1, note=f"{key} seed {seed}: val {runs[str(seed)]['val_acc']:.3f}")
        except optuna.exceptions.UpdateFinishedTrialError:
            return self._taken(key, done)
        except BaseException:
            q.release(trial)
            raise
        fit, facts = evaluation_facts(genes, [runs[str(s)] for s in self.seeds], base_lr=self.base_lr,
                                      force_head=self.force_head, device=str(self.trainer.device))
        try:
            for k, v in facts.items():
                trial.set_user_attr(k, v)
            q.study.tell(trial, fit)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return self._taken(key, done)
        return done

    def _taken(self, key: str, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The evaluation was finished by another process meanwhile: two processes claimed the same waiting
        trial (a storage without row locks, such as SQLite, lets two ``Study.ask`` take it). Its result is the
        other process's (the same genome, chunk and seeds); this one's trainings are only logged."""
        log.warning("evaluation %s was finished by another process meanwhile (claimed twice): this process's "
                    "%d training(s) of it are not recorded", key, len(done))
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
            attrs = {"generation": r.generation, "role": r.role, "chunk": r.chunk, **self.extra_attrs}
            if not decode(r.genes, self.base_lr).valid:  # trains nothing
                self._advance(len(self.seeds), timed=False)
                fit, facts = evaluation_facts(r.genes, [], base_lr=self.base_lr, force_head=self.force_head,
                                              device=str(self.trainer.device))
                self.queue.add(r.key, r.genes, fit, {**attrs, **facts})
            elif t is None or t.state not in (WAITING, RUNNING):
                self.queue.enqueue(r.key, r.genes, {**attrs, **({"runs": t.user_attrs["runs"]} if t is not None
                                                                 and "runs" in t.user_attrs else {})})
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
                    self.queue.enqueue(r.key, r.genes, {k: v for k, v in trials[r.key].user_attrs.items()
                                                        if k not in ("key", "genome", "worker", "alive_at")})
            time.sleep(self.poll_s)
        for r in todo:
            self._row(r, trials[r.key], cached=False)
        return [self._fitness[r.key] for r in reqs]

    def _row(self, r: EvalRequest, t: optuna.trial.FrozenTrial, *, cached: bool) -> None:
        if t.user_attrs.get("genome") != genome_key(r.genes):
            raise RuntimeError(
                f"The study '{self.queue.study.study_name}' already holds evaluation '{r.key}' with other "
                "genes: it was written by a search with different settings. Set search.study_name "
                "to a new name (or delete the study) to start afresh."
            )
        attrs = {k: t.user_attrs[k] for k in (*FACTS, *self.extra_attrs) if k in t.user_attrs}
        assert t.value is not None  # a COMPLETE trial
        fit = float(t.value)
        self._fitness[r.key] = fit
        self.rows.append({"key": r.key, **attrs, "genes": [float(x) for x in r.genes], "fitness": fit,
                          "cached": cached})
        if self.progress:
            self.progress.step(r, fit, float(attrs.get("seconds", 0.0)), cached)
