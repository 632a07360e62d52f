"""The comparison pipeline: the resamplings, then one modular pipeline per method, namespaced
``compare.<method>``, BioTune (``compare.biotune``) first.

* ``compare.resample`` -> ``compare_resamplings``: the ``compare.resamplings`` resamplings of the
  run's split (resampling 0: the split itself), read by every method node, so a single method can
  be rerun on the same resamplings.

Templates (datasets below are named inside the namespace, e.g. ``compare.lora.metrics``); every
node loops over the resamplings:

* plan methods:   ``train`` -> ``trained`` ; ``test`` -> ``metrics``, ``metrics_per_seed``
* BioTune's pick rules (``biotune_confirmed``, ``biotune_parsimonious``): ``pick`` (reads
  ``compare.biotune.search_trials``, ``compare.biotune.best_genomes`` and ``compare.biotune.confirmation``;
  trains nothing) -> ``best_genomes``, ``confirmation`` ; ``retrain`` -> ``trained`` ; ``test`` -> ``metrics``,
  ``metrics_per_seed``
* search methods and BioTune: ``search`` -> ``search_trials``, ``best_genomes`` ; ``retrain`` -> ``trained`` ;
  ``test`` -> ``metrics``, ``metrics_per_seed`` ; ``budget`` -> ``budget_metrics`` (the best-so-far genome at
  each of ``compare.budgets``, retrained and tested). BioTune, when a pick rule is compared, also
  ``confirm`` -> ``confirmation``: the confirmation's trainings (``params:confirm``'s ``top_k`` and ``seeds``),
  made once for both rules, which then pick from the same trainings.

Each namespace reads its own parameters ``params:compare.<method>`` (mapped to the template's
``params:method``; BioTune has none: its search is ``search``) and the shared ``params:compare``
(``methods``, ``seeds``, ``resamplings``), ``params:search``, ``params:training``, ``params:retrain``.
The free inputs ``backbone``, ``target_train``, ``target_val``, ``target_test``, ``target_index``,
``search_study_store`` are shared. Then the nodes ``compare.table`` -> ``compare_table`` (every
method's ``metrics``), ``compare.table_markdown`` -> ``compare_table_markdown`` and
``compare.figure`` -> ``compare_figure``; ``compare.budget_table`` -> ``compare_budget_table`` (every search's
``budget_metrics``, full fine-tuning's ``metrics`` as the budget-1 reference when compared),
``compare.budget_table_markdown`` and ``compare.budget_figure``.

The pipeline holds only the methods it is built for (and BioTune): the registry builds it from
the run's ``compare.methods`` (see :mod:`evotune.pipeline_registry`), so a run trains and writes
exactly the chosen methods, and the table reads exactly their metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from ...methods import BIOTUNE, METHODS, PICK_METHODS, PLAN_METHODS, SEARCH_METHODS
from .nodes import (
    budget_figure,
    budget_markdown,
    budget_table,
    comparison_figure,
    comparison_markdown,
    comparison_table,
    confirm_biotune_genomes,
    evaluate_budgets,
    evaluate_method,
    pick_confirmed_genomes,
    resample_splits,
    retrain_searched_genome,
    search_baseline,
    search_biotune,
    train_plan_method,
)

SPLITS = ["target_train", "target_val", "target_test", "compare_resamplings"]
SHARED_INPUTS = {"backbone", "target_train", "target_val", "target_test", "search_study_store",
                 "compare_resamplings"}


def _bind(func, method: str):
    return update_wrapper(partial(func, method=method), func)


def _test_node() -> Node:
    return Node(evaluate_method, inputs=["backbone", "trained", *SPLITS, "params:training"],
                outputs=["metrics", "metrics_per_seed"], name="test")


def _retrain_node(method: str) -> Node:
    return Node(_bind(retrain_searched_genome, method),
                inputs=["backbone", *SPLITS, "best_genomes", "params:compare", "params:training", "params:retrain"],
                outputs="trained", name="retrain")


def _budget_node(method: str) -> Node:
    return Node(_bind(evaluate_budgets, method),
                inputs=["backbone", *SPLITS, "search_trials", "best_genomes", "metrics", "params:compare",
                        "params:search", "params:training", "params:retrain"],
                outputs="budget_metrics", name="budget")


def plan_template(method: str) -> Pipeline:
    return Pipeline([
        Node(_bind(train_plan_method, method),
             inputs=["backbone", *SPLITS, "params:compare", "params:method", "params:training", "params:retrain"],
             outputs="trained", name="train"),
        _test_node(),
    ])


def search_template(method: str) -> Pipeline:
    return Pipeline([
        Node(_bind(search_baseline, method),
             inputs=["backbone", *SPLITS, "search_study_store", "params:compare", "params:method",
                     "params:search", "params:training"],
             outputs=["search_trials", "best_genomes"], name="search"),
        _retrain_node(method),
        _test_node(),
        _budget_node(method),
    ])


#: what a pick method reads of BioTune's own modular pipeline (template input -> BioTune's dataset)
BIOTUNE_OUTPUTS = {"biotune_search_trials": f"compare.{BIOTUNE}.search_trials",
                   "biotune_best_genomes": f"compare.{BIOTUNE}.best_genomes",
                   "biotune_confirmation": f"compare.{BIOTUNE}.confirmation"}


def pick_template(method: str) -> Pipeline:
    return Pipeline([
        Node(_bind(pick_confirmed_genomes, method),
             inputs=["backbone", *SPLITS, "biotune_search_trials", "biotune_best_genomes", "biotune_confirmation",
                     "params:compare", "params:method", "params:confirm", "params:search", "params:training"],
             outputs=["best_genomes", "confirmation"], name="pick"),
        _retrain_node(method),
        _test_node(),
    ])


def biotune_template(confirm: bool = False) -> Pipeline:
    confirmation = [Node(confirm_biotune_genomes,
                         inputs=["backbone", *SPLITS, "search_trials", "best_genomes", "params:compare",
                                 "params:confirm", "params:search", "params:training"],
                         outputs="confirmation", name="confirm")] if confirm else []
    return Pipeline([
        Node(search_biotune,
             inputs=["backbone", *SPLITS, "search_study_store", "params:compare", "params:search", "params:training"],
             outputs=["search_trials", "best_genomes"], name="search"),
        _retrain_node(BIOTUNE),
        _test_node(),
        _budget_node(BIOTUNE),
        *confirmation,
    ])


def biotune_pipeline(confirm: bool = False) -> Pipeline:
    """BioTune's modular pipeline (``compare.biotune``): its own search on each resampling; with ``confirm`` (a
    pick rule is compared) also the confirmation of its search, which every pick rule reads."""
    template = biotune_template(confirm)
    shared = ("compare", "training", "retrain", "search") + (("confirm",) if confirm else ())
    return Pipeline(
        template,
        namespace=f"compare.{BIOTUNE}",
        inputs=SHARED_INPUTS & set(template.inputs()),
        parameters={f"params:{p}": f"params:{p}" for p in shared},
        tags=["compare"],
    )


def method_pipeline(method: str) -> Pipeline:
    """The namespaced modular pipeline of one method."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid methods are {', '.join(METHODS)}")
    template = (plan_template(method) if method in PLAN_METHODS else pick_template(method) if method in PICK_METHODS
                else search_template(method))
    shared = ("compare", "training", "retrain") + (("search",) if method in SEARCH_METHODS else ()) + (
        ("search", "confirm") if method in PICK_METHODS else ())
    return Pipeline(
        template,
        namespace=f"compare.{method}",
        inputs={**{i: i for i in SHARED_INPUTS & set(template.inputs())},
                **{i: o for i, o in BIOTUNE_OUTPUTS.items() if i in template.inputs()}},
        parameters={"params:method": f"params:compare.{method}", **{f"params:{p}": f"params:{p}" for p in shared}},
        tags=["compare"],
    )


