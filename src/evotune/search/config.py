"""The search's one configuration: the ``search`` parameters (conf/base/parameters_search.yml).

:class:`SearchConfig` is what the evolution loop, the genome evaluator, the workers and the search
baselines read; it computes the number of search chunks (:attr:`SearchConfig.n_chunks`). The study
storage is not one of them: it is the catalog entry ``search_study_store`` (given as ``--params
search.storage=...``, which the catalog reads), so a ``storage`` key here is passed over and checked
against the catalog's by :func:`evotune.search.runner.open_search`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ParameterError
from ..params import from_params

#: the ``search`` key that belongs to the catalog (``search_study_store``), not to this class
STORAGE_KEY = "storage"

#: keys left out of the study's fingerprint: they do not change what a search finds, or (``chunk_seed``)
#: the fingerprint covers their effect itself (the chunk of every image)
NOT_FINGERPRINTED = ("study_name", "stale_after_s", "worker_idle_timeout_s", "worker_poll_s", "chunk_seed")

#: the version of the search's operators (evotune.search.evolution), part of the study's fingerprint:
#: a change to what the operators draw for given fitness values gets a fresh study, since a study
#: recorded by other operators cannot be replayed. 2: the mating pool holds the exploited elites and
#: the first offspring are not mutated (the authors' code; issue 11). 3: one study per search, its trials
#: the evaluations (no '-units' study), genes only as gene_<block> (issue 26: the g00.. names retired)
OPERATORS_VERSION = 3


@dataclass(frozen=True)
class SearchConfig:
    """The ``search`` parameters, every key required (conf/base is the only source of defaults)."""

    population: int  # N
    elite: int  # E
    generations: int  # G
    seed: int  # seeds the evolution's random draws
    seeds: tuple[int, ...]  # each genome is trained once per seed
    train_split_pct: float  # fraction of the training pool per generation
    force_head_trainable: bool
    study_name: str
    exploit_delta: float
    stale_after_s: float  # a running training silent this long is taken over
    worker_idle_timeout_s: float  # a worker with nothing to do this long stops
    worker_poll_s: float  # how often an idle worker (or a waiting search) looks for work
    chunk_seed: int  # seeds the cut of the train and val splits into search chunks (${data.split.seed})

    def __post_init__(self) -> None:
        if self.population < 3:
            raise ParameterError(f"search.population must be >= 3, got {self.population}")
        if not 0 <= self.elite < self.population:
            raise ParameterError(
                f"search.elite must be >= 0 and smaller than search.population "
                f"({self.population}), got {self.elite}"
            )
        if self.generations < 0:
            raise ParameterError(f"search.generations must be >= 0, got {self.generations}")
        if not self.seeds:
            raise ParameterError("search.seeds must list at least one seed, e.g. [684, 559, 629]")
        if not 0.0 < self.train_split_pct <= 1.0:
            raise ParameterError(f"search.train_split_pct must be in (0, 1], got {self.train_split_pct}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SearchConfig:
        """From ``params:search``; ``search.storage`` (the catalog's, see the module) is passed over."""
        if isinstance(params, dict) and STORAGE_KEY in params:
            params = {k: v for k, v in params.items() if k != STORAGE_KEY}
        return from_params(cls, params, "search")

    @property
    def n_chunks(self) -> int:
        """ceil(1 / train_split_pct): the number of disjoint chunks the train and val splits are cut into."""
        return max(1, math.ceil(1.0 / float(self.train_split_pct) - 1e-9))

    @property
    def evaluations(self) -> int:
        """N + G * (2E + N - E) (SPEC section 4.3)."""
        return self.population + self.generations * (self.elite + self.population)

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that decide what a search finds (for the study's name)."""
        fields = {k: v for k, v in asdict(self).items() if k not in NOT_FINGERPRINTED}
        return {**fields, "operators": OPERATORS_VERSION}
