"""What makes a measured time comparable with another one: the CPU (model, AVX-512 or not, cores).

Machines of this project's kind differ 4-5x in speed on AVX-512 alone, so every timing the scripts report
(``scripts/benchmark_evaluation.py``, ``scripts/time_run.py``) names them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_facts(cpuinfo: Path = CPUINFO) -> dict[str, object]:
    """The CPU's model name, whether it has AVX-512 (None where ``/proc/cpuinfo`` cannot tell) and its cores."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.lower().startswith("model name") and ":" in line), None)
    return {"cpu": model or platform.processor() or platform.machine(),
            "avx512": ("avx512" in text) if text else None, "cores": os.cpu_count()}


def avx512_label(avx512: bool | None) -> str:
    """How a report names :func:`cpu_facts`'s ``avx512``: unknown is not "no"."""
    return "AVX-512 unknown" if avx512 is None else "AVX-512" if avx512 else "no AVX-512"
