"""The Kedro project as a user meets it: registry, catalog, parameters, kedro viz."""

import json
import typing
from pathlib import Path

import pytest
from kedro.framework.project import configure_project, pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from evotune.io import NewestVersionLinksDataset, StudyStoreDataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(project_copy):
    """The registry, bootstrapped in a copy of the project (conftest's project_copy: a fresh clone's conf/ and
    empty data/, so a user's conf/local or an earlier `kedro run` in the checkout changes nothing here)."""
    bootstrap_project(project_copy)
    configure_project("evotune")
    return pipelines


def test_telemetry_is_disabled_in_the_project():
    assert "consent: false" in (ROOT / ".telemetry").read_text()


def test_registry_has_every_stage_and_the_default_chains_them(project):
    for name in ("__default__", "pretrained", "source_pretraining", "data_processing", "backbone", "search",
                 "search_worker", "retrain", "fidelity", "export", "reporting", "compare", "predict"):
        assert name in project, name
    default = {n.name for n in project["__default__"].nodes}
    for node in ("make_source_dataset", "pretrain_source_model", "ingest_index", "split_dataset",
                 "preprocess_splits", "backbone_from_source", "evolutionary_search", "retrain_best_genome",
                 "evaluate_on_test", "measure_search_fidelity", "export_best_model", "write_report"):
        assert node in default, node
    assert "load_pretrained_backbone" in {n.name for n in project["pretrained"].nodes}
    assert "export_best_model" in {n.name for n in project["pretrained"].nodes}
    assert "measure_search_fidelity" in {n.name for n in project["pretrained"].nodes}
    assert "pretrain_source_model" not in {n.name for n in project["pretrained"].nodes}
    assert "predict_images" not in default
    assert [n.name for n in project["predict"].nodes] == ["predict_images"]


@pytest.mark.parametrize("name", ["pretrained", "search_worker", "predict", "export"])
def test_every_pipeline_loads_when_it_is_the_one_requested(project, name):
    """`kedro run --pipeline <name>` asks the registry for that name only (Kedro 1.x)."""
    project.set_requested([name])
    try:
        assert len(project[name].nodes) >= 1
    finally:
        project.set_requested(None)


def test_every_node_function_has_type_hints_kedro_can_resolve(project):
    """Kedro's parameter validation reads each node's hints with ``typing.get_type_hints``; a name imported only
    under TYPE_CHECKING made it log "Could not extract type hints" once per node on every run."""
    unresolved = {}
    for name in list(project):
        for node in project[name].nodes:
            try:
                typing.get_type_hints(node.func)
            except NameError as e:
                unresolved[node.func.__qualname__] = str(e)
    assert not unresolved, unresolved


def test_every_dataset_of_the_default_pipeline_is_in_the_catalog_and_versioned(project, project_copy):
    with KedroSession.create(project_path=project_copy) as session:
        context = session.load_context()
        catalog = context.catalog
        params = context.params
    pipe = project["__default__"]
    free = {d for d in pipe.datasets() if not d.startswith("params:") and d != "parameters"}
    for name in free:
        assert name in catalog, f"{name} is not in the catalog (it would be lost in memory)"
        ds = catalog.get(name) if hasattr(catalog, "get") else catalog._get_dataset(name)
        # read-only inputs: the study store, and the links to the newest versions other pipelines saved
        readers = (StudyStoreDataset, NewestVersionLinksDataset)
        if "latest" not in str(getattr(ds, "_filepath", "")) and not isinstance(ds, readers):
            assert getattr(ds, "_version", None) is not None, f"{name} is not versioned"
    for key in ("data", "search", "training", "backbone", "retrain", "fidelity", "source_pretraining"):
        assert key in params


def test_kedro_viz_builds_the_pipeline_headlessly(project, project_copy, tmp_path):
    import fsspec
    from kedro_viz.api.rest.responses.save_responses import save_api_responses_to_fs
    from kedro_viz.server import load_and_populate_data

    load_and_populate_data(project_copy, None, False, "evotune", None, None, False)
    save_api_responses_to_fs(str(tmp_path), fsspec.filesystem("file"), True)
    main = json.loads((tmp_path / "api" / "main").read_text())
    names = {n["name"] for n in main["nodes"]}
    for node in project["__default__"].nodes:
        assert any(node.name in n for n in names), f"node {node.name} missing from kedro viz"
    layers = set(main.get("layers", []))
    assert {"model_input", "models", "model_output", "reporting"} <= layers
    assert any(n["type"] == "parameters" for n in main["nodes"])
    # the study store decides whether a rerun trains at all: kedro viz shows it as an input of the search
    assert "search_study_store" in names
