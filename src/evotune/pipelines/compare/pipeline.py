"""The comparison pipeline: one modular pipeline per method, namespaced ``compare.<method>``.

Templates (datasets below are named inside the namespace, e.g. ``compare.lora.metrics``):

* plan methods:   ``train`` -> ``trained`` ; ``test`` -> ``metrics``, ``metrics_per_seed``
* search methods: ``search`` -> ``search_trials``, ``best_genome`` ; ``retrain`` -> ``trained`` ;
  ``test`` -> ``metrics``, ``metrics_per_seed``

Each namespace reads its own parameters ``params:compare.<method>`` (mapped to the
template's ``params:method``) and the shared ``params:compare`` (``methods``,
``seeds``), ``params:search``, ``params:training``, ``params:retrain``. The free
inputs ``backbone``, ``target_train``, ``target_val``, ``target_test``, ``search_study_store`` are shared.
Then the nodes ``compare.table`` -> ``compare_table`` (with BioTune's ``test_metrics``, ``test_metrics_per_seed``
and ``best_genome``), ``compare.table_markdown`` -> ``compare_table_markdown`` and
``compare.figure`` -> ``compare_figure``.

The pipeline holds only the methods it is built for: the registry builds it from the
run's ``compare.methods`` (see :mod:`evotune.pipeline_registry`), so a run trains and
writes exactly the chosen methods, and the table reads exactly their metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from ...methods import METHODS, PLAN_METHODS, SEARCH_METHODS
from .nodes import (
    comparison_figure,
    comparison_markdown,
    comparison_table,
    evaluate_method,
    retrain_searched_genome,
    search_baseline,
    train_plan_method,
)

SHARED_INPUTS = {"backbone", "target_train", "target_val", "target_test", "search_study_store"}


def _bind(func, method: str):
    return update_wrapper(partial(func, method=method), func)


def plan_template(method: str) -> Pipeline:
    return Pipeline([
        Node(_bind(train_plan_method, method),
             inputs=["backbone", "target_train", "target_val", "params:compare", "params:method", "params:training",
                     "params:retrain"],
             outputs="trained", name="train"),
        Node(evaluate_method, inputs=["backbone", "trained", "target_test", "params:training"],
             outputs=["metrics", "metrics_per_seed"], name="test"),
    ])


def search_template(method: str) -> Pipeline:
    return Pipeline([
        Node(_bind(search_baseline, method),
             inputs=["backbone", "target_train", "target_val", "search_study_store", "params:compare", "params:method",
                     "params:search", "params:training"],
             outputs=["search_trials", "best_genome"], name="search"),
        Node(_bind(retrain_searched_genome, method),
             inputs=["backbone", "target_train", "target_val", "best_genome", "params:compare", "params:training",
                     "params:retrain"],
             outputs="trained", name="retrain"),
        Node(evaluate_method, inputs=["backbone", "trained", "target_test", "params:training"],
             outputs=["metrics", "metrics_per_seed"], name="test"),
    ])


def method_pipeline(method: str) -> Pipeline:
    """The namespaced modular pipeline of one method."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods are {', '.join(METHODS)}")
    template = plan_template(method) if method in PLAN_METHODS else search_template(method)
    shared = ("compare", "training", "retrain") + (("search",) if method in SEARCH_METHODS else ())
    return Pipeline(
        template,
        namespace=f"compare.{method}",
        inputs=SHARED_INPUTS & set(template.inputs()),
        parameters={"params:method": f"params:compare.{method}", **{f"params:{p}": f"params:{p}" for p in shared}},
        tags=["compare"],
    )


def create_pipeline(methods: Iterable[str] | None = None, **kwargs) -> Pipeline:
    """The modular pipelines of ``methods`` (default: every method) and the table nodes; the methods
    in the order of :data:`evotune.methods.METHODS`, which is the table's."""
    chosen = list(METHODS) if methods is None else list(dict.fromkeys(methods))
    per_method = {m: method_pipeline(m) for m in chosen}  # an unknown method: ValueError naming it
    methods = [m for m in METHODS if m in per_method]
    # the report nodes sit in the `compare` namespace too (kedro-viz groups them with the methods)
    report = Pipeline(
        [
            Node(comparison_table,
                 inputs=["params:compare", "test_metrics", "test_metrics_per_seed", "best_genome",
                         *[f"compare.{m}.metrics" for m in methods]],
                 outputs="compare_table", name="table", namespace="compare"),
            Node(comparison_markdown, inputs="compare_table", outputs="compare_table_markdown",
                 name="table_markdown", namespace="compare"),
            Node(comparison_figure, inputs="compare_table", outputs="compare_figure", name="figure",
                 namespace="compare"),
        ],
        tags=["compare"],
    )
    return Pipeline([*(per_method[m] for m in methods), report])
