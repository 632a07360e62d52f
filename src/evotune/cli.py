"""The project's ``kedro run``: Kedro's own command with two changes.

* ``--params`` splits on the commas *between* parameters only, so a list can be
  given as a list: ``--params "compare.methods=[linear_probe,lora,deft],search.seeds=[1]"``
  (Kedro's own option splits on every comma and rejects that).
* A problem the user can fix (:class:`~evotune.errors.EvotuneError`: a parameter, a
  data file, missing weights, stale inputs) ends the run with its one clear message
  and exit code 1, not with a traceback of a few hundred lines. Any other error is a
  bug and keeps its traceback.

Kedro loads this module as the project's ``cli.py``: its ``run`` replaces the built-in
one for ``kedro run`` and ``python -m evotune``.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import CONTEXT_SETTINGS
from omegaconf import OmegaConf

from .errors import find_project_error


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split on ``sep`` outside brackets and quotes: ``a=[1,2],b=x`` -> ``['a=[1,2]', 'b=x']``."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        elif ch == sep and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def parse_params(ctx: click.Context | None, param: Any, value: Any) -> dict[str, Any]:
    """``--params`` as a nested dict: ``key.sub=value`` items, values parsed as YAML by OmegaConf."""
    if isinstance(value, dict):
        return value
    dotlist = []
    for item in split_top_level(value or ""):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(
                f"'{item}' must be key=value (lists in brackets: compare.methods=[linear_probe,lora]).",
                ctx=ctx, param=param,
            )
        dotlist.append(f"{key.strip()}={val.strip()}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(dotlist))


def _run_with_clear_errors(callback):
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only the project's own errors are turned into a message
            error = find_project_error(exc)
            if error is None:
                raise
            raise click.ClickException(str(error)) from None

    return wrapper


def _project_run() -> click.Command:
    command = copy.copy(kedro_run)
    command.params = [copy.copy(p) for p in kedro_run.params]
    for option in command.params:
        if option.name == "params":
            option.callback = parse_params
    command.callback = _run_with_clear_errors(kedro_run.callback)
    return command


@click.group(context_settings=CONTEXT_SETTINGS, name=__file__)
def cli() -> None:
    """Command line tools for the evotune project."""


run = _project_run()
cli.add_command(run, "run")


@click.command(name="sweep")
@click.option("--settings", default="all", show_default=True,
              help="dataset:arch items of the paper's tables, comma-separated (all: every dataset x every arch).")
@click.option("--env", default="paper", show_default=True, help="The Kedro environment of every run.")
@click.option("--params", "extra", default="", help="Parameters for every run, as for kedro run --params.")
@click.option("--out", default="data/sweep", show_default=True,
              help="Each setting's outputs go to <out>/<dataset>-<arch>/; the table to <out>/sweep_table.md.")
def sweep(settings: str, env: str, extra: str, out: str) -> None:
    """Run the paper's settings one after another (one kedro run each, skipping finished ones), then one
    table beside the paper's numbers (evotune.sweep)."""
    from pathlib import Path

    from kedro.utils import find_kedro_project

    from .config import load_parameters
    from .sweep import parse_settings, run_sweep

    try:
        project = find_kedro_project(Path.cwd()) or Path.cwd()
        paper = load_parameters(str(project / "conf"), env=env, runtime_params=parse_params(None, None, extra)).get("paper")
        if not isinstance(paper, dict):
            raise click.ClickException(f"--env {env}: its parameters have no `paper` tables (use --env paper).")
        chosen = parse_settings(settings, list(paper.get("datasets") or {}), list(paper.get("archs") or {}))
        run_sweep(chosen, project=project, env=env, out=Path(out), extra=extra, echo=click.echo)
    except Exception as exc:  # noqa: BLE001 - only the project's own errors are turned into a message
        error = find_project_error(exc)
        if error is None:
            raise
        raise click.ClickException(str(error)) from None


cli.add_command(sweep, "sweep")
