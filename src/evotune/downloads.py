"""Downloads of weights and datasets: the offline switch, the reachability probe and the hash-checked fetch.

A machine with internet downloads what a run needs on first use, as torchvision and timm do:
ImageNet weights into the torch hub cache (``torch.hub.load_state_dict_from_url`` with its hash
check and progress bar), timm weights through the Hugging Face hub, torchvision datasets with
``download: true``. Before a run starts, the parameter checks ask :func:`download_problem` whether
what is missing can be fetched: it cannot when the machine is switched offline (:func:`offline`)
or when the file's host does not answer; the run then stops before anything trains, with the
message naming the file, where it goes and its URL.

The one offline switch is the environment variable ``EVOTUNE_OFFLINE=1`` (``HF_HUB_OFFLINE=1``,
the Hugging Face hub's own switch, means the same here).
"""

from __future__ import annotations

import functools
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["OFFLINE_ENV", "DownloadError", "download_problem", "fetch_state_dict", "offline", "unreachable"]

#: the offline switch: set to 1 (or true/yes/on) and nothing is downloaded
OFFLINE_ENV = "EVOTUNE_OFFLINE"
#: how long the probe waits for a host's first answer (seconds)
PROBE_TIMEOUT_S = 10.0
#: how long a download waits for the next bytes before it gives up (seconds)
READ_TIMEOUT_S = 60.0

_TRUE = {"1", "true", "yes", "on"}


class DownloadError(RuntimeError):
    """A download failed (corrupt, truncated, host unreachable); the message says what to do."""


def offline() -> bool:
    """Whether this run is switched offline (``EVOTUNE_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes/on)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


@functools.lru_cache(maxsize=64)
def _probe(scheme: str, netloc: str, url: str, timeout: float) -> str | None:
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "evotune"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # the host answered (a 403/405 to HEAD still means it is there)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{scheme}://{netloc} did not answer within {timeout:g} s ({type(reason).__name__}: {reason})"


def unreachable(url: str, timeout: float | None = None) -> str | None:
    """Why ``url``'s host cannot be reached from here (offline switch, no answer), or None when it answers.

    One HEAD request, at most ``timeout`` (default :data:`PROBE_TIMEOUT_S`) seconds; a host's answer is
    remembered for the rest of the process.
    """
    if offline():
        return f"this run is switched offline: {OFFLINE_ENV} or HF_HUB_OFFLINE is set"
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        return None  # file:// and the like: nothing to probe
    return _probe(parsed.scheme, parsed.netloc, url, PROBE_TIMEOUT_S if timeout is None else float(timeout))


def download_problem(what: str, url: str, dest: str | os.PathLike, how_else: str = "") -> str | None:
    """The offline message for ``what`` (missing at ``dest``, fetched from ``url``), or None when it can be downloaded."""
    why = unreachable(url)
    if why is None:
        return None
    return (f"{what} missing: expected {dest}. This machine cannot download it ({why}): on a machine with "
            f"internet download {url} and copy it to {dest}{how_else}. Unset {OFFLINE_ENV} once the machine is "
            "online and the run downloads it itself.")


def _progress() -> bool:
    return sys.stderr.isatty()


def fetch_state_dict(url: str, dest: Path, *, what: str) -> Mapping:
    """Download ``url`` to ``dest`` (unless there) through torch hub, check its hash, and load it (CPU).

    The file name carries the first hex digits of its SHA-256 (``resnet50-11ad3fa6.pth``), as
    torchvision names its files: torch hub downloads to a temporary ``.partial`` file beside ``dest``,
    checks those digits, and only then moves it to ``dest``; a corrupt or truncated download raises
    :class:`DownloadError` and leaves nothing at ``dest``.
    """
    import socket

    import torch

    problem = None if dest.is_file() else download_problem(what, url, dest)
    if problem is not None:
        raise DownloadError(problem)
    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(READ_TIMEOUT_S)  # a host that stops sending fails the download instead of hanging
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=str(dest.parent), file_name=dest.name,
                                                  map_location="cpu", progress=_progress(), check_hash=True,
                                                  weights_only=True)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise DownloadError(
            f"{what}: the download of {url} is corrupt or truncated: its SHA-256 does not start with the digits "
            f"in its name ({exc}). Nothing was kept at {dest}; run again to download it again (or download it "
            f"by hand and copy it to {dest})."
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"{what}: the download of {url} failed ({type(reason).__name__}: {reason}). Nothing was kept at "
            f"{dest}; run again when the host answers, or download it by hand and copy it to {dest}."
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
