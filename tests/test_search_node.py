"""The search node end to end on a tiny backbone and tiny data (real code paths)."""

import dataclasses
import time
from dataclasses import replace

import pandas as pd
import pytest
import torch

from evotune.backbones import build_model
from evotune.data import DataSourceError
from evotune.errors import ParameterError
from evotune.pipelines.retrain.nodes import evaluate_on_test, retrain_best_genome
from evotune.pipelines.search.nodes import run_search
from evotune.search.store import StudyStore


@pytest.fixture(scope="module")
def training(base_parameters):
    return {**base_parameters()["training"], "epochs": 2, "patience": 2, "batch_size": 16, "eval_batch_size": 64,
            "device": "cpu"}


@pytest.fixture(scope="module")
def backbone(backbone_checkpoint):
    torch.manual_seed(0)
    model = build_model("resnet10", 3)
    return backbone_checkpoint(model, 3)


@pytest.fixture(scope="module")
def splits(make_split):
    return make_split(6, 3, seed=0), make_split(4, 3, seed=1), make_split(4, 3, seed=2)


#: the catalog's search_study_store for an in-memory study
MEMORY = StudyStore(None)


@pytest.fixture(scope="module")
def search_params(base_parameters):
    """``search_params(**kw)``: conf/base's `search` at tiny sizes, with ``kw``."""
    def params(**kw):
        return {**base_parameters()["search"], "population": 4, "elite": 1, "generations": 2, "seed": 0, "seeds": [1],
                "train_split_pct": 0.5, "study_name": "t", **kw}

    return params


def test_tiny_search_is_reproducible_and_records_every_evaluation(backbone, splits, training, search_params):
    train, val, _ = splits
    a = run_search(backbone, train, val, MEMORY, search_params(), training)
    b = run_search(backbone, train, val, MEMORY, search_params(), training)
    trials, population, best = a
    assert len(trials) == 4 + 2 * (2 * 1 + 4 - 1)
    assert trials["fitness"].tolist() == b[0]["fitness"].tolist()
    assert best.genes == b[2].genes
    assert best.fitness == trials["fitness"].min()
    assert set(trials["chunk"]) == {0, 1}
    assert set(population["generation"]) == {0, 1, 2}
    assert len(best.block_names) == 6 and len(best.genes) == 7
    assert best.mask[-1] == "1"  # head forced trainable
    # per seed, the validation accuracy of every epoch: its best is the recorded accuracy
    for row in trials[trials["valid"]].itertuples():
        histories, accs, epochs = row.val_histories, row.val_accs, row.epochs
        assert [len(h) for h in histories] == epochs
        assert [max(h) for h in histories] == pytest.approx(accs, abs=1e-6)


def test_rerun_on_the_same_study_reuses_every_trial(backbone, splits, tmp_path, training, search_params):
    train, val, _ = splits
    storage = f"sqlite:///{tmp_path}/study.db"
    first = run_search(backbone, train, val, StudyStore(storage), search_params(), training)
    second = run_search(backbone, train, val, StudyStore(storage), search_params(), training)
    assert not first[0]["cached"].any()
    assert second[0]["cached"].all()
    assert second[0]["fitness"].tolist() == first[0]["fitness"].tolist()
    assert second[2].genes == first[2].genes
    # other settings give another study, not a clash
    third = run_search(backbone, train, val, StudyStore(storage), search_params(seed=1), training)
    assert not third[0]["cached"].any()
    assert third[2].study_name != first[2].study_name


def test_the_search_cuts_its_chunks_from_its_own_parameter(backbone, splits, training, search_params):
    """The chunks follow search.train_split_pct without a rerun of the data stage; data too small
    for them is an error naming the parameter."""
    train, val, _ = splits
    trials, _, _ = run_search(backbone, train, val, MEMORY, search_params(train_split_pct=0.34), training)
    assert set(trials["chunk"]) == {0, 1, 2}  # ceil(1 / 0.34) chunks, generation g on chunk g mod 3
    with pytest.raises(DataSourceError, match=r"(?s)has 4 val image\(s\).*raise search.train_split_pct"):
        run_search(backbone, train, val, MEMORY, search_params(train_split_pct=0.2), training)


def test_search_storage_belongs_to_the_catalog(backbone, splits, training, search_params):
    """--params search.storage=... reaches the search through the catalog's search_study_store; the same key
    set in a parameters file (another value than the catalog's) is an error, not silently ignored."""
    train, val, _ = splits
    with pytest.raises(ParameterError, match="search_study_store"):
        run_search(backbone, train, val, MEMORY, search_params(storage="sqlite:///x.db"), training)


