"""Progress bars of the package's long loops: tqdm on the console, or lines in the rule log.

Every loop that reports progress goes through :func:`progress`. A workflow job calls
:func:`to_log` once at its start (``stages.common.set_threads``), and from then on each bar
writes one line every ``interval`` seconds and its final state into the log, so that
``tail -f`` on a rule log shows a long job advance. Nothing outside the package is patched:
a library's own bars keep their defaults.
"""

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds between two progress lines in a rule log.
PROGRESS_INTERVAL = 10.0

_overrides: dict[str, Any] = {}


class _ProgressLog:
    """A file for tqdm that turns each refresh into one log line (count, rate and ETA)."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            log.info("%s", line)

    def flush(self) -> None:
        pass


def progress(iterable: Iterable[T], desc: str, unit: str = "batch", **kwargs: Any) -> "tqdm[T]":
    """``tqdm(iterable, desc=desc, unit=unit, **kwargs)``, into the log after :func:`to_log`."""
    return tqdm(iterable, desc=desc, unit=unit, **{**kwargs, **_overrides})


def to_log(interval: float = PROGRESS_INTERVAL) -> None:
    """Send every later bar into the log: a line every ``interval`` seconds and its final state
    (also of bars made with ``leave=False``)."""
    _overrides.update(file=_ProgressLog(), mininterval=interval, ascii=True, leave=True)