def create_pipeline(methods: Iterable[str] | None = None, **kwargs) -> Pipeline:
    """The resampling node, BioTune's and ``methods``' modular pipelines (default: every method) and the
    table nodes; the methods in the order of :data:`evotune.methods.METHODS` after BioTune, which is the table's."""
    chosen = list(METHODS) if methods is None else list(dict.fromkeys(methods))
    per_method = {m: method_pipeline(m) for m in chosen}  # an unknown method: ValueError naming it
    methods = [m for m in METHODS if m in per_method]
    # the resampling and report nodes sit in the `compare` namespace too (kedro-viz groups them with the methods)
    resample = Pipeline(
        [Node(resample_splits, inputs=["target_train", "target_val", "target_test", "target_index", "params:data",
                                       "params:compare"],
              outputs="compare_resamplings", name="resample", namespace="compare")],
        tags=["compare"],
    )
    report = Pipeline(
        [
            Node(comparison_table,
                 inputs=["params:compare", *[f"compare.{m}.metrics" for m in (BIOTUNE, *methods)]],
                 outputs="compare_table", name="table", namespace="compare"),
            Node(comparison_markdown, inputs="compare_table", outputs="compare_table_markdown",
                 name="table_markdown", namespace="compare"),
            Node(comparison_figure, inputs="compare_table", outputs="compare_figure", name="figure",
                 namespace="compare"),
            Node(budget_table,
                 inputs=["params:compare", *[f"compare.{m}.budget_metrics" for m in (BIOTUNE, *methods)
                                             if m == BIOTUNE or m in SEARCH_METHODS],
                         *(["compare.full_finetune.metrics"] if "full_finetune" in methods else [])],
                 outputs="compare_budget_table", name="budget_table", namespace="compare"),
            Node(budget_markdown, inputs="compare_budget_table", outputs="compare_budget_table_markdown",
                 name="budget_table_markdown", namespace="compare"),
            Node(budget_figure, inputs="compare_budget_table", outputs="compare_budget_figure",
                 name="budget_figure", namespace="compare"),
        ],
        tags=["compare"],
    )
    confirm = any(m in PICK_METHODS for m in methods)
    return Pipeline([resample, biotune_pipeline(confirm), *(per_method[m] for m in methods), report])
