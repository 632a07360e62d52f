"""How the project's parameters are merged: base, then the run environment, then ``--params``.

Kedro's default for parameters merges ``conf/base`` and the run environment
(``conf/local``, ``--env paper``) *destructively* per top-level key, and merges the
runtime ``--params`` into each environment *before* that. So as soon as
``conf/local`` holds any parameters file, ``--params search.generations=1`` became
``search = {generations: 1}`` and every other search parameter was lost.

:class:`ProjectConfigLoader` merges parameters key by key instead
(:func:`merge_parameters`), and applies the runtime values last, so that:

* a key set in an environment or with ``--params`` replaces that key only;
* a mapping with a ``kind`` (``data.source``) whose ``kind`` changes is replaced
  whole: the options of the old kind (``polarity`` of ``embedded_digits``) do not
  leak into the new one (``image_folder``);
* interpolations (``compare.seeds: ${retrain.seeds}``) are resolved after the
  merge, so that they follow ``--params retrain.seeds=[1]``.

Everything else (catalog, credentials, globals) is loaded as Kedro does.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kedro.config import MissingConfigException, OmegaConfigLoader
from omegaconf import OmegaConf

from .errors import ParameterError


def merge_parameters(base: Any, override: Any) -> Any:
    """``override`` deep-merged into ``base`` (neither is modified).

    Mappings merge key by key, except a mapping whose ``kind`` differs from the base's,
    which replaces it whole; any other value (lists included) replaces the base value.
    """
    if not (isinstance(base, Mapping) and isinstance(override, Mapping)):
        return copy.deepcopy(override)
    if "kind" in override and "kind" in base and override["kind"] != base["kind"]:
        return copy.deepcopy(dict(override))
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        out[key] = merge_parameters(out[key], value) if key in out else copy.deepcopy(value)
    return out


def load_parameters(conf_source: str = "conf", env: str = "base", runtime_params: dict | None = None) -> dict[str, Any]:
    """The project's parameters as a run sees them (``env`` ``base``: conf/base alone), for
    scripts and notebooks that use the project's code outside ``kedro run``."""
    loader = ProjectConfigLoader(str(conf_source), base_env="base", default_run_env=env,
                                 runtime_params=runtime_params or {})
    return loader["parameters"]


class ProjectConfigLoader(OmegaConfigLoader):
    """Kedro's ``OmegaConfigLoader`` with the parameter merge of :func:`merge_parameters`."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key != "parameters" or key in self:
            return super().__getitem__(key)
        self._register_runtime_params_resolver()
        try:
            base_configs, env_configs, base_path, env_path, processed = self._read_raw_config(key)
        except ValueError as exc:
            if "Duplicate keys" not in str(exc):
                raise
            raise ParameterError(f"{exc.args[0].strip()}\nSet each parameter in one file of an environment "
                                 "(conf/local may override conf/base, but not itself).") from None
        if not processed:
            raise MissingConfigException(
                f"No files of YAML or JSON format found in {base_path} or {env_path} matching"
                f" the glob pattern(s): {[*self.config_patterns[key]]}"
            )
        merged: dict[str, Any] = {}
        layers = [base_configs]
        if (self.env or self.default_run_env) != self.base_env:
            layers.append(env_configs)
        for configs in layers:
            for cfg in configs.values():  # files of one environment never share a top-level key (Kedro checks)
                merged = merge_parameters(merged, OmegaConf.to_container(cfg, resolve=False))
        merged = merge_parameters(merged, self.runtime_params or {})
        return OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
