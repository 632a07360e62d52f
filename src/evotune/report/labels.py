"""Names shown in the reports: method labels, figure file names and titles."""

from __future__ import annotations

from typing import Any

# File names of the figures next to the report (``figures/<name>``); the report
# links them with these relative paths.
FIGURE_FILES: dict[str, str] = {
    "fitness": "fitness.png",
    "block_selection": "block_selection.png",
    "gene_trajectories": "gene_trajectories.png",
    "lr_multipliers": "lr_multipliers.png",
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "search_fidelity": "search_fidelity.png",
    "pareto_front": "pareto_front.png",
}
FIGURE_TITLES: dict[str, str] = {
    "fitness": "Fitness per generation",
    "block_selection": "Share of the population training each block",
    "gene_trajectories": "Each gene and the threshold over the generations",
    "lr_multipliers": "Learning-rate multiplier per block of the best genome",
    "training_curves": "Training curves of the retrained best genome",
    "confusion_matrix": "Test confusion matrix",
    "search_fidelity": "Search fidelity: search score vs test macro accuracy",
    "pareto_front": "Accuracy vs cost: the Pareto front of the search",
}
#: title of the comparison's figure (``compare_figure``), which the report links when ``compare`` has run
COMPARE_FIGURE_TITLE = "Comparison: test macro accuracy vs trainable parameters"

#: display name of every method id (``evotune.methods.METHODS``, and BioTune)
METHOD_LABELS: dict[str, str] = {
    "biotune": "BioTune",
    "full_finetune": "Full fine-tuning",
    "from_scratch": "From scratch",
    "linear_probe": "Linear probing",
    "surgical": "Surgical fine-tuning",
    "auto_rgn": "Auto-RGN",
    "l2_sp": "L2-SP",
    "l1_sp": "L1-SP",
    "lora": "LoRA",
    "deft": "DEFT",
    "random_search": "Random search",
    "tpe": "TPE",
    "nsga2": "NSGA-II",
    "biotune_confirmed": "BioTune (confirmed pick)",
    "biotune_parsimonious": "BioTune (parsimonious pick)",
}


def method_label(method: Any) -> str:
    """Display name of a method id (``"biotune"`` -> ``"BioTune"``); unknown ids unchanged."""
    return METHOD_LABELS.get(str(method).lower(), str(method))

