"""A search survives SIGKILL (resume) and shares its work with worker processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from evotune.backbones import build_model
from evotune.pipelines.search.nodes import run_search
from evotune.search.store import StudyStore, make_storage

#: the integration tier: search and worker processes, SIGKILL, PostgreSQL (make test-integration)
pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
#: conf/base's `training` with these values (tests/test_cuda.py sets the device here)
TRAINING = {"epochs": 3, "patience": 3, "batch_size": 8, "eval_batch_size": 64, "device": "cpu"}


def make_inputs(tmp_path, storage, base_parameters: dict, make_split, backbone_checkpoint, **search):
    """The search node's inputs, and the file they are saved to. ``base_parameters``: conf/base's parameters;
    ``make_split``, ``backbone_checkpoint``: the conftest fixtures'."""
    torch.manual_seed(0)
    model = build_model("resnet10", 3)
    backbone = backbone_checkpoint(model, 3)
    params = {**base_parameters["search"], "population": 4, "elite": 1, "generations": 1, "seed": 0, "seeds": [1, 2],
              "train_split_pct": 0.5, "study_name": "s", "worker_poll_s": 0.05, **search}
    data = {"backbone": backbone, "storage": storage, "train": make_split(16, 3), "val": make_split(4, 3, seed=1),
            "search": params, "training": {**base_parameters["training"], **TRAINING}}
    path = tmp_path / "inputs.pt"
    torch.save(data, path)
    return data, path


@pytest.fixture
def inputs(base_parameters, make_split, backbone_checkpoint):
    """``inputs(tmp_path, storage, **search)``: :func:`make_inputs` with conf/base's parameters."""
    def make(tmp_path, storage, **search):
        return make_inputs(tmp_path, storage, base_parameters(), make_split, backbone_checkpoint, **search)

    return make


def spawn(role, path):
    """Start a search or worker process; its output goes to files (a full pipe would block it)."""
    # keep the caller's PYTHONPATH (scripts/device_check.sh puts the installed wheels there)
    paths = [str(HERE.parent / "src"), str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out, err = path.with_suffix(f".{role}.out"), path.with_suffix(f".{role}.err")
    proc = subprocess.Popen([sys.executable, str(HERE / "search_process.py"), role, str(path)],
                            stdout=out.open("w"), stderr=err.open("w"), text=True, env=env)
    proc.out_path, proc.err_path = out, err
    return proc


def trainings(url) -> dict[tuple[str, int], list[dict]]:
    """Every finished training (key, seed) in the storage's one search study, as each trial records it: a
    trial queued again after its process died carries the trainings that process finished (user attribute
    ``runs``), so one training can be recorded on several trials, always with the same worker and start."""
    storage = make_storage(url)
    out: dict[tuple[str, int], list[dict]] = {}
    for summary in optuna.get_all_study_summaries(storage):
        for t in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False):
            for seed, run in t.user_attrs.get("runs", {}).items():
                out.setdefault((t.user_attrs["key"], int(seed)), []).append(run)
    return out


def trained_once(found: dict[tuple[str, int], list[dict]]) -> dict[tuple[str, int], dict]:
    """Each training's one record; a training done twice (another worker or start) fails the test."""
    for uid, runs in found.items():
        assert len({(r["worker"], r["started_at"]) for r in runs}) == 1, f"{uid} was trained more than once"
    return {uid: runs[0] for uid, runs in found.items()}


def run_args(d):
    """The search node's inputs (the catalog's search_study_store as its StudyStore)."""
    return d["backbone"], d["train"], d["val"], StudyStore(d["storage"]), d["search"], d["training"]


@pytest.mark.timeout(900)
def test_search_killed_with_sigkill_resumes_without_repeating_work(tmp_path, inputs):
    storage = f"sqlite:///{tmp_path}/study.db"
    d, path = inputs(tmp_path, storage)
    proc = spawn("search", path)
    # wait for 3 finished trainings, however slow a loaded machine is (no timing assumption;
    # the loop ends as soon as they are there, or when the search process has ended)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and len(trainings(storage)) < 3:
        time.sleep(0.2)
    # killed while it runs (as test_cuda.py's twin checks): a search that ended first makes "resume" a plain replay
    assert proc.poll() is None, "the search ended before it was killed: " + proc.err_path.read_text()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = trained_once(trainings(storage))
    assert len(done_before) >= 3, "the search should have finished some trainings before the kill"

    trials, _, best = run_search(*run_args(d))
    after = trained_once(trainings(storage))  # a finished training was never repeated
    assert len(after) > len(done_before), "the resumed search trained nothing: the kill left no work"
    for uid, run in done_before.items():  # trainings finished before the kill were reused, not redone
        assert after[uid] == run
    # the same result as an uninterrupted run
    mem = dict(d, storage=None)
    ref_trials, _, ref_best = run_search(*run_args(mem))
    assert trials["fitness"].tolist() == pytest.approx(ref_trials["fitness"].tolist())
    assert best.genes == ref_best.genes


@pytest.fixture(params=["journal", "postgresql"])
def shared_storage(request, tmp_path):
    if request.param == "journal":
        yield f"journal://{tmp_path}/study.log"
    else:
        from postgres_server import postgres_server

        with postgres_server() as url:
            yield url


@pytest.mark.timeout(900)  # a guard against a hang: 251-294 s measured on the loaded 2-core machine
def test_two_workers_share_one_search(tmp_path, shared_storage, inputs):
    storage = shared_storage
    d, path = inputs(tmp_path, storage, population=6, generations=1)
    worker = spawn("worker", path)
    # wait until the worker has opened the study and is polling for work
    deadline = time.time() + 120
    while time.time() < deadline and worker.poll() is None and "search worker" not in worker.err_path.read_text():
        time.sleep(0.2)
    assert "search worker" in worker.err_path.read_text(), worker.err_path.read_text()[-3000:]
    trials, _, best = run_search(*run_args(d))
    worker.wait(timeout=120)
    out, err = worker.out_path.read_text(), worker.err_path.read_text()
    assert worker.returncode == 0, err[-2000:]
    n_worker = int(out.split("WORKER_UNITS")[1].split()[0])
    done = trained_once(trainings(storage))
    workers = {run["worker"] for run in done.values()}
    assert n_worker >= 1 and len(workers) == 2, workers
    mem = dict(d, storage=None)
    ref_trials, _, ref_best = run_search(*run_args(mem))
    assert trials["fitness"].tolist() == pytest.approx(ref_trials["fitness"].tolist())
    assert best.genes == ref_best.genes
