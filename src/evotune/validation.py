"""Check parameters before any training starts.

Called by :class:`evotune.hooks.ValidationHooks` at the start of every
``kedro run``, for the stages the run contains, so that a typo, a value of the wrong
type or a missing file fails in seconds with one message that lists every problem,
not an hour into a search.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .errors import ParameterError
from .params import check_type, from_params, require

__all__ = ["ParameterError", "validate_run"]


def validate_run(params: dict[str, Any], node_names) -> None:
    """Raise :class:`ParameterError` listing every problem found in what this run will use."""
    from .backbones import get_arch
    from .pipelines.backbone.nodes import BackboneParams
    from .retraining import retrain_config, retrain_seeds
    from .search.config import SearchConfig
    from .training import TrainConfig, resolve_device

    nodes = set(node_names)
    problems: list[str] = []

    def check(fn, *args):
        try:
            return fn(*args)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(str(exc).strip('"'))
            return None

    if params.get("default_pipeline") is not None:
        from .pipeline_registry import DEFAULT_PIPELINE_CHOICES

        if params["default_pipeline"] not in DEFAULT_PIPELINE_CHOICES:
            problems.append(f"default_pipeline is {params['default_pipeline']!r}; it may name "
                            f"{', '.join(DEFAULT_PIPELINE_CHOICES)} (or be removed: the embedded run).")
    if "paper" in params:  # each problem on its own line, so that one the checks below find too is said once
        from .paper_setting import paper_setting_problems

        paper_problems = paper_setting_problems(params, check_files=bool(nodes & {"ingest_index",
                                                                                  "load_pretrained_backbone"}))
        problems += paper_problems
        paper_data_missing = any(p.startswith("data of ") for p in paper_problems)
    else:
        paper_data_missing = False
    if any(n.startswith("compare.") for n in nodes):
        from .methods import check_compare_params

        search = check(SearchConfig.from_params, params.get("search"))
        check(check_compare_params, params.get("compare"), search.population if search else None)

    backbone = None
    if nodes & {"backbone_from_source", "load_pretrained_backbone"}:
        backbone = check(BackboneParams.from_params, params.get("backbone"))
        if backbone is not None:
            spec = check(get_arch, backbone.arch)
            crop = ((params.get("data") or {}).get("image") or {}).get("crop_size")
            if crop is None and spec is not None:  # null: the weights' own (evotune.backbones.weights_recipe)
                from .backbones import weights_recipe

                if backbone.weights == "source":  # the source model's rendered images
                    crop = ((params.get("source_pretraining") or {}).get("data") or {}).get("image_size")
                else:
                    recipe = check(weights_recipe, backbone.arch, backbone.weights)
                    crop = recipe.crop_size if recipe is not None else spec.input_size
            if spec is not None and spec.fixed_input and crop != spec.input_size:
                problems.append(
                    f"backbone.arch {spec.name} takes {spec.input_size}x{spec.input_size} inputs only but "
                    f"data.image.crop_size is {crop}: set data.image.crop_size to {spec.input_size} "
                    "(and data.image.resize_size to at least that)."
                )
    if "backbone_from_source" in nodes and backbone is not None:
        src_arch = check(lambda: check_type(require(params.get("source_pretraining"), "arch", "source_pretraining"),
                                            str, "source_pretraining.arch"))
        if backbone.weights != "source":
            problems.append(
                f"backbone.weights is '{backbone.weights}', but this pipeline fine-tunes the model of the "
                "source_pretraining pipeline. For ImageNet weights or a checkpoint file run "
                "`kedro run --pipelines pretrained`; otherwise set backbone.weights: source."
            )
        if src_arch and src_arch != backbone.arch:
            problems.append(
                f"source_pretraining.arch ('{src_arch}') and backbone.arch ('{backbone.arch}') differ: "
                "set them to the same architecture."
            )
    if "load_pretrained_backbone" in nodes and backbone is not None:
        from .paper_setting import weights_problems

        if backbone.weights == "source":
            problems.append("backbone.weights: source needs the default pipeline (`kedro run`), "
                            "which pretrains the source model first.")
        elif check(get_arch, backbone.arch) is not None:
            problems += weights_problems(backbone.arch, dataclasses.asdict(backbone))

    training_nodes = {"evolutionary_search", "search_worker", "retrain_best_genome", "evaluate_on_test",
                      "measure_search_fidelity", "confirm_pick"}
    if nodes & training_nodes or any(n.startswith("compare.") for n in nodes):
        cfg = check(TrainConfig.from_params, params.get("training"))
        if cfg is not None:
            check(resolve_device, cfg.device)
    if "pretrain_source_model" in nodes:
        src = params.get("source_pretraining")
        cfg = check(lambda: TrainConfig.with_overrides(params.get("training"), require(src, "training", "source_pretraining"),
                                                       "source_pretraining.training"))
        if cfg is not None:
            check(resolve_device, cfg.device)
        check(lambda: check_type(require(src, "arch", "source_pretraining"), str, "source_pretraining.arch"))
        check(lambda: check_type(require(src, "seed", "source_pretraining"), int, "source_pretraining.seed"))
    if "make_source_dataset" in nodes:
        from .pipelines.source_pretraining.nodes import SourceDataParams

        check(lambda: from_params(SourceDataParams, require(params.get("source_pretraining"), "data",
                                                            "source_pretraining"), "source_pretraining.data"))
    if nodes & {"evolutionary_search", "search_worker", "ingest_index"} or any(n.startswith("compare.") for n in nodes):
        check(SearchConfig.from_params, params.get("search"))  # ingest_index: the pre-run data check's chunk count
    picks = [n.split(".")[1] for n in nodes if n.startswith("compare.") and n.endswith(".pick")]
    if "confirm_pick" in nodes or picks or any(n.startswith("compare.") and n.endswith(".confirm") for n in nodes):
        from .search.confirm import ConfirmConfig

        base = check(ConfirmConfig.from_params, params.get("confirm"))
        check(SearchConfig.from_params, params.get("search"))
        if base is not None:  # each compared rule with the confirm section (parsimonious: top_k >= 2)
            from .methods import get_method

            for rule in dict.fromkeys(get_method(m).rule for m in picks):
                check(ConfirmConfig.from_params, {**params["confirm"], "rule": rule})
    if "retrain_best_genome" in nodes:
        check(retrain_seeds, params.get("retrain"))
        check(retrain_config, params.get("training"), params.get("retrain"))
    if "measure_search_fidelity" in nodes:
        from .fidelity import FidelityConfig

        fidelity = check(FidelityConfig.from_params, params.get("fidelity"))
        check(SearchConfig.from_params, params.get("search"))
        if fidelity is not None and fidelity.enabled:
            check(retrain_config, params.get("training"), params.get("retrain"))
    if "export_best_model" in nodes:
        from .pipelines.export.nodes import ExportParams

        exp = check(ExportParams.from_params, params.get("export"))
        seeds = (params.get("retrain") or {}).get("seeds") or []
        if exp is not None and exp.selection == "seed" and "retrain_best_genome" in nodes and exp.seed not in seeds:
            problems.append(f"export.seed is {exp.seed}, which is not one of retrain.seeds {list(seeds)}.")
    if "predict_images" in nodes:
        from .pipelines.predict.nodes import PredictParams

        check(PredictParams.from_params, params.get("predict"))
    if "ingest_index" in nodes and not paper_data_missing:  # the paper check named the missing data (once)
        from .pipelines.data_processing.nodes import check_data_params

        check(check_data_params, params.get("data"), params.get("backbone"), params.get("source_pretraining"))
    from .progress import ProgressConfig

    check(ProgressConfig.from_params, params.get("progress"))  # every run shows progress
    if problems:
        problems = list(dict.fromkeys(problems))  # a group read by two stages is reported once
        raise ParameterError("Invalid parameters, nothing was run:\n  - " + "\n  - ".join(problems))


def check_export_available(catalog, params: dict[str, Any], names) -> None:
    """Before ``predict``: the export it reads exists (the newest, or ``predict.model_version``)."""
    version = (params.get("predict") or {}).get("model_version")
    missing = [name for name in names if not catalog.exists(name)]
    if not missing:
        return
    ds = catalog.get(missing[0])
    folder = Path(str(getattr(ds, "_filepath", missing[0])))
    found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if version:
        raise ParameterError(
            f"predict.model_version: there is no export {version} of {missing[0]} (looked in {folder}). "
            f"Versions there: {', '.join(found[-10:]) or 'none'}."
        )
    raise ParameterError(
        f"No exported model to predict with: {missing[0]} has no version in {folder}. "
        "Run `kedro run` (or `kedro run --pipelines pretrained`) first; its export node writes it."
    )
