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

    import evotune.search.evaluator as search_mod

    real = search_mod.train_unit
    calls = []

    def flaky(trainer, chunks, unit, **kw):
        calls.append(unit.key)
        out = real(trainer, chunks, unit, **kw)
        if len(calls) == 2:  # the second training's loss became NaN
            out.update(val_acc=0.0, diverged=True)
        return out

    monkeypatch.setattr(search_mod, "train_unit", flaky)
    train, val, _ = splits
    trials, _, best = run_search(backbone, train, val, MEMORY, search_params(), training)
    assert len(trials) == 4 + 2 * (2 * 1 + 4 - 1)  # the search finished
    row = trials[trials["key"] == calls[1]].iloc[0]
    assert row["diverged"] and row["fitness"] == 1.0
    assert best.fitness < 1.0 and not math.isnan(best.fitness)


def test_study_name_ignores_where_and_how_fast_it_runs_but_not_what_it_computes(backbone, splits, training, search_params):
    from evotune.search.config import SearchConfig
    from evotune.search.runner import search_chunks
    from evotune.search.store import study_name_for
    from evotune.training import TrainConfig

    train, val, _ = splits
    sp = SearchConfig.from_params(search_params())
    chunks = search_chunks(train, val, n_chunks=sp.n_chunks, seed=sp.chunk_seed)
    name = study_name_for(sp, TrainConfig.from_params(training), backbone, train, val, *chunks)
    same = [{**training, "cpu_threads": 1}, {**training, "device": "auto"}]
    for params in same:
        assert study_name_for(sp, TrainConfig.from_params(params), backbone, train, val, *chunks) == name, params
    other = [{**training, "epochs": 3}, {**training, "fused_optimizer": False}, {**training, "frozen_bn": "train"}]
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


def test_the_studies_read_well_in_the_dashboard(backbone, splits, tmp_path, training, search_params):
    """The search study and its units study, loaded through Optuna's API as optuna-dashboard loads them."""
    from evotune.genome import gene_names
    from evotune.search.queue import UNIT_METRIC, UNITS_DESCRIPTION, UNITS_SUFFIX
    from evotune.search.store import SEARCH_DESCRIPTION, SEARCH_METRIC

    train, val, _ = splits
    url = f"sqlite:///{tmp_path}/study.db"
    trials, _, best = run_search(backbone, train, val, StudyStore(url), search_params(generations=1), training)
    names = gene_names(best.block_names)
    assert names == [f"gene_{b}" for b in best.block_names] + ["gene_threshold"]
    assert [c for c in trials.columns if c.startswith("gene_")] == names  # the trials table's columns
    studies = _studies(url)
    assert set(studies) == {best.study_name, best.study_name + UNITS_SUFFIX}
    search = studies[best.study_name]
    done = _assert_readable(search, names, SEARCH_METRIC, SEARCH_DESCRIPTION)
    assert len(done) == len(trials)
    assert search.user_attrs["units_study"] == best.study_name + UNITS_SUFFIX
    units = _assert_readable(studies[best.study_name + UNITS_SUFFIX], names, UNIT_METRIC, UNITS_DESCRIPTION)
    # an evaluation's start and end are its trainings': within the span of its units (claimed, then told)
    for t in done:
        own = [u for u in units if u.user_attrs["key"] == t.user_attrs["key"]]
        assert len(own) == (1 if t.user_attrs["valid"] else 0)
        if own:
            assert min(u.datetime_start for u in own) <= t.datetime_start
            assert t.datetime_complete <= max(u.datetime_complete for u in own)


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


def test_a_study_recorded_under_the_old_gene_names_resumes(backbone, splits, tmp_path, training, search_params,
                                                          monkeypatch):
    """A study written before the genes were named after their blocks (parameters g00..g06), by a search
    that stopped half-way, is read and resumed: its evaluations are reused (matched by key and genes),
    the rest are recorded under the new names, and the search ends as an uninterrupted one."""
    import evotune.search.queue as queue_mod
    import evotune.search.store as store_mod
    from evotune.genome import gene_names

    train, val, _ = splits
    store = StudyStore(f"sqlite:///{tmp_path}/study.db")
    record = store_mod.TrialRecorder.record

    def stop_after_five(self, *args, **kw):
        if self.completed == 5:
            raise RuntimeError("stopped")
        return record(self, *args, **kw)

    with monkeypatch.context() as m:
        old = lambda block_names: store_mod.index_gene_names(len(block_names) + 1)  # noqa: E731
        m.setattr(store_mod, "gene_param_names", old)
        m.setattr(queue_mod, "gene_param_names", old)
        m.setattr(store_mod.TrialRecorder, "record", stop_after_five)
        with pytest.raises(RuntimeError, match="stopped"):
            run_search(backbone, train, val, store, search_params(generations=1), training)
    trials, _, best = run_search(backbone, train, val, store, search_params(generations=1), training)
    assert trials["cached"].tolist() == [True] * 5 + [False] * (len(trials) - 5)
    uninterrupted = run_search(backbone, train, val, MEMORY, search_params(generations=1), training)
    assert trials["fitness"].tolist() == uninterrupted[0]["fitness"].tolist()
    assert best.genes == uninterrupted[2].genes
    study = _studies(store.url)[best.study_name]
    assert [list(t.params) for t in study.trials] == ([[f"g{i:02d}" for i in range(7)]] * 5
                                                      + [gene_names(best.block_names)] * (len(trials) - 5))


