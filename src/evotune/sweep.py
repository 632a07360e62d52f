"""The paper's sweep: one ``kedro run`` per (dataset, architecture) setting, then one table beside the paper's.

``kedro sweep`` (see :func:`run_sweep`) takes a list of settings of the ``paper`` environment (by default
all of ``paper.datasets`` x ``paper.archs``: 9 x 4) and, for each, runs

1. ``kedro run --env paper --params paper.dataset=D,paper.arch=A,output_dir=<out>/D-A`` (the paper's
   pipeline: search, retrain, test, export, report), then
2. ``kedro run --env paper --pipelines compare --params ...`` (the methods of ``compare.methods``),

each in a folder of its own (``output_dir``: every catalog output lives under it), so settings never
overwrite or mix. A step whose last output (the report; the comparison table) has a version in the
setting's folder is done and not run again, whether the sweep or a job scheduler ran it: a stopped
sweep, run again with the same command, resumes where it stopped (inside a step, the search resumes
from its Optuna study, as every run does). The sweep records each step's time in
``<out>/D-A/sweep_<step>.json``. Before anything trains, every setting of the
list is checked (:func:`evotune.paper_setting.paper_setting_problems`: names, weights, data; offline,
the files to fetch by hand) and all problems of all settings are reported at once.

The settings are independent runs: to spread them over machines or GPUs, run the step commands above
(one ``kedro run`` per setting) under a job scheduler; the sweep only runs them one after another and
puts the table together (``<out>/sweep_table.md`` and ``.csv``) from each setting's newest comparison:
per method the test macro accuracy, test accuracy, trainable share, trainings and time, beside the
paper's test accuracy (SPEC section 7) and the difference.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import EvotuneError

__all__ = ["PAPER_ACCURACY", "Setting", "SweepError", "check_settings", "parse_settings", "run_sweep", "sweep_table"]

#: test accuracy (%) the BioTune paper reports with ResNet-50 and ImageNet weights (SPEC section 7)
PAPER_ACCURACY: dict[tuple[str, str], dict[str, float]] = {
    ("flowers102", "resnet50"): {"biotune": 91.68, "full_finetune": 85.33, "linear_probe": 82.72, "auto_rgn": 85.5,
                                 "lora": 86.01, "l1_sp": 87.82, "l2_sp": 85.29},
    **{(d, "resnet50"): {"biotune": b, "full_finetune": f} for d, b, f in (
        ("fgvc_aircraft", 64.40, 58.68), ("isic2020", 82.90, 78.91), ("dtd", 69.27, 68.03),
        ("cifar10", 96.09, 95.65), ("stl10", 97.50, 97.33), ("mnist", 99.13, 98.96), ("usps", 97.57, 97.05),
        ("svhn", 95.85, 96.08))},
}

#: the steps of one setting: (name, the --pipelines it runs (None: the environment's default), the last output
#: it writes, under the setting's folder: a step whose output has a version is done, whoever ran it)
STEPS: tuple[tuple[str, str | None, str], ...] = (
    ("run", None, "08_reporting/report.md"),
    ("compare", "compare", "08_reporting/compare/comparison.parquet"),
)


class SweepError(EvotuneError):
    """The sweep cannot start or a setting's run failed; the message says which and what to do."""


@dataclass(frozen=True)
class Setting:
    dataset: str
    arch: str

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.arch}"


def parse_settings(text: str | None, datasets: Sequence[str], archs: Sequence[str]) -> list[Setting]:
    """``dataset:arch`` items separated by commas (``all`` or empty: every dataset x every arch)."""
    if not text or text.strip() == "all":
        return [Setting(d, a) for d in datasets for a in archs]
    out, bad = [], []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        dataset, sep, arch = item.partition(":")
        if not sep or dataset not in datasets or arch not in archs:
            bad.append(item)
        elif Setting(dataset, arch) not in out:
            out.append(Setting(dataset, arch))
    if bad:
        raise SweepError(f"--settings: {', '.join(repr(b) for b in bad)} is not dataset:arch of the paper's tables; "
                         f"datasets: {', '.join(datasets)}; archs: {', '.join(archs)} (e.g. --settings "
                         "flowers102:resnet50,dtd:vgg19).")
    return out


def _runtime_params(setting: Setting, folder: Path, extra: dict[str, Any]) -> dict[str, Any]:
    from .config import merge_parameters

    return merge_parameters(extra, {"paper": {"dataset": setting.dataset, "arch": setting.arch},
                                    "output_dir": folder.as_posix()})


def _params_text(setting: Setting, folder: Path, extra: str) -> str:
    own = f"paper.dataset={setting.dataset},paper.arch={setting.arch},output_dir={folder.as_posix()}"
    return f"{own},{extra}" if extra.strip() else own


def load_parameters(project: Path, env: str, runtime_params: dict[str, Any]) -> dict[str, Any]:
    from .config import load_parameters as load

    return load(str(project / "conf"), env=env, runtime_params=runtime_params)


def check_settings(settings: Sequence[Setting], *, project: Path, env: str, out: Path,
                   extra: dict[str, Any]) -> dict[str, list[str]]:
    """Every problem of every setting (weights, data, names; what the pre-run check of each run would say)."""
    from .paper_setting import paper_setting_problems

    found = {}
    for s in settings:
        params = load_parameters(project, env, _runtime_params(s, out / s.name, extra))
        problems = paper_setting_problems(params)
        if problems:
            found[s.name] = problems
    return found


