"""The markdown report a reader opens first (``report``, ``report_latest``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ..evaluation import TestMetrics
from ..fidelity import FidelitySummary
from ..search.records import GenomeRecord
from .labels import COMPARE_FIGURE_TITLE, FIGURE_TITLES, method_label


def _fmt_float(x: Any, digits: int = 4) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "" if x is None else str(x)
    if math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def _pct(x: Any, digits: int = 2) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{100.0 * v:.{digits}f}"


def _pm_pct(mean: Any, std: Any) -> str:
    return f"{_pct(mean)} ± {_pct(std)} %"


def format_duration(seconds: Any) -> str:
    """``3723`` -> ``"1h 02m 03s"``, ``125`` -> ``"2m 05s"``, ``4.25`` -> ``"4.2 s"``."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(s):
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    total = int(round(s))
    h, rem = divmod(total, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table (no ``tabulate`` needed).

    ``align``: one character per column, ``l``, ``r`` or ``c`` (default: left).
    Cells are converted with ``str``; ``|`` and newlines in cells are escaped.
    """

    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    align = align or "l" * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} characters for {len(headers)} columns")
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def _yes_no(b: Any) -> str:
    return "yes" if bool(b) else "no"


def _best_genome_table(best: GenomeRecord) -> str:
    names = list(best.block_names)
    genes = list(best.genes)
    mults = list(best.lr_multipliers)
    trained = [lr is not None for lr in best.block_lrs]
    rows = []
    for i, name in enumerate(names):
        m = mults[i] if i < len(mults) else None
        rows.append(
            [
                name,
                _yes_no(trained[i]),
                _fmt_float(genes[i], 3) if i < len(genes) else "-",
                f"{float(m):.2f}x" if trained[i] and m is not None else "frozen",
            ]
        )
    rows.append(["*threshold*", "", _fmt_float(best.threshold, 3), ""])
    return markdown_table(["block", "trained", "gene", "lr multiplier"], rows, "llrr")


def _generation_table(summary: pd.DataFrame) -> str:
    rows = []
    for _, r in summary.iterrows():
        rows.append(
            [
                int(r["generation"]),
                _fmt_float(r["best_fitness"]),
                _fmt_float(r["mean_fitness"]),
                _fmt_float(r["worst_fitness"]),
                _fmt_float(r["best_so_far"]),
                int(r["n_evaluations"]),
                int(r.get("n_cached", 0)),
                format_duration(r["train_seconds"]),
                _fmt_float(r["mean_trained_blocks"], 2),
                f"`{r['best_mask']}`",
                r["best_key"],
            ]
        )
    return markdown_table(
        ["gen", "best", "mean", "worst", "best so far", "evals", "reused", "time", "trained blocks", "best mask", "best key"],
        rows,
        "rrrrrrrrrll",
    )


def _per_seed_table(per_seed: pd.DataFrame) -> str:
    rows = []
    for _, r in per_seed.iterrows():
        rows.append(
            [
                int(r["seed"]),
                _pct(r.get("macro_accuracy")),
                _pct(r.get("accuracy")),
                _pct(r.get("macro_f1")),
                _fmt_float(r.get("cohen_kappa")),
                _pct(r.get("best_val_acc")),
                int(r["epochs_run"]) if "epochs_run" in r and pd.notna(r["epochs_run"]) else "-",
                format_duration(r.get("train_seconds")),
            ]
        )
    return markdown_table(
        ["seed", "macro acc %", "accuracy %", "macro F1 %", "kappa", "best val acc %", "epochs", "train time"],
        rows,
        "rrrrrrrr",
    )


def fidelity_section(fidelity: FidelitySummary, figure_path: str | None) -> list[str]:
    """The "Search fidelity" section: rho with its interval, n, the cost, the figure, how to read it."""
    out = ["## Search fidelity", ""]
    if not fidelity.enabled:
        out += ["The search-fidelity measurement was switched off (`fidelity.enabled: false`): nothing was "
                "retrained for it, and there is no figure.", ""]
        return out
    conf = f"{100 * fidelity.confidence:.0f} %"
    rho = "not defined (fewer than 3 genomes, or constant scores)" if fidelity.rho is None else (
        f"**{fidelity.rho:.2f}**" + ("" if fidelity.ci_low is None else
                                     f" [{fidelity.ci_low:.2f}, {fidelity.ci_high:.2f}] ({conf} bootstrap interval)"))
    out.append(
        f"Spearman's rank correlation between the search's score of a genome (validation macro accuracy, "
        f"1 - fitness) and its test macro accuracy after retraining on the whole training pool "
        f"(mean over {len(fidelity.seeds)} seed{'s' if len(fidelity.seeds) != 1 else ''}): rho = {rho}, "
        f"n = {fidelity.n} genomes ({fidelity.n_final_population} of the final population, generation "
        f"{fidelity.generation}, and {fidelity.n_random} random, scored as the search scores a genome on "
        f"chunk {fidelity.chunk}"
        + (f"; {fidelity.n_excluded} left out: invalid or every retraining diverged" if fidelity.n_excluded else "")
        + ").")
    out.append("")
    out.append(
        "How to read it: rho near 0 means the search's fitness does not predict the test accuracy, so the "
        "search picks noise; near 1, the genomes it prefers also test best. A wide interval (few genomes) "
        "means the data cannot tell.")
    out.append("")
    out.append(f"Cost: {fidelity.trainings} extra trainings, {format_duration(fidelity.seconds)} "
               f"({fidelity.bootstrap} bootstrap resamples).")
    out.append("")
    if figure_path:
        out += [f"Figure: [{FIGURE_TITLES['search_fidelity']}]({figure_path}) (under Figures below).", ""]
    return out


def comparison_section(compare_links: Mapping[str, Mapping[str, str] | None]) -> list[str]:
    """The section linking the comparison with the baselines (``compare_links``: ``table`` and ``figure``,
    each ``{"link", "version"}`` or None when ``kedro run --pipelines compare`` has not written it)."""
    out = ["## Comparison with the baselines", ""]
    table, figure = compare_links.get("table"), compare_links.get("figure")
    if not table and not figure:
        out += ["Not run yet: `kedro run --pipelines compare` (then `kedro run --pipelines reporting` links it "
                "here).", ""]
        return out
    versions = sorted({x["version"] for x in (table, figure) if x})
    made = " and ".join(f"`{v}`" for v in versions)
    out.append(f"The newest comparison (`kedro run --pipelines compare`, version {made} when this report was "
               f"written; a later one is linked by `kedro run --pipelines reporting`):"
               + (f" [the table]({table['link']})." if table else " no table saved."))
    out.append("")
    if figure:
        out += [f"![{COMPARE_FIGURE_TITLE}]({figure['link']})", ""]
    return out


def pareto_section(table: pd.DataFrame, figure_path: str | None, best_genome: GenomeRecord) -> list[str]:
    """The accuracy-versus-cost front of the search (:mod:`evotune.report.pareto`): its genomes in a table,
    the chosen one marked, the figure, and where optuna-dashboard shows it."""
    from .pareto import front_markdown, front_study_name

    out = ["## Accuracy versus cost: the Pareto front", ""]
    if not len(table):
        return out + ["No valid evaluation: no front.", ""]
    chosen = table[table["chosen"]]
    where = ("on the share front" if len(chosen) and bool(chosen["on_share_front"].iloc[0])
             else "not on the share front" if len(chosen) else "not among the evaluations")
    out.append(
        f"{len(table)} valid evaluations; {int(table['on_share_front'].sum())} on the front of validation macro "
        f"accuracy against trainable share, {int(table['on_time_front'].sum())} on the front against training "
        f"time. The chosen genome `{best_genome.key}` is {where}. Validation accuracies are on each evaluation's "
        "search chunk (mean over the search seeds), so genomes judged on other chunks are not strictly comparable.")
    out.append("")
    if best_genome.storage:
        out.append(f"optuna-dashboard shows the front: study `{front_study_name(best_genome.study_name)}` in "
                   f"`{best_genome.storage}` (three objectives).")
        out.append("")
    out.append(front_markdown(table))
    out.append("")
    if figure_path:
        out += [f"Figure: [{FIGURE_TITLES['pareto_front']}]({figure_path}) (under Figures below).", ""]
    return out


def confirmation_section(picked: GenomeRecord, table: pd.DataFrame | None) -> list[str]:
    """How the retrained genome was picked (``confirm.rule``, :mod:`evotune.search.confirm`), the confirmed genomes
    and the confirmation's cost."""
    rule = picked.pick_rule or "best"
    out = ["## The final pick", ""]
    if rule == "best" or table is None or not len(table):
        out += [f"Rule `best` (`confirm.rule`, the paper's): the search's best genome `{picked.key}` is retrained; "
                "no confirmation (`confirm.rule confirmed` or `parsimonious` trains the search's top genomes again "
                "on every search chunk with more seeds).", ""]
        return out
    n_chunks = len(table["val_accs"].iloc[0]) if len(table) else 0
    out.append(
        f"Rule `{rule}` (`confirm.rule`): the search's {len(table)} best distinct genomes trained again on every "
        f"search chunk with the confirmation seeds ({n_chunks} trainings each); picked `{picked.key}` (mask "
        f"`{picked.mask}`), the search's best being `{picked.search_best_key}`. Cost: "
        f"{int(picked.confirm_trainings or 0)} trainings, {format_duration(picked.confirm_seconds or 0.0)}, beside the "
        f"search's {picked.trainings} trainings and {format_duration(picked.search_seconds)}.")
    out.append("")
    rows = []
    for r in table.itertuples():
        diff = "" if pd.isna(r.diff_to_best) else (
            f"{100 * r.diff_to_best:+.2f}" + ("" if pd.isna(r.diff_low) else
                                               f" [{100 * r.diff_low:+.2f}, {100 * r.diff_high:+.2f}]"))
        rows.append([f"`{r.key}`", int(r.search_rank), f"`{r.mask}`", _pct(1.0 - float(r.search_fitness)),
                     _pct(r.confirmed_val_acc), diff, _pct(r.trainable_share, 1), "yes" if r.not_worse else "no",
                     "**picked**" if r.picked else ""])
    out.append(markdown_table(["genome", "search rank", "mask", "search val acc (%)", "confirmed val acc (%)",
                               "diff to confirmed best (pp, 95 % CI)", "trainable (%)", "not worse", ""], rows))
    out.append("")
    return out


def markdown_report(
    best_genome: GenomeRecord,
    summary: pd.DataFrame,
    test_metrics: TestMetrics,
    test_metrics_per_seed: pd.DataFrame,
    figure_paths: Mapping[str, str],
    fidelity: FidelitySummary | None = None,
    compare_links: Mapping[str, Mapping[str, str] | None] | None = None,
    pareto: pd.DataFrame | None = None,
    confirmation: pd.DataFrame | None = None,
) -> str:
    """The report a reader opens first (markdown).

    ``figure_paths`` maps a figure name (keys of :data:`FIGURE_FILES`, or any other
    name) to its path relative to the report; the figures are linked in that order.
    ``fidelity``: the search-fidelity measurement (its section; none without it).
    ``compare_links``: the comparison's files (:func:`comparison_section`; no section without it).
    ``pareto``: the search's accuracy-versus-cost front (:func:`pareto_section`; no section without it).
    ``confirmation``: the confirmation stage's table (:func:`confirmation_section`; with ``best_genome`` the
    picked genome, its section whenever the record says how it was picked).
    """
    tm = test_metrics
    arch = best_genome.arch
    n_seeds = tm.n_seeds
    out: list[str] = [f"# {method_label(tm.method)} on {arch}: results", ""]

    # headline
    out.append(
        f"**Test macro accuracy {_pm_pct(tm.macro_accuracy_mean, tm.macro_accuracy_std)}** "
        f"(class-balanced, the paper's metric; mean ± population std (ddof=0) over {n_seeds} "
        f"seed{'s' if n_seeds != 1 else ''}, {int(tm.n_test_images):,} test images); "
        f"plain accuracy {_pm_pct(tm.accuracy_mean, tm.accuracy_std)}."
    )
    out.append("")
    created = tm.inputs_created
    out.append(
        f"Data: {tm.dataset_name} (split fingerprint `{tm.dataset}`); backbone `{tm.backbone_id}`"
        f" made {created.get('backbone', '?')}; search `{best_genome.study_name}` made "
        f"{best_genome.created}; retrain made {created.get('retrained_models', '?')}."
    )
    out.append("")
    headline = [
        ["test macro accuracy", _pm_pct(tm.macro_accuracy_mean, tm.macro_accuracy_std)],
        ["test accuracy", _pm_pct(tm.accuracy_mean, tm.accuracy_std)],
        ["test macro F1", _pm_pct(tm.macro_f1_mean, tm.macro_f1_std)],
        ["Cohen's kappa", f"{_fmt_float(tm.cohen_kappa_mean)} ± {_fmt_float(tm.cohen_kappa_std)}"],
        ["trainable parameters",
         f"{_pct(tm.trainable_share)} % ({int(tm.trainable_params):,} of {int(tm.total_params):,})"],
    ]
    out.append(markdown_table(["metric", "value"], headline, "lr"))
    out.append("")

    # best genome
    fitness = best_genome.fitness
    out.append("## Best genome")
    out.append("")
    out.append(
        f"Genome `{best_genome.key}`, mask `{best_genome.mask}` "
        f"(1 = trained), fitness {_fmt_float(fitness)}"
        + (f" (validation macro accuracy {_pct(1.0 - float(fitness))} % during the search)" if fitness is not None else "")
        + f". Base learning rate {best_genome.base_lr}; a trained block's rate is "
        "base_lr * 10^(2 (gene - 0.5)); the head is "
        + ("always trained." if best_genome.force_head_trainable else "trained only when selected.")
    )
    out.append("")
    out.append(_best_genome_table(best_genome))
    out.append("")
    if best_genome.pick_rule is not None:
        out += confirmation_section(best_genome, confirmation)

    # search settings and cost
    gens = summary["generation"].astype(int) if len(summary) else pd.Series(dtype=int)
    n_generations = int(gens.max()) if len(gens) else 0
    pop0 = summary.loc[gens == 0, "population"] if "population" in summary.columns and len(summary) else []
    out.append("## Search settings and cost")
    out.append("")
    settings = [
        ["architecture", arch],
        ["blocks", len(best_genome.block_names)],
        ["generations", f"{n_generations} (after the initial population)"],
    ]
    if len(pop0):
        settings.append(["population", int(pop0.iloc[0])])
    settings += [
        ["evaluations", best_genome.evaluations],
        ["trainings (evaluations x seeds, reused ones included)", best_genome.trainings],
        ["evaluations reused from the study", int(summary["n_cached"].sum()) if "n_cached" in summary.columns else 0],
        ["search time (sum over evaluations)", format_duration(best_genome.search_seconds)],
        ["search device", best_genome.device],
        ["study", f"`{best_genome.study_name}` in `{best_genome.storage}`"],
        ["test device", tm.device],
    ]
    out.append(markdown_table(["setting", "value"], settings, "ll"))
    out.append("")

    # per generation
    out.append("## Search progress per generation")
    out.append("")
    out.append("Fitness = 1 - mean validation macro accuracy over the search seeds (lower is better); "
               "statistics over the population after each generation.")
    out.append("")
    out.append(_generation_table(summary))
    out.append("")

    # per seed
    out.append("## Test results per seed")
    out.append("")
    out.append(_per_seed_table(test_metrics_per_seed))
    out.append("")

    if pareto is not None:
        out += pareto_section(pareto, figure_paths.get("pareto_front"), best_genome)

    if fidelity is not None:
        out += fidelity_section(fidelity, figure_paths.get("search_fidelity"))

    if compare_links is not None:
        out += comparison_section(compare_links)

    # figures
    if figure_paths:
        out.append("## Figures")
        out.append("")
        for name, path in figure_paths.items():
            title = FIGURE_TITLES.get(name, name)
            out.append(f"- [{title}]({path})")
        out.append("")
        for name, path in figure_paths.items():
            out.append(f"![{FIGURE_TITLES.get(name, name)}]({path})")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
