"""The reports: pure functions (no Kedro) from the artifacts to tables, figures and markdown.

* :mod:`.summary`: the per-generation summary of a search (``generation_summary``);
* :mod:`.figures`: the report's figures (matplotlib ``Figure`` objects);
* :mod:`.markdown`: the markdown report of BioTune's search and test;
* :mod:`.comparison`: the comparison with the baselines (table, markdown, figure);
* :mod:`.labels`: method labels, figure file names and titles.

The Kedro nodes in :mod:`evotune.pipelines.reporting` and :mod:`evotune.pipelines.compare`
wire them to the catalog.
"""
