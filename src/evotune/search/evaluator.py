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
    """Logs 'evaluation i/n, generation g, ETA' lines."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.trained = 0
        self.train_seconds = 0.0
        self.t0 = time.perf_counter()

    def step(self, req: EvalRequest, fitness: float, seconds: float, cached: bool) -> None:
        self.done += 1
        if not cached:
            self.trained += 1
            self.train_seconds += seconds
        left = self.total - self.done
        per = self.train_seconds / self.trained if self.trained else 0.0
        eta = left * per
        log.info(
            "search %d/%d  gen %d  %-12s fitness %.4f%s  (%.1fs)  ETA %dm%02ds",
            self.done, self.total, req.generation, req.role, fitness,
            "  [from study]" if cached else "", seconds, eta // 60, eta % 60,
        )


def train_unit(trainer: Trainer, chunks: dict[int, ChunkData], unit: Unit, *, base_lr: float, force_head: bool,
               heartbeat: Callable[[], None] | None = None) -> dict[str, Any]:
    """One training of one genome on its chunk with one seed (``started_at`` / ``finished_at``:
    its ``time.time()`` span, what the search study's trial start and end are made of)."""
    data = chunks[unit.chunk]
    plan = genome_plan(unit.genes, base_lr, force_head=force_head, name=unit.key)
    started = time.time()
    res = trainer.train(plan, data.train, data.val, seed=unit.seed, data_key=("chunk", unit.chunk),
                        progress=(lambda _r: heartbeat()) if heartbeat else None)
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

    def train(self, unit: Unit, heartbeat: Callable[[], None] | None = None) -> dict[str, Any]:
        """One unit's training (what a worker runs, see :func:`evotune.search.queue.work`)."""
        return train_unit(self.trainer, self.chunks, unit, base_lr=self.base_lr, force_head=self.force_head,
                          heartbeat=heartbeat)

    def _units(self, reqs: list[EvalRequest]) -> list[Unit]:
        return [Unit(r.key, s, r.chunk, tuple(float(g) for g in r.genes))
                for r in reqs if decode(r.genes, self.base_lr).valid for s in self.seeds]

    def _train_units(self, units: list[Unit]) -> dict[tuple[str, int], dict[str, Any]]:
        if self.queue is None:
            return {u.uid: train_unit(self.trainer, self.chunks, u, base_lr=self.base_lr, force_head=self.force_head)
                    for u in units}
        self.queue.enqueue_missing(units)
        while self.queue.pending(units):
            if run_claimed(self.queue, self.train) is None:
                self.queue.requeue_stale()  # a worker may have died holding one of ours
                self.queue.enqueue_missing(units)  # one failed meanwhile (e.g. queued under old gene names)
                time.sleep(self.poll_s)
        return {uid: {"val_acc": float(t.value), **t.user_attrs} for uid, t in self.queue.results(units).items()}

    def __call__(self, reqs: list[EvalRequest]) -> list[float]:
        fitness: dict[str, float] = {}
        todo = []
        for r in reqs:
            cached = self.recorder.lookup(r.key, r.genes) if self.recorder else None
            if cached is None:
                todo.append(r)
                continue
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