def test_retrain_and_test_evaluation(backbone, splits, training, search_params):
    train, val, test = splits
    _, _, best = run_search(backbone, train, val, MEMORY, search_params(generations=0), training)
    retrained = retrain_best_genome(backbone, train, val, best, {"seeds": [1, 2], "training": {}}, training)
    assert [r.seed for r in retrained.runs] == [1, 2]
    assert 0 < retrained.trainable_params <= retrained.total_params
    summary, per_seed = evaluate_on_test(backbone, retrained, test, training)
    assert isinstance(per_seed, pd.DataFrame) and len(per_seed) == 2
    assert summary.accuracy_mean == pytest.approx(per_seed["accuracy"].mean())
    assert sum(map(sum, summary.confusion_matrix)) == 2 * 12
    assert 0 < summary.trainable_share <= 1


def test_a_diverging_genome_scores_worst_and_the_search_goes_on(backbone, splits, monkeypatch, training, search_params):
    import math

    from evotune.search.evaluator import GenomeEvaluator

    real = GenomeEvaluator.train
    calls = []

    def flaky(self, key, *args, **kw):
        calls.append(key)
        out = real(self, key, *args, **kw)
        if len(calls) == 2:  # the second training's loss became NaN
            out.update(val_acc=0.0, diverged=True)
        return out

    monkeypatch.setattr(GenomeEvaluator, "train", flaky)
    train, val, _ = splits
    trials, _, best = run_search(backbone, train, val, MEMORY, search_params(), training)
    assert len(trials) == 4 + 2 * (2 * 1 + 4 - 1)  # the search finished
    row = trials[trials["key"] == calls[1]].iloc[0]
    assert row["diverged"] and row["fitness"] == 1.0
    assert best.fitness < 1.0 and not math.isnan(best.fitness)


def test_study_name_ignores_where_and_how_fast_it_runs_but_not_what_it_computes(backbone, splits, training, search_params):
    from evotune.data.splitting import search_chunks
    from evotune.search.config import SearchConfig
    from evotune.search.store import study_name_for
    from evotune.training import TrainConfig

    train, val, _ = splits
    sp = SearchConfig.from_params(search_params())
    chunks = search_chunks(train, val, n_chunks=sp.n_chunks, seed=sp.chunk_seed)
    name = study_name_for(sp, TrainConfig.from_params(training), backbone, train, val, *chunks)
    same = [{**training, "cpu_threads": 1}, {**training, "device": "auto"}]
    for params in same:
        assert study_name_for(sp, TrainConfig.from_params(params), backbone, train, val, *chunks) == name, params
    other = [{**training, "epochs": 3}, {**training, "fused_optimizer": False}, {**training, "frozen_bn": "train"},
             {**training, "augment": "standard"}]
    assert training["frozen_bn"] == "eval"  # so the two batch-norm policies give two studies
    for params in other:
        assert study_name_for(sp, TrainConfig.from_params(params), backbone, train, val, *chunks) != name, params
    assert study_name_for(sp, TrainConfig.from_params(training), backbone, train, val, *chunks[::-1]) != name


def test_stages_refuse_inputs_made_from_other_data_or_another_backbone(backbone, splits, training, search_params):
    """After a run that stopped half-way the newest backbone can belong to other data (a 6-class backbone
    beside 2-class tensors): the search, the retrain and the test name the mismatch instead of running."""
    from evotune.errors import InputMismatchError

    train, val, test = splits
    other = dataclasses.replace(backbone, dataset="other-data")
    with pytest.raises(InputMismatchError, match=r"evolutionary_search.*backbone: other-data.*target_train: tiny"):
        run_search(other, train, val, MEMORY, search_params(), training)
    _, _, best = run_search(backbone, train, val, MEMORY, search_params(generations=0), training)
    assert best.dataset == "tiny" and best.backbone_id == backbone.backbone_id
    retrain = {"seeds": [1], "training": {}}
    with pytest.raises(InputMismatchError, match=r"retrain.*backbone_id.*kedro run --from-nodes evolutionary_search"):
        retrain_best_genome(backbone, train, val, replace(best, backbone_id="another"), retrain, training)
    with pytest.raises(InputMismatchError, match="not recorded"):
        retrain_best_genome(backbone, train, val, replace(best, dataset=None), retrain, training)
    retrained = retrain_best_genome(backbone, train, val, best, retrain, training)
    with pytest.raises(InputMismatchError, match="evaluate_on_test.*target_test: elsewhere"):
        evaluate_on_test(backbone, retrained, dataclasses.replace(test, dataset="elsewhere"), training)


