"""The project's error types.

Every error a user can fix (a parameter, a data file, a missing weights file, stale
inputs) is an :class:`EvotuneError` whose message names the parameter, file or stage
and says what to do. The command line (``evotune.cli``) prints such an error as that
one message, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EvotuneError(ValueError):
    """A problem the user can fix; the message says which and how."""


class ParameterError(EvotuneError):
    """A parameter (named in the message) is missing, of the wrong type or out of range."""


class InputMismatchError(EvotuneError):
    """A stage's inputs come from different runs (another dataset, another backbone)."""


def find_project_error(exc: BaseException | None) -> EvotuneError | None:
    """The first :class:`EvotuneError` in ``exc``'s chain of causes and contexts, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, EvotuneError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def script_main(main, *args, **kwargs) -> int:
    """Run a script's ``main``; a project error is printed as its one message (exit code 1)."""
    import sys

    try:
        return int(main(*args, **kwargs) or 0)
    except Exception as exc:  # noqa: BLE001 - only the project's own errors are turned into a message
        error = find_project_error(exc)
        if error is None:
            raise
        print(f"Error: {error}", file=sys.stderr)
        return 1
