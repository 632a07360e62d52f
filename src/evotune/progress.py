"""Progress of the long stages: what is done out of the total, the ETA, the running training's epochs.

Every long stage reports the same way through :func:`track`: the search (and each search
baseline), a search worker, source pretraining, image decoding, the retrain, the fidelity
measurement and every compared method. A stage is a :class:`StageProgress`; it counts items
(trainings, epochs, images), knows the running training's label and its last epoch, and shows
them in one of two views, chosen by the ``progress`` parameters (conf/base/parameters.yml) that
:class:`evotune.hooks.ProgressHooks` applies before a run starts:

* ``bar``: a live rich display at the bottom of the terminal (Kedro's log lines scroll above
  it, on the same rich console): one row per running stage, with done / total, elapsed time,
  ETA and the running training's epoch and validation accuracy. Nested stages (a search
  baseline inside ``compare``) get a row each.
* ``lines``: plain log lines, at most one per ``progress.every_s`` seconds per stage (and one
  when a stage ends), so a CI log or a worker's redirected output shows a sign of life during
  long trainings without a line per epoch.
* ``auto`` (the default): ``bar`` when the rich console is an interactive terminal, ``lines``
  otherwise; ``off``: neither (the stages' own log lines remain).

Each process has its own view: a search worker shows its own trainings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import ParameterError
from .params import from_params, where

log = logging.getLogger(__name__)

DISPLAYS = ("auto", "bar", "lines", "off")


@dataclass(frozen=True)
class ProgressConfig:
    """The ``progress`` parameters (conf/base/parameters.yml)."""

    display: str  # auto | bar | lines | off
    every_s: float  # lines view: at most one line per stage this often (and one at its end)

    def __post_init__(self) -> None:
        if self.display not in DISPLAYS:
            raise ParameterError(f"progress.display must be one of {', '.join(DISPLAYS)}, got {self.display!r} "
                                 f"({where('progress')}).")
        if self.every_s < 0:
            raise ParameterError(f"progress.every_s must be >= 0 seconds, got {self.every_s} ({where('progress')}).")

    @classmethod
    def from_params(cls, params: Any) -> ProgressConfig:
        return from_params(cls, params, "progress")


_config = ProgressConfig("auto", 30.0)
_lock = threading.RLock()
_live: Any = None  # the rich Progress shared by the stages of the bar view while one runs


def configure(config: ProgressConfig) -> None:
    """Use ``config`` for the stages that start from now on (the run's ``progress`` parameters)."""
    global _config
    _config = config


def current_display() -> str:
    """``bar``, ``lines`` or ``off``: ``auto`` resolved against the rich console."""
    if _config.display != "auto":
        return _config.display
    import rich

    console = rich.get_console()
    return "bar" if console.is_terminal and not console.is_dumb_terminal else "lines"


def format_seconds(seconds: float | None) -> str:
    """``1h02m``, ``3m20s``, ``45s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class StageProgress:
    """One long stage's progress: ``done`` of ``total`` items (``None``: open-ended, e.g. a worker).

    ``advance(n, timed=False)`` counts items that cost no work (evaluations found in the study,
    invalid genomes), so that they do not shorten the ETA, which is the mean time of the timed
    items times the items left.
    """

    def __init__(self, name: str, total: int | None, unit: str, display: str, every_s: float) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.display = display
        self.every_s = every_s
        self.done = 0
        self.timed = 0
        self.timed_seconds = 0.0
        self.status = ""  # e.g. "generation 2/5"
        self.running = ""  # the running item and its last epoch
        self.t0 = self.t_item = self.t_line = time.perf_counter()
        self._task: Any = None

    # -- what the stages call ---------------------------------------------------------------
    def set_status(self, status: str) -> None:
        self.status = status
        self._refresh()

    def start(self, label: str) -> None:
        """An item (a training) starts."""
        self.t_item = time.perf_counter()
        self.running = label
        self._refresh()

    def epoch(self, label: str, record: dict[str, Any], epochs: int | None = None) -> None:
        """The running training ``label`` finished an epoch (its history ``record``)."""
        of = f"/{epochs}" if epochs else ""
        text = f"{label} epoch {record['epoch']}{of}"
        if "val_macro_acc" in record:
            text += f" val {float(record['val_macro_acc']):.3f}"
        self.running = text
        self._refresh(line=True)

    def advance(self, n: int = 1, *, timed: bool = True, note: str = "") -> None:
        """``n`` items finished (``note``: what the last one gave, e.g. its validation accuracy)."""
        if n <= 0:
            return
        now = time.perf_counter()
        self.done += n
        if timed:
            self.timed += n
            self.timed_seconds += now - self.t_item
        self.t_item = now
        self.running = note
        self._refresh(line=True)

    def eta(self) -> float | None:
        """Seconds left: the mean time of the timed items times the items left (None: unknown)."""
        if self.total is None or not self.timed:
            return None
        return max(self.total - self.done, 0) * self.timed_seconds / self.timed

    def summary(self) -> str:
        """``search: 12/219 trainings (5 %), generation 1/5, 1m10s elapsed, ETA 20m05s, <running>``"""
        parts = [f"{self.name}: {self.done}" + (f"/{self.total}" if self.total is not None else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f} %)"
        if self.status:
            parts.append(self.status)
        parts.append(f"{format_seconds(time.perf_counter() - self.t0)} elapsed")
        if self.total is not None and self.done < self.total:
            parts.append(f"ETA {format_seconds(self.eta())}")
        if self.running:
            parts.append(self.running)
        return ", ".join(parts)

    # -- the views --------------------------------------------------------------------------
    def _open(self) -> None:
        if self.display == "bar":
            with _lock:
                live = _shared_live()
                self._task = live.add_task(escape(self.name), total=self.total, status="")

    def _refresh(self, line: bool = False) -> None:
        if self.display == "bar" and self._task is not None:
            text = ", ".join(x for x in (self.status, self.running) if x)
            with _lock:
                if _live is not None:
                    _live.update(self._task, completed=self.done, total=self.total, status=text)
        elif self.display == "lines" and line:
            now = time.perf_counter()
            if now - self.t_line >= self.every_s:
                self.t_line = now
                log.info("%s", self.summary())

    def _close(self, ok: bool) -> None:
        global _live
        if self.display == "bar" and self._task is not None:
            with _lock:
                if _live is not None:
                    _live.remove_task(self._task)
                    if not _live.tasks:
                        _live.stop()
                        _live = None
        if self.display != "off" and ok and (self.done or self.total):
            log.info("%s done: %d %s in %s", self.name, self.done, self.unit,
                     format_seconds(time.perf_counter() - self.t0))


def escape(text: str) -> str:
    """``text`` shown as it is by rich (variant names such as ``surgical[layer3]`` are no markup)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _shared_live() -> Any:
    """The one rich Progress of this process (started on first use; Kedro's log lines print above it)."""
    global _live
    if _live is None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        _live = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                         TextColumn("{task.fields[status]}", markup=False), transient=True)
        _live.start()
    return _live