def test_search_outputs_round_trip_through_the_catalog(backbone, splits, tmp_path, training, search_params, root):
    """search_trials and search_population as Parquet (lists stay lists, masks stay strings), best_genome as a
    typed GenomeRecord, and the study store from its catalog entry."""
    import yaml
    from kedro.io import DataCatalog

    from evotune.search.records import GenomeRecord

    cfg = yaml.safe_load((root / "conf/base/catalog.yml").read_text())
    entries = {n: cfg[n] for n in ("search_trials", "search_population", "best_genome")}
    for e in entries.values():
        e["filepath"] = str(tmp_path / e["filepath"])
    entries["search_study_store"] = {"type": "evotune.io.StudyStoreDataset", "storage": None}
    catalog = DataCatalog.from_config(entries)
    assert catalog.load("search_study_store") == MEMORY
    trials, population, best = run_search(backbone, *splits[:2], MEMORY, search_params(generations=1), training)
    for name, data in (("search_trials", trials), ("search_population", population), ("best_genome", best)):
        catalog.save(name, data)
    loaded = catalog.load("search_trials")
    valid = loaded[loaded["valid"]].iloc[0]
    assert list(valid["val_accs"]) == trials[trials["valid"]].iloc[0]["val_accs"]
    assert [list(h) for h in valid["val_histories"]] == trials[trials["valid"]].iloc[0]["val_histories"]
    assert loaded["mask"].tolist() == trials["mask"].tolist() and loaded["mask"].map(type).eq(str).all()
    assert catalog.load("search_population")["mask"].tolist() == population["mask"].tolist()
    again = catalog.load("best_genome")
    assert isinstance(again, GenomeRecord) and again == best


def _studies(url):
    """Every study in the storage at ``url``, by name (as the Optuna dashboard lists them)."""
    import optuna

    from evotune.search.store import make_storage

    storage = make_storage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def _assert_readable(study, names, metric, description):
    """What the dashboard shows of a study: parameters named after the blocks, a named objective,
    a description, and a start and end for every finished trial (its timeline)."""
    import optuna

    assert study.metric_names == [metric]
    assert study.user_attrs["description"] == description
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done
    for t in done:
        assert list(t.params) == names, t.params
        assert t.datetime_start is not None and t.datetime_start <= t.datetime_complete
    return done


def test_the_study_reads_well_in_the_dashboard(backbone, splits, tmp_path, training, search_params):
    """One study per search, loaded through Optuna's API as optuna-dashboard loads it: one trial per
    evaluation, its trainings (by seed) among its user attributes."""
    from evotune.genome import gene_names
    from evotune.search.store import SEARCH_DESCRIPTION, SEARCH_METRIC

    train, val, _ = splits
    url = f"sqlite:///{tmp_path}/study.db"
    trials, _, best = run_search(backbone, train, val, StudyStore(url), search_params(generations=1, seeds=[1, 2]),
                                 training)
    names = gene_names(best.block_names)
    assert names == [f"gene_{b}" for b in best.block_names] + ["gene_threshold"]
    assert [c for c in trials.columns if c.startswith("gene_")] == names  # the trials table's columns
    studies = _studies(url)
    assert set(studies) == {best.study_name}
    done = _assert_readable(studies[best.study_name], names, SEARCH_METRIC, SEARCH_DESCRIPTION)
    assert len(done) == len(trials) and len(studies[best.study_name].trials) == len(trials)  # nothing else
    by_key = {t.user_attrs["key"]: t for t in done}
    for row in trials.itertuples():
        t = by_key[row.key]
        assert t.value == row.fitness and t.user_attrs["val_accs"] == row.val_accs
        if row.valid:
            assert [t.user_attrs["runs"][s]["val_acc"] for s in ("1", "2")] == row.val_accs


