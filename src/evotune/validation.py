"""Check parameters before any training starts.

Called by :class:`evotune.hooks.ValidationHooks` at the start of every
``kedro run``, for the stages the run contains, so that a typo or a missing
file fails in seconds with one clear message, not an hour into a search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class ParameterError(ValueError):
    """A parameter (named in the message) is wrong; the message says what to do."""


def require_keys(section: Any, name: str, keys: Sequence[str], file: str) -> dict[str, Any]:
    """``section`` (the parameters under ``name``) as a dict holding exactly ``keys``.

    conf/base is the only source of defaults: a missing key is an error naming it and the
    file that defines it, an unknown key (a typo) is an error listing the valid ones.
    """
    if not isinstance(section, Mapping):
        raise ParameterError(f"`{name}` is missing or not a mapping (got {section!r}); it is defined in {file}.")
    missing = [k for k in keys if k not in section]
    if missing:
        raise ParameterError(
            f"{', '.join(f'{name}.{k}' for k in missing)} not set: every key of `{name}` must be given "
            f"(conf/base/{file} has them all, with comments)."
        )
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise ParameterError(
            f"Unknown parameter(s) {', '.join(f'{name}.{k}' for k in unknown)}; valid keys of `{name}`: "
            f"{', '.join(keys)} (conf/base/{file})."
        )
    return dict(section)


def validate_run(params: dict[str, Any], node_names) -> None:
    """Raise :class:`ParameterError` for the first problem found in what this run will use."""
    from .backbones import get_arch, imagenet_weights_path
    from .pipelines.search.nodes import SearchParams
    from .training import TrainConfig, resolve_device

    nodes = set(node_names)
    problems: list[str] = []

    def check(fn, *args):
        try:
            return fn(*args)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(str(exc).strip('"'))
            return None

    if "paper" in params:
        from .methods.paper_config import check_paper_setting

        check(check_paper_setting, params, bool(nodes & {"ingest_index", "load_pretrained_backbone"}))
    if any(n.startswith("compare.") for n in nodes):
        from .methods import check_compare_params

        check(check_compare_params, params.get("compare", {}))

    backbone = params.get("backbone", {})
    if nodes & {"backbone_from_source", "load_pretrained_backbone"}:
        check(get_arch, backbone.get("arch"))
    if "backbone_from_source" in nodes:
        src = params.get("source_pretraining", {})
        if backbone.get("weights", "source") != "source":
            problems.append(
                f"backbone.weights is '{backbone.get('weights')}', but this pipeline fine-tunes the model "
                "of the source_pretraining pipeline. For ImageNet weights or a checkpoint file run "
                "`kedro run --pipeline pretrained`; otherwise set backbone.weights: source."
            )
        if src.get("arch") and backbone.get("arch") and src["arch"] != backbone["arch"]:
            problems.append(
                f"source_pretraining.arch ('{src['arch']}') and backbone.arch ('{backbone['arch']}') differ: "
                "set them to the same architecture."
            )
    if "load_pretrained_backbone" in nodes:
        weights = str(backbone.get("weights", "imagenet"))
        if weights == "imagenet":
            spec = check(get_arch, backbone.get("arch"))
            if spec is not None:
                if spec.imagenet_weights is None:
                    problems.append(f"backbone.arch '{spec.name}' has no ImageNet weights in torchvision; "
                                    "use backbone.weights: none or a checkpoint path.")
                else:
                    path = imagenet_weights_path(spec.name, backbone.get("torch_home"))
                    if not Path(path).is_file():
                        problems.append(
                            f"The ImageNet weights of {spec.name} are not in the torch cache: expected "
                            f"{path}. This machine cannot download them: copy the file there from a machine "
                            "with internet (or set TORCH_HOME / backbone.torch_home), or set "
                            "backbone.weights to a checkpoint file."
                        )
        elif weights not in ("none", "source") and not Path(weights).is_file():
            problems.append(f"backbone.weights: the checkpoint file '{weights}' does not exist.")
        elif weights == "source":
            problems.append("backbone.weights: source needs the default pipeline (`kedro run`), "
                            "which pretrains the source model first.")

    for key in ("training",):
        if key in params:
            cfg = check(TrainConfig.from_params, params[key])
            if cfg is not None:
                check(resolve_device, cfg.device)
    if "source_pretraining" in params and "pretrain_source_model" in nodes:
        cfg = check(TrainConfig.from_params, params["source_pretraining"].get("training", {}))
        if cfg is not None:
            check(resolve_device, cfg.device)
    if "evolutionary_search" in nodes or "split_dataset" in nodes:
        check(SearchParams.from_params, params.get("search", {}))
    if "retrain_best_genome" in nodes:
        seeds = params.get("retrain", {}).get("seeds")
        if not seeds:
            problems.append("retrain.seeds must list at least one seed (conf/base/parameters_retrain.yml).")
    if "export_best_model" in nodes:
        from .pipelines.export.nodes import ExportParams

        exp = check(ExportParams.from_params, params.get("export"))
        seeds = params.get("retrain", {}).get("seeds") or []
        if exp is not None and exp.selection == "seed" and "retrain_best_genome" in nodes and exp.seed not in seeds:
            problems.append(f"export.seed is {exp.seed}, which is not one of retrain.seeds {list(seeds)}.")
    if "predict_images" in nodes:
        from .pipelines.predict.nodes import PredictParams

        check(PredictParams.from_params, params.get("predict"))
    if "ingest_index" in nodes:
        from .pipelines.data_processing.nodes import check_data_params

        check(check_data_params, params.get("data", {}))
    if problems:
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
        "Run `kedro run` (or `kedro run --pipeline pretrained`) first; its export node writes it."
    )