def _newest(folder: Path) -> Path | None:
    """The newest version of a Kedro versioned dataset saved at ``folder`` (``<folder>/<version>/<name>``)."""
    if not folder.is_dir():
        return None
    versions = sorted(p for p in folder.iterdir() if (p / folder.name).is_file())
    return versions[-1] / folder.name if versions else None


def sweep_table(settings: Sequence[Setting], out: Path) -> pd.DataFrame:
    """Per setting and method (each setting's newest comparison), beside the paper's test accuracy."""
    rows = []
    for s in settings:
        path = _newest(out / s.name / "08_reporting" / "compare" / "comparison.parquet")
        if path is None:
            continue
        table = pd.read_parquet(path)
        seconds = {step: json.loads((out / s.name / f"sweep_{step}.json").read_text()).get("seconds")
                   for step, _, _ in STEPS if (out / s.name / f"sweep_{step}.json").is_file()}
        for r in table[table["kind"] == "method"].to_dict("records"):
            paper = PAPER_ACCURACY.get((s.dataset, s.arch), {}).get(r["method"])
            ours = 100.0 * float(r["accuracy_mean"])
            rows.append({
                "dataset": s.dataset, "arch": s.arch, "method": r["method"],
                "test_macro_accuracy_pct": round(100.0 * float(r["macro_accuracy_mean"]), 2),
                "test_accuracy_pct": round(ours, 2), "trainable_pct": round(float(r["trainable_pct"]), 2),
                "trainings": int(r["trainings"]), "time_s": round(float(r["wall_seconds"]), 1),
                "paper_test_accuracy_pct": paper,
                "diff_to_paper_pp": None if paper is None else round(ours - paper, 2),
                "setting_run_s": seconds.get("run"),
            })
    return pd.DataFrame(rows, columns=["dataset", "arch", "method", "test_macro_accuracy_pct", "test_accuracy_pct",
                                       "trainable_pct", "trainings", "time_s", "paper_test_accuracy_pct",
                                       "diff_to_paper_pp", "setting_run_s"])


def table_markdown(table: pd.DataFrame, missing: Sequence[str]) -> str:
    def cell(v: Any, fmt: str = "{}") -> str:
        return "—" if v is None or (isinstance(v, float) and pd.isna(v)) else fmt.format(v)

    lines = [
        "# The paper's sweep beside the paper's numbers",
        "",
        "Test macro accuracy and test accuracy of each method (mean over `retrain.seeds`, the newest comparison "
        "of each setting), beside the test accuracy the BioTune paper reports (SPEC section 7: ResNet-50 only); "
        "the difference is ours minus the paper's, in accuracy points. Time: the method's wall-clock seconds.",
        "",
        "| dataset | arch | method | test macro acc. % | test acc. % | trainable % | trainings | time (s) "
        "| paper test acc. % | difference (pp) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table.to_dict("records"):
        lines.append(
            f"| {r['dataset']} | {r['arch']} | {r['method']} | {r['test_macro_accuracy_pct']:.2f} | "
            f"{r['test_accuracy_pct']:.2f} | {r['trainable_pct']:.2f} | {r['trainings']} | {r['time_s']:.1f} | "
            f"{cell(r['paper_test_accuracy_pct'], '{:.2f}')} | {cell(r['diff_to_paper_pp'], '{:+.2f}')} |")
    if missing:
        lines += ["", f"Not finished yet (no comparison): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def run_sweep(settings: Sequence[Setting], *, project: Path, env: str = "paper", out: Path = Path("data/sweep"),
              extra: str = "", echo: Callable[[str], None] = print) -> Path:
    """Run every step of every setting not done yet (see the module docstring); the table's path."""
    from .cli import parse_params

    out = Path(out) if Path(out).is_absolute() else Path(project) / out
    extra_params = parse_params(None, None, extra)
    problems = check_settings(settings, project=project, env=env, out=out, extra=extra_params)
    if problems:
        raise SweepError(
            f"{len(problems)} of {len(settings)} settings cannot run here; nothing was run:\n"
            + "\n".join(f"  {name}:\n    - " + "\n    - ".join(p) for name, p in problems.items()))
    for i, s in enumerate(settings, 1):
        folder = out / s.name
        for step, pipeline, last_output in STEPS:
            marker = folder / f"sweep_{step}.json"
            done = _newest(folder / last_output)
            if done is not None:
                echo(f"sweep {i}/{len(settings)} {s.name} {step}: done before, skipped ({done})")
                continue
            cmd = [sys.executable, "-m", "kedro", "run", "--env", env,
                   *(["--pipelines", pipeline] if pipeline else []), "--params", _params_text(s, folder, extra)]
            echo(f"sweep {i}/{len(settings)} {s.name} {step}: {' '.join(cmd[2:])}")
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=project)
            if proc.returncode != 0:
                raise SweepError(
                    f"sweep: {s.name} ({step}) failed with exit code {proc.returncode} (its output is above). "
                    "Fix the problem and run the same command again: finished steps are skipped.")
            seconds = time.perf_counter() - start
            folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"setting": s.name, "step": step, "seconds": round(seconds, 1),
                                          "command": cmd[2:]}, indent=2) + "\n")
    table = sweep_table(settings, out)
    missing = [s.name for s in settings if s.name not in set(table["dataset"] + "-" + table["arch"])]
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep_table.csv", index=False)
    path = out / "sweep_table.md"
    path.write_text(table_markdown(table, missing))
    echo(f"sweep: {len(settings)} settings; the table beside the paper's numbers: {path}")
    return path