def test_a_unit_queued_under_the_old_gene_names_is_queued_again(monkeypatch):
    """A unit left waiting by an earlier version (genes under g00..) is not trained with genes Optuna
    would sample for the new names: it is failed and the search queues it again under the new ones."""
    import evotune.search.queue as queue_mod
    import evotune.search.store as store_mod
    from evotune.search.queue import Unit, UnitQueue

    blocks = ["stem", "layer1", "fc"]
    unit = Unit("g0/init/0", 1, 0, (0.9, 0.2, 0.7, 0.5))
    with monkeypatch.context() as m:
        old = lambda block_names: store_mod.index_gene_names(len(block_names) + 1)  # noqa: E731
        m.setattr(queue_mod, "gene_param_names", old)
        legacy = UnitQueue(None, "s", blocks)
        legacy.enqueue_missing([unit])
    queue = UnitQueue(None, "s", blocks, study=legacy.study)
    assert queue.claim() is None  # the old unit is failed, not trained
    assert queue.enqueue_missing([unit]) == 1
    trial, claimed = queue.claim()
    assert claimed == unit and list(trial.params) == ["gene_stem", "gene_layer1", "gene_fc", "gene_threshold"]
    assert store_mod.genes_from_params({"g00": 0.9, "g01": 0.2, "g02": 0.7, "g03": 0.5}, queue.names) == unit.genes
    with pytest.raises(RuntimeError, match="another backbone"):
        store_mod.genes_from_params({"gene_x": 0.1}, queue.names)


def test_a_unit_claimed_by_a_process_killed_before_naming_itself_is_queued_again(monkeypatch):
    """A process killed between `Study.ask` and naming itself on the unit leaves it RUNNING with no worker and no
    heartbeat: it is queued again once it has been running ORPHAN_AFTER_S, not waited on forever (a resumed
    search hung on such a unit in CI)."""
    import evotune.search.queue as queue_mod
    from evotune.search.queue import Unit, UnitQueue

    blocks = ["stem", "layer1", "fc"]
    unit = Unit("g0/init/0", 1, 0, (0.9, 0.2, 0.7, 0.5))
    queue = UnitQueue(None, "s", blocks)
    queue.enqueue_missing([unit])
    orphan = queue.study.ask(queue.distributions)  # the killed process's claim: no `worker`, no `alive_at`
    assert orphan.user_attrs["key"] == unit.key and "worker" not in orphan.user_attrs
    assert queue.requeue_stale() == 0 and queue.claim() is None  # just claimed: its process may still name itself
    later = time.time() + queue_mod.ORPHAN_AFTER_S + 1
    monkeypatch.setattr(queue_mod.time, "time", lambda: later)
    assert queue.requeue_stale() == 1
    trial, claimed = queue.claim()
    assert claimed == unit and trial.user_attrs["worker"] == queue.me


def test_a_unit_claimed_by_a_process_killed_inside_ask_is_queued_again_with_its_genes(monkeypatch):
    """Killed inside `Study.ask`, after the trial became RUNNING but before its parameters were set, the claim
    holds no genes yet (only Optuna's fixed params of the enqueued unit): the requeue reads them there (it
    raised 'the study was written for another backbone' in CI's SIGKILL test)."""
    import evotune.search.queue as queue_mod
    from evotune.search.queue import Unit, UnitQueue

    unit = Unit("g0/init/1", 2, 1, (0.1, 0.8, 0.3, 0.6))
    queue = UnitQueue(None, "s", ["stem", "layer1", "fc"])
    queue.enqueue_missing([unit])
    orphan = queue.study.ask()  # no distributions: the RUNNING trial has no parameters yet
    assert orphan.params == {}
    later = time.time() + queue_mod.ORPHAN_AFTER_S + 1
    monkeypatch.setattr(queue_mod.time, "time", lambda: later)
    assert queue.requeue_stale() == 1
    trial, claimed = queue.claim()
    assert claimed == unit
