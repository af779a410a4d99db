"""What every stage job shares: provenance of its outputs, threads, progress and errors into
the rule log."""

import functools
import hashlib
import json
import logging
import os
import socket
import sys
import time
from importlib.metadata import version

import torch

log = logging.getLogger(__name__)


def provenance(**slices: object) -> dict:
    """Store attrs: package version and a hash of the config slices that made the output."""
    blob = json.dumps(slices, sort_keys=True, default=str)
    return {
        "package_version": version("interaction-basis"),
        "config_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "config": blob,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


#: Seconds between two progress lines in a rule log.
PROGRESS_INTERVAL = 10.0


class _ProgressLog:
    """A file for tqdm that turns each refresh into one log line (count, rate and ETA)."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            log.info("%s", line)

    def flush(self) -> None:
        pass


def progress_to_log(interval: float = PROGRESS_INTERVAL) -> None:
    """Every tqdm bar of this process, the package's or a library's, writes into the log: a line
    every ``interval`` seconds and its final state (also of bars made with ``leave=False``), so
    that ``tail -f`` on a rule log shows a long job advance."""
    import tqdm.std

    init = getattr(tqdm.std.tqdm.__init__, "_to_log_of", tqdm.std.tqdm.__init__)

    @functools.wraps(init)
    def to_log(self, *args, **kwargs):
        kwargs.update(file=_ProgressLog(), mininterval=interval, ascii=True)
        if len(args) < 4:  # leave is the fourth positional parameter
            kwargs["leave"] = True
        init(self, *args, **kwargs)

    to_log._to_log_of = init  # type: ignore[attr-defined]
    tqdm.std.tqdm.__init__ = to_log


def set_threads(threads: int) -> None:
    """Start of every job: thread count, where it runs, progress bars and uncaught errors into
    the rule log."""
    torch.set_num_threads(max(1, int(threads)))
    progress_to_log()
    log.info(
        "torch threads: %d, host %s, SLURM job %s",
        torch.get_num_threads(),
        socket.gethostname(),
        os.environ.get("SLURM_JOB_ID", "-"),
    )

    def log_uncaught(kind, value, tb):
        # The traceback goes to the log only; the console gets the message once (Snakemake
        # shows a failed job's stderr, and its log where --show-failed-logs is set).
        log.error("job failed", exc_info=(kind, value, tb))
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        files = [h.baseFilename for h in logging.getLogger().handlers if hasattr(h, "baseFilename")]
        where = f" (traceback in {files[-1]})" if files else ""
        print(f"{kind.__name__}: {value}{where}", file=sys.stderr)

    sys.excepthook = log_uncaught
