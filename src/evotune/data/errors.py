"""The one error type of the data layer."""

from __future__ import annotations

from ..errors import EvotuneError


class DataSourceError(EvotuneError):
    """Bad data or data parameters. The message names the file, folder or parameter and what to do."""