@pytest.mark.parametrize("name", ["tpe", "random_search", "deft", "nsga2"])
def test_a_search_baselines_study_reads_well_and_resumes(name, backbone, splits, tmp_path, training, search_params,
                                                         method_params):
    """DEFT, random search and TPE record their evaluations under the same parameter names (TPE's
    sampler keeps its own index names inside, so a rerun replays its proposals from the study)."""
    from evotune.genome import gene_names
    from evotune.methods import METHODS
    from evotune.search.runner import run_baseline
    from evotune.search.store import SEARCH_DESCRIPTION, SEARCH_METRIC

    train, val, _ = splits
    store = StudyStore(f"sqlite:///{tmp_path}/study.db")
    method = METHODS[name]
    params = method.resolve_params(method_params(name))
    first, best = run_baseline(method, params, backbone, train, val, store, search_params(generations=0), training)
    studies = _studies(store.url)
    assert set(studies) == {best.study_name} and best.study_name.startswith(f"t-{name}-")
    done = _assert_readable(studies[best.study_name], gene_names(best.block_names), SEARCH_METRIC, SEARCH_DESCRIPTION)
    assert len(done) == len(first) == 4
    again, best_again = run_baseline(method, params, backbone, train, val, store, search_params(generations=0),
                                     training)
    assert again["cached"].all() and again["fitness"].tolist() == first["fitness"].tolist()
    assert best_again.genes == best.genes


def _queued(blocks=("stem", "layer1", "fc"), storage=None, **kw):
    """A TrialQueue on a fresh study (in memory, or the storage at ``storage``) holding one queued evaluation."""
    import optuna

    from evotune.search.queue import TrialQueue
    from evotune.search.store import make_storage

    opened = make_storage(storage, kw.pop("grace_period_s", None))
    queue = TrialQueue(optuna.create_study(storage=opened), list(blocks), storage=opened, **kw)
    queue.enqueue("g0/init/0", (0.9, 0.2, 0.7, 0.5), {"generation": 0, "role": "init", "chunk": 0})
    return queue


def test_a_claim_of_a_process_killed_before_naming_itself_is_queued_again(monkeypatch):
    """A process killed between `Study.ask` and naming itself on the trial leaves it RUNNING with no worker and no
    heartbeat: it is queued again once it has been running ORPHAN_AFTER_S, not waited on forever (a resumed
    search hung on such a claim in CI)."""
    import evotune.search.queue as queue_mod

    queue = _queued()
    orphan = queue.study.ask(queue.distributions)  # the killed process's claim: no `worker`, no `alive_at`
    assert orphan.user_attrs["key"] == "g0/init/0" and "worker" not in orphan.user_attrs
    assert queue.requeue_stale() == 0 and queue.claim() is None  # just claimed: its process may still name itself
    later = time.time() + queue_mod.ORPHAN_AFTER_S + 1
    monkeypatch.setattr(queue_mod.time, "time", lambda: later)
    assert queue.requeue_stale() == 1
    trial = queue.claim()
    assert queue.genes(trial) == (0.9, 0.2, 0.7, 0.5) and trial.user_attrs["worker"] == queue.me


def test_a_claim_of_a_process_killed_inside_ask_is_queued_again_with_its_genes(monkeypatch):
    """Killed inside `Study.ask`, after the trial became RUNNING but before its parameters were set, the claim
    holds no genes yet (only Optuna's fixed params of the queued trial): the retry keeps them."""
    import evotune.search.queue as queue_mod

    queue = _queued()
    orphan = queue.study.ask()  # no distributions: the RUNNING trial has no parameters yet
    assert orphan.params == {}
    later = time.time() + queue_mod.ORPHAN_AFTER_S + 1
    monkeypatch.setattr(queue_mod.time, "time", lambda: later)
    assert queue.requeue_stale() == 1
    assert queue.genes(queue.claim()) == (0.9, 0.2, 0.7, 0.5)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_silent_claim_is_queued_again_with_the_trainings_it_finished(kind, tmp_path, monkeypatch):
    """A claim whose process went silent (another host: no pid to look at) is failed and queued again once
    silent search.stale_after_s: on a database by Optuna's heartbeat (fail_stale_trials and
    RetryHeartbeatStaleTrialCallback), on a journal file by its alive_at. The retry carries the trainings
    the dead claim finished (user attribute runs), so they are not trained again."""
    import evotune.search.queue as queue_mod

    url = f"sqlite:///{tmp_path}/s.db" if kind == "sqlite" else f"journal://{tmp_path}/s.log"
    queue = _queued(storage=url, stale_after_s=1, grace_period_s=1)
    other = _queued(storage=url, stale_after_s=1)  # the same storage, another study: untouched
    trial = queue.claim()
    trial.set_user_attr("runs", {"1": {"val_acc": 0.5}})
    trial.set_user_attr("worker", "another-host:1")  # not this host's: only silence tells it is gone
    queue.me = "this-host:2"
    if kind == "sqlite":
        time.sleep(3.5)  # the database's clock (whole seconds in SQLite) decides Optuna's heartbeat: nothing to patch
    else:
        later = time.time() + 2
        monkeypatch.setattr(queue_mod.time, "time", lambda: later)
    queue.requeue_stale()
    retry = queue.claim()
    assert retry is not None and retry.number != trial.number
    assert retry.user_attrs["runs"] == {"1": {"val_acc": 0.5}} and queue.genes(retry) == (0.9, 0.2, 0.7, 0.5)
    assert [t.state.name for t in other.study.trials] == ["WAITING"]


