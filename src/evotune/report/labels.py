"""Names shown in the reports: method labels, figure file names and titles."""

from __future__ import annotations

from typing import Any

# File names of the figures next to the report (``figures/<name>``); the report
# links them with these relative paths.
FIGURE_FILES: dict[str, str] = {
    "fitness": "fitness.png",
    "block_selection": "block_selection.png",
    "lr_multipliers": "lr_multipliers.png",
    "confusion_matrix": "confusion_matrix.png",
    "search_fidelity": "search_fidelity.png",
}
FIGURE_TITLES: dict[str, str] = {
    "fitness": "Fitness per generation",
    "block_selection": "Share of the population training each block",
    "lr_multipliers": "Learning-rate multiplier per block of the best genome",
    "confusion_matrix": "Test confusion matrix",
    "search_fidelity": "Search fidelity: search score vs test macro accuracy",
}

#: display name of every method id (``evotune.methods.METHODS``, and BioTune)
METHOD_LABELS: dict[str, str] = {
    "biotune": "BioTune",
    "full_finetune": "Full fine-tuning",
    "linear_probe": "Linear probing",
    "surgical": "Surgical fine-tuning",
    "auto_rgn": "Auto-RGN",
    "l2_sp": "L2-SP",
    "l1_sp": "L1-SP",
    "lora": "LoRA",
    "deft": "DEFT",
    "random_search": "Random search",
    "tpe": "TPE",
}


def method_label(method: Any) -> str:
    """Display name of a method id (``"biotune"`` -> ``"BioTune"``); unknown ids unchanged."""
    return METHOD_LABELS.get(str(method).lower(), str(method))

