"""The progress of long stages (evotune.progress): the lines view, the live bar, and the stages that use them."""

from __future__ import annotations

import io
import logging
import re

import pytest
import rich
import torch
from rich.console import Console

from evotune import progress
from evotune.backbones import build_model
from evotune.errors import ParameterError
from evotune.pipelines.retrain.nodes import retrain_best_genome
from evotune.pipelines.search.nodes import run_search
from evotune.progress import ProgressConfig, configure, track
from evotune.search.store import StudyStore


@pytest.fixture(autouse=True)
def _restore_progress_config():
    yield
    progress.stop_all()
    configure(ProgressConfig("auto", 30.0))


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "evotune.progress"]


def test_lines_report_done_of_total_status_eta_and_the_running_epoch(caplog):
    configure(ProgressConfig("lines", 0.0))
    caplog.set_level(logging.INFO, logger="evotune.progress")
    with track("demo", 5) as stage:
        stage.set_status("generation 1/2")
        stage.start("g0/init/0 seed 1")
        stage.epoch("g0/init/0 seed 1", {"epoch": 2, "train_loss": 1.0, "val_macro_acc": 0.5}, 3)
        assert stage.eta() is None  # nothing timed yet
        stage.advance(2, timed=False, note="g0/init/1 from the study")
        assert stage.eta() is None  # items that cost nothing do not make an ETA
        stage.advance(1, note="g0/init/2 seed 1: val 0.700")
        assert stage.eta() == pytest.approx(2 * stage.timed_seconds)
    lines = messages(caplog)
    assert lines[0].startswith("demo: 0/5 trainings (0 %), generation 1/2, ")
    assert lines[0].endswith("ETA ?, g0/init/0 seed 1 epoch 2/3 val 0.500")
    assert lines[1].startswith("demo: 2/5 trainings (40 %), generation 1/2") and "ETA ?" in lines[1]
    assert re.search(r"^demo: 3/5 trainings \(60 %\), generation 1/2, \S+ elapsed, ETA \d+s, "
                     r"g0/init/2 seed 1: val 0\.700$", lines[2]), lines[2]
    assert re.match(r"demo done: 3 trainings in \d+s$", lines[-1])


def test_lines_are_at_most_one_per_every_s_and_one_at_the_end(caplog):
    configure(ProgressConfig("lines", 3600.0))
    caplog.set_level(logging.INFO, logger="evotune.progress")
    with track("quiet", 100, unit="images") as stage:
        for _ in range(100):
            stage.advance(1)
    assert messages(caplog) == [m for m in messages(caplog) if m.startswith("quiet done: 100 images in ")]
    assert len(messages(caplog)) == 1


def test_off_shows_nothing_and_a_failed_stage_claims_no_end(caplog):
    caplog.set_level(logging.INFO, logger="evotune.progress")
    configure(ProgressConfig("off", 0.0))
    with track("silent", 2) as stage:
        stage.advance(2)
    configure(ProgressConfig("lines", 3600.0))
    with pytest.raises(RuntimeError), track("broken", 2) as stage:
        stage.advance(1)
        raise RuntimeError("a training failed")
    assert messages(caplog) == []