@pytest.mark.parametrize("taken_at_seed", [1, 2])
def test_a_claim_queued_again_while_its_process_trains_ends_without_crashing_the_search(make_trainer, monkeypatch,
                                                                                        caplog, taken_at_seed):
    """A process silent longer than search.stale_after_s (an epoch that slow, a suspended laptop) has its claim
    failed and queued again by another process. When it comes back, Optuna refuses its writes to the finished
    trial: it warns and goes on (the search is not crashed), the retry keeps the trainings recorded before the
    takeover, and nothing is queued twice."""
    import logging

    import optuna
    from optuna.trial import TrialState

    from evotune.search.evaluator import GenomeEvaluator
    from evotune.search.queue import TrialQueue

    trainer = make_trainer(epochs=1)
    blocks = list(trainer.model.block_names)
    queue = TrialQueue(optuna.create_study(), blocks)
    queue.enqueue("g0/init/0", tuple([0.9] * (len(blocks) + 1)), {"generation": 0, "role": "init", "chunk": 0})
    evaluator = GenomeEvaluator(trainer, {}, seeds=[1, 2], base_lr=0.01, force_head=True, queue=queue)

    def train(key, seed, chunk, genes, heartbeat=None):
        if seed == taken_at_seed:  # meanwhile another process found the claim silent: failed, queued again
            (running,) = queue.study.get_trials(states=(TrialState.RUNNING,))
            queue.release(running.number)
        return {"val_acc": 0.5, "epochs_run": 1}

    monkeypatch.setattr(evaluator, "train", train)
    with caplog.at_level(logging.WARNING, logger="evotune.search.evaluator"):
        done = evaluator.run_one()
    assert [d["seed"] for d in done] == list(range(1, taken_at_seed))
    assert "queued again by another process" in caplog.text
    states = [t.state for t in queue.study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert set(queue.study.trials[1].user_attrs.get("runs", {})) == {str(s) for s in range(1, taken_at_seed)}


#: a claiming process (test_claims_on_sqlite_are_atomic): waits for the common start, claims until nothing waits,
#: prints the trial numbers it claimed
CLAIMER = """
import json, sys, time
import optuna
from evotune.search.queue import TrialQueue
from evotune.search.store import make_storage
storage = make_storage(sys.argv[1])
queue = TrialQueue(optuna.load_study(study_name="race", storage=storage), ["stem", "layer1", "fc"], storage=storage)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
claimed = []
while (trial := queue.claim()) is not None:
    claimed.append(trial.number)
print(json.dumps(claimed))
"""


def test_claims_on_sqlite_are_atomic(tmp_path):
    """SQLite has no row locks: `Study.ask` reads a WAITING trial and writes it RUNNING, and two processes could
    both take the same one (64-69 claims of 60 trials by 4 processes before the fix). Every transaction on a
    SQLite storage takes the write lock at its start, so each waiting evaluation is claimed exactly once."""
    import json
    import subprocess
    import sys

    import optuna

    from evotune.search.queue import TrialQueue
    from evotune.search.store import make_storage

    url = f"sqlite:///{tmp_path}/study.db"
    storage = make_storage(url)
    queue = TrialQueue(optuna.create_study(storage=storage, study_name="race"), ["stem", "layer1", "fc"],
                       storage=storage)
    for i in range(60):
        queue.enqueue(f"g0/init/{i}", (0.9, 0.2, 0.7, 0.5), {"generation": 0, "role": "init", "chunk": 0})
    start = time.time() + 5  # every process started and waiting: they claim at once
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, str(start)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    claimed = [n for p in procs for n in json.loads(p.communicate(timeout=300)[0])]
    assert sorted(claimed) == list(range(60))