@contextmanager
def track(name: str, total: int | None, unit: str = "trainings") -> Iterator[StageProgress]:
    """A long stage's progress for the duration of the ``with`` block (see the module doc)."""
    stage = StageProgress(name, total, unit, current_display(), _config.every_s)
    stage._open()
    ok = False
    try:
        yield stage
        ok = True
    finally:
        stage._close(ok)


def stop_all() -> None:
    """Stop the live display (a run ended or failed while stages were open)."""
    global _live
    with _lock:
        if _live is not None:
            _live.stop()
            _live = None


class SearchProgress:
    """A search's progress (BioTune's, a baseline's, the fidelity measurement's): a log line per evaluation
    ('search i/n, gen g, role, fitness, ETA') and the trainings on ``stage``'s view."""

    def __init__(self, total: int, stage: StageProgress, generations: int | None = None, name: str = "search") -> None:
        self.total, self.stage, self.generations, self.name = total, stage, generations, name
        self.done = 0

    def batch(self, reqs: list[Any]) -> None:
        """A batch of evaluations (:class:`~evotune.search.evolution.EvalRequest`) is asked for."""
        if reqs:
            of = f"/{self.generations}" if self.generations is not None else ""
            self.stage.set_status(f"generation {reqs[0].generation}{of} ({reqs[0].role})")

    def step(self, req: Any, fitness: float, seconds: float, cached: bool) -> None:
        self.done += 1
        log.info("%s %d/%d  gen %d  %-12s fitness %.4f%s  (%.1fs)  ETA %s", self.name, self.done, self.total,
                 req.generation, req.role, fitness, "  [from study]" if cached else "", seconds,
                 format_seconds(self.stage.eta()))