@pytest.fixture
def terminal(monkeypatch):
    """rich's global console as an interactive terminal writing into a buffer (what Kedro's log handler uses)."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=140, color_system=None)
    monkeypatch.setattr(rich, "_console", console)
    return console, buf


def test_auto_is_a_live_bar_on_a_terminal_shared_with_kedros_log_handler(terminal):
    console, buf = terminal
    configure(ProgressConfig("auto", 30.0))
    assert progress.current_display() == "bar"
    from kedro.logging import RichHandler

    handler = RichHandler()
    with track("BioTune search", 6) as outer:
        live = progress._live
        assert live is not None and live.console is console is handler.console  # logs print above the bar
        with track("compare surgical", 2) as inner:  # nested stages: one row each
            inner.start("surgical[layer3] seed 684")
            inner.epoch("surgical[layer3] seed 684", {"epoch": 1, "val_macro_acc": 0.25}, 4)
            assert [t.description for t in live.tasks] == ["BioTune search", "compare surgical"]
            live.refresh()
        outer.advance(3)
        assert [t.description for t in live.tasks] == ["BioTune search"]
        assert live.tasks[0].completed == 3 and live.tasks[0].total == 6
        live.refresh()
    assert progress._live is None  # the display stops with its last stage
    out = buf.getvalue()
    assert "compare surgical" in out and "surgical[layer3] seed 684 epoch 1/4 val 0.250" in out
    assert "3/6" in out


def test_auto_is_lines_when_the_output_is_no_terminal(monkeypatch):
    monkeypatch.setattr(rich, "_console", Console(file=io.StringIO(), force_terminal=False))
    configure(ProgressConfig("auto", 30.0))
    assert progress.current_display() == "lines"


@pytest.mark.parametrize("params, says", [
    ({"display": "fancy", "every_s": 30}, "progress.display must be one of auto, bar, lines, off, got 'fancy'"),
    ({"display": "bar", "every_s": -1}, "progress.every_s must be >= 0"),
    ({"display": "bar"}, "progress.every_s"),
    ({"display": "bar", "every_s": 1, "colour": 1}, "Unknown parameter(s) progress.colour"),
])
def test_bad_progress_parameters_are_named(params, says):
    with pytest.raises(ParameterError, match=re.escape(says)) as err:
        ProgressConfig.from_params(params)
    assert "conf/base/parameters.yml" in str(err.value)


# --------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def tiny(base_parameters, backbone_checkpoint, make_split):
    torch.manual_seed(0)
    backbone = backbone_checkpoint(build_model("resnet10", 3), 3)
    training = {**base_parameters()["training"], "epochs": 2, "patience": 2, "batch_size": 16,
                "eval_batch_size": 64, "device": "cpu"}
    search = {**base_parameters()["search"], "population": 4, "elite": 1, "generations": 2, "seed": 0,
              "seeds": [1], "train_split_pct": 0.5, "study_name": "t"}
    return backbone, (make_split(6, 3, seed=0), make_split(4, 3, seed=1)), training, search


def test_the_search_counts_every_training_of_its_budget_and_shows_generation_and_epochs(tiny, tmp_path, caplog):
    backbone, (train, val), training, search = tiny
    configure(ProgressConfig("lines", 0.0))
    caplog.set_level(logging.INFO, logger="evotune.progress")
    store = StudyStore(f"sqlite:///{tmp_path}/study.db")
    run_search(backbone, train, val, store, search, training)
    budget = 4 + 2 * (2 * 1 + 4 - 1)  # N + G (2E + N - E) evaluations x 1 seed
    lines = messages(caplog)
    assert lines[-1].startswith(f"BioTune search done: {budget} trainings in ")
    assert any(re.search(r"generation 2/2 \(\w+\)", m) for m in lines)
    assert any(re.search(r"g\d/\S+ seed 1 epoch [12]/2 val \d\.\d{3}", m) for m in lines)
    # a rerun resumes every evaluation from the study: counted, not timed, no invented ETA
    caplog.clear()
    run_search(backbone, train, val, store, search, training)
    lines = messages(caplog)
    assert lines[-1].startswith(f"BioTune search done: {budget} trainings in ")
    assert all("ETA" not in m or "ETA ?" in m for m in lines)


def test_the_retrain_shows_each_seed_of_the_genome(tiny, caplog):
    backbone, (train, val), training, search = tiny
    configure(ProgressConfig("lines", 0.0))
    caplog.set_level(logging.INFO, logger="evotune.progress")
    _, _, best = run_search(backbone, train, val, StudyStore(None), search, training)
    caplog.clear()
    retrain_best_genome(backbone, train, val, best, {"seeds": [3, 4], "training": {}}, training)
    lines = messages(caplog)
    assert any(m.startswith(f"retrain {best.mask}: 1/2 trainings (50 %)")
               and re.search(r"retrain seed 3: val \d\.\d{3}$", m) for m in lines), lines
    assert lines[-1].startswith(f"retrain {best.mask} done: 2 trainings in ")
