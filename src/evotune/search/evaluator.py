"""Genome evaluation: fitness = 1 - mean over seeds of the best validation accuracy.

:class:`GenomeEvaluator` is what the evolution loop (and the search baselines) call
with a batch of requests. Requests already recorded in the search study are not trained again.
The others are cut into per-seed trainings (units); with a
:class:`~evotune.search.queue.UnitQueue` they go through the study's
storage, so that worker processes (:func:`~evotune.search.queue.work`) can take some of them and a
killed search loses at most the trainings that were running. Each genome's
fitness is then recorded as one trial of the search study.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..genome import WORST_FITNESS, decode
from ..progress import StageProgress, format_seconds
from ..training import DeviceData, Trainer, TrainingPlan
from .evolution import EvalRequest
from .queue import Unit, UnitQueue, run_claimed
from .store import TrialRecorder

log = logging.getLogger(__name__)


def genome_plan(genes, base_lr: float, *, force_head: bool = True, name: str = "genome") -> TrainingPlan:
    d = decode(genes, base_lr, force_head=force_head)
    return TrainingPlan(block_lrs=list(d.block_lrs), name=name)


@dataclass
class ChunkData:
    train: DeviceData
    val: DeviceData


def chunk_data(trainer: Trainer, train_split: dict, val_split: dict, train_chunks: torch.Tensor,
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


def _chunk(split: dict, chunks: torch.Tensor, c: int, device: torch.device, n_cls: int) -> DeviceData:
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


def train_unit(trainer: Trainer, chunks: dict[int, ChunkData], unit: Unit, *, base_lr: float, force_head: bool,
               heartbeat: Callable[[], None] | None = None, stage: StageProgress | None = None) -> dict[str, Any]:
    """One training of one genome on its chunk with one seed (``started_at`` / ``finished_at``:
    its ``time.time()`` span, what the search study's trial start and end are made of). Each epoch
    calls ``heartbeat`` and shows on ``stage``."""
    data = chunks[unit.chunk]
    plan = genome_plan(unit.genes, base_lr, force_head=force_head, name=unit.key)
    label = f"{unit.key} seed {unit.seed}"
    if stage is not None:
        stage.start(label)

    def on_epoch(record: dict) -> None:
        if heartbeat is not None:
            heartbeat()
        if stage is not None:
            stage.epoch(label, record, trainer.cfg.epochs)

    started = time.time()
    res = trainer.train(plan, data.train, data.val, seed=unit.seed, data_key=("chunk", unit.chunk),
                        progress=on_epoch)
    return {"val_acc": res.best_val_acc, "epochs": res.epochs_run, "seconds": res.seconds,
            "diverged": res.diverged, "device": str(trainer.device),
            "val_history": [round(float(h["val_macro_acc"]), 6) for h in res.history],
            "started_at": started, "finished_at": time.time()}


class GenomeEvaluator:
    """Callable for :func:`evotune.search.evolution.biotune_search` (and the search baselines)."""

    def __init__(
        self,
        trainer: Trainer,
        chunks: dict[int, ChunkData],
        *,
        seeds: Sequence[int],
        base_lr: float,
        force_head: bool,
        recorder: TrialRecorder | None,
        queue: UnitQueue | None = None,
        progress: Progress | None = None,
        extra_attrs: dict[str, Any] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.trainer = trainer
        self.chunks = chunks
        self.seeds = [int(s) for s in seeds]
        self.base_lr = base_lr
        self.force_head = force_head
        self.recorder = recorder
        self.queue = queue
        self.progress = progress
        self.extra_attrs = extra_attrs or {}
        self.poll_s = poll_s
        self.rows: list[dict[str, Any]] = []

    @property
    def stage(self) -> StageProgress | None:
        return self.progress.stage if self.progress is not None else None

    def train(self, unit: Unit, heartbeat: Callable[[], None] | None = None) -> dict[str, Any]:
        """One unit's training (what a worker runs, see :func:`evotune.search.queue.work`)."""
        return train_unit(self.trainer, self.chunks, unit, base_lr=self.base_lr, force_head=self.force_head,
                          heartbeat=heartbeat, stage=self.stage)

    def _advance(self, n: int, *, timed: bool = True, note: str = "") -> None:
        if self.stage is not None:
            self.stage.advance(n, timed=timed, note=note)

    def _units(self, reqs: list[EvalRequest]) -> list[Unit]:
        return [Unit(r.key, s, r.chunk, tuple(float(g) for g in r.genes))
                for r in reqs if decode(r.genes, self.base_lr).valid for s in self.seeds]

    def _train_units(self, units: list[Unit]) -> dict[tuple[str, int], dict[str, Any]]:
        if self.queue is None:
            out = {}
            for u in units:
                out[u.uid] = self.train(u)
                self._advance(1, note=f"{u.key} seed {u.seed}: val {out[u.uid]['val_acc']:.3f}")
            return out
        self.queue.enqueue_missing(units)
        reported = 0
        while True:
            pending = self.queue.pending(units)
            self._advance(len(units) - len(pending) - reported)  # ours and the workers'
            reported = len(units) - len(pending)
            if not pending:
                break
            if run_claimed(self.queue, self.train) is None:
                self.queue.requeue_stale()  # a worker may have died holding one of ours
                self.queue.enqueue_missing(units)  # one failed meanwhile (e.g. queued under old gene names)
                time.sleep(self.poll_s)
        return {uid: {"val_acc": float(t.value), **t.user_attrs} for uid, t in self.queue.results(units).items()}

    def __call__(self, reqs: list[EvalRequest]) -> list[float]:
        fitness: dict[str, float] = {}
        todo = []
        if self.progress is not None:
            self.progress.batch(reqs)
        for r in reqs:
            cached = self.recorder.lookup(r.key, r.genes) if self.recorder else None
            if cached is None:
                todo.append(r)
                if not decode(r.genes, self.base_lr).valid:
                    self._advance(len(self.seeds), timed=False)  # trains nothing
                continue
            self._advance(len(self.seeds), timed=False, note=f"{r.key} from the study")
            fitness[r.key] = float(cached.value)
            self._row(r, fitness[r.key], dict(cached.user_attrs), cached=True)
        asked = time.time()
        results = self._train_units(self._units(todo)) if todo else {}
        for r in todo:
            d = decode(r.genes, self.base_lr, force_head=self.force_head)
            runs = [results[(r.key, s)] for s in self.seeds] if d.valid else []
            # the span of its trainings (units of an earlier version carry no times: this batch's span)
            started = min((float(x.get("started_at", asked)) for x in runs), default=time.time())
            finished = max((float(x.get("finished_at", time.time())) for x in runs), default=started)
            diverged = any(bool(x.get("diverged")) for x in runs)
            accs = [float(x["val_acc"]) for x in runs]
            fit = WORST_FITNESS if (not d.valid or diverged) else 1.0 - float(np.mean(accs))
            attrs = {
                "generation": r.generation, "role": r.role, "chunk": r.chunk, "mask": d.mask,
                "valid": d.valid, "diverged": diverged, "val_accs": accs,
                "epochs": [int(x["epochs"]) for x in runs],
                "val_histories": [list(x.get("val_history", [])) for x in runs],
                "seconds": float(sum(float(x["seconds"]) for x in runs)),
                "device": str(runs[0]["device"]) if runs else str(self.trainer.device),
                **self.extra_attrs,
            }
            if self.recorder:
                self.recorder.record(r.key, r.genes, fit, attrs, started=started, finished=finished)
            fitness[r.key] = fit
            self._row(r, fit, attrs, cached=False)
        return [fitness[r.key] for r in reqs]

    def _row(self, r: EvalRequest, fit: float, attrs: dict[str, Any], *, cached: bool) -> None:
        row = {"key": r.key, **{k: v for k, v in attrs.items() if k not in ("key", "genome")},
               "genes": [float(x) for x in r.genes], "fitness": fit, "cached": cached}
        self.rows.append(row)
        if self.progress:
            self.progress.step(r, fit, float(attrs.get("seconds", 0.0)), cached)
