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
from functools import partial
from pathlib import Path
from typing import Any, cast

import yaml
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
    """Kedro's ``OmegaConfigLoader`` with the parameter merge of :func:`merge_parameters`.

    Only its public interface is used: ``config_patterns``, ``conf_source``, ``base_env``,
    ``env`` / ``default_run_env``, ``runtime_params`` and ``__getitem__`` for everything but
    the parameters. Kedro's own ``merge_strategy: {parameters: soft}`` is not enough: it resolves
    each environment's interpolations before merging them (``compare.seeds: ${retrain.seeds}``
    would not follow a ``retrain.seeds`` of conf/local) and deep-merges a ``data.source`` whose
    ``kind`` changed.
    """

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key != "parameters" or key in self:
            return super().__getitem__(key)
        run_env = self.env or self.default_run_env
        envs = [self.base_env] + ([run_env] if run_env and run_env != self.base_env else [])
        merged: dict[str, Any] = {}
        found: list[Path] = []
        for env in envs:
            files = self._parameter_files(Path(self.conf_source) / env)
            found += files
            for cfg in _env_configs(files).values():  # files of one environment never share a top-level key
                merged = merge_parameters(merged, cfg)
        if not found:
            raise MissingConfigException(
                f"No files of YAML or JSON format found in {[str(Path(self.conf_source) / e) for e in envs]}"
                f" matching the glob pattern(s): {[*self.config_patterns[key]]}"
            )
        runtime = self.runtime_params or {}
        merged = merge_parameters(merged, runtime)
        # `${runtime_params:a.b, default}` as Kedro resolves it (the resolver is process-global: this loader's values)
        OmegaConf.register_new_resolver("runtime_params", partial(_select, OmegaConf.create(runtime)), replace=True)
        return cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.create(merged), resolve=True))

    def _parameter_files(self, folder: Path) -> list[Path]:
        """The parameter files of one environment folder, as Kedro finds them (hidden ones left out)."""
        if not folder.is_dir():
            return []
        matches = {p for pattern in self.config_patterns["parameters"] for p in folder.glob(pattern)}
        files = {f for p in matches for f in (p.rglob("*") if p.is_dir() else [p])}
        return sorted(f for f in files if f.is_file() and f.suffix in (".yml", ".yaml", ".json")
                      and not any(part.startswith(".") for part in f.relative_to(folder).parts))


_MISSING = object()


def _select(runtime: Any, variable: str, default: Any = _MISSING) -> Any:
    value = OmegaConf.select(runtime, variable, default=default)
    if value is _MISSING:
        raise ParameterError(f"--params gives no {variable} and the parameters give no default: "
                             f"${{runtime_params:{variable}, <default>}}")
    return value


def _env_configs(files: list[Path]) -> dict[Path, dict[str, Any]]:
    """The raw (unresolved) parameters of each file of one environment; a top-level key set in two
    of its files is an error (as Kedro's)."""
    out: dict[Path, dict[str, Any]] = {}
    seen: dict[str, Path] = {}
    for path in files:
        try:
            cfg = cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {})
        except yaml.YAMLError as exc:
            raise ParameterError(f"Invalid YAML or JSON file {path}: {str(exc).splitlines()[0]}. Fix it.") from None
        for k in cfg:
            if k in seen:
                raise ParameterError(
                    f"Duplicate keys found in {seen[k]} and {path}: {k}\nSet each parameter in one file of an "
                    "environment (conf/local may override conf/base, but not itself).")
            seen[k] = path
        out[path] = cfg
    return out
