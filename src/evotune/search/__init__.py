"""BioTune's search (SPEC sections 2-4) and the search baselines' shared machinery.

* :mod:`~evotune.search.config` - :class:`SearchConfig`, the ``search`` parameters (one chunk count);
* :mod:`~evotune.search.evolution` - the evolutionary operators and loop (no training in it);
* :mod:`~evotune.search.evaluator` - :class:`GenomeEvaluator`: genomes to fitness, by training on chunks;
* :mod:`~evotune.search.store` - the study store (Optuna, one study per search) and study names;
* :mod:`~evotune.search.queue` - evaluations queued, claimed and told as trials of that study;
* :mod:`~evotune.search.records` - :class:`GenomeRecord` and the trials and population tables;
* :mod:`~evotune.search.runner` - the one runner, for BioTune, its workers and the search baselines;
* :mod:`~evotune.search.confirm` - the confirmation stage: the search's top genomes trained again, the pick.

The genome itself (its genes and their decoding) is :mod:`evotune.genome`; the search chunks of the
train and val splits are cut by :mod:`evotune.data.splitting`.
"""
