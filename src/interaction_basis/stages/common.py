"""What every stage job shares: provenance of its outputs, threads, progress and errors into
the rule log."""

import ctypes
import hashlib
import json
import logging
import os
import socket
import sys
import time
from importlib.metadata import version

import torch
from pydantic import BaseModel

from interaction_basis import progress
from interaction_basis.config import ExtractConfig, ModelConfig
from interaction_basis.kinds.registry import KINDS
from interaction_basis.lib import budget

log = logging.getLogger(__name__)


def provenance(**slices: object) -> dict:
    """Store attrs: package version and a hash of the config slices that made the output.

    Config sections are recorded as the stage params hold them: a model config as its kind's
    settings only (``ModelConfig.settings``), so that another kind's settings never appear as
    if they mattered; other sections whole."""
    dumped = {
        name: value.settings()
        if isinstance(value, ModelConfig)
        else value.model_dump(mode="json")
        if isinstance(value, BaseModel)
        else value
        for name, value in slices.items()
    }
    blob = json.dumps(dumped, sort_keys=True, default=str)
    return {
        "package_version": version("interaction-basis"),
        "config_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "config": blob,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def resolve_device(setting: str, kind: str) -> torch.device:
    """Where a stage runs the model, from ``extract.device`` (resolved once per stage, here
    only): ``auto`` is CUDA for kinds that gain from a GPU (language models) when torch sees
    one, else the CPU; the toy models (mod-add, MLP) always use the CPU.

    Raises:
        ValueError: ``cuda`` asked for a toy model, or where torch sees no CUDA device.
    """
    cpu = torch.device("cpu")
    if setting == "cpu":
        device = cpu
    elif not KINDS[kind].uses_gpu:
        if setting != "auto":
            raise ValueError(
                f"extract.device {setting!r} is for language models (model.kind hf); {kind} "
                "models run on the CPU: set extract.device to auto or cpu."
            )
        device = cpu
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif setting == "auto":
        device = cpu
    else:
        raise ValueError(
            f"extract.device is {setting!r} but torch sees no CUDA device (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda}); set extract.device to "
            "auto or cpu, or install a CUDA build of torch on the GPU nodes."
        )
    log.info("device: %s (extract.device %s)", _describe(device), setting)
    return device


def _describe(device: torch.device) -> str:
    if device.type != "cuda":
        return str(device)
    free, total = torch.cuda.mem_get_info(device)
    name = torch.cuda.get_device_name(device)
    return f"{device} ({name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"


def log_device_peak(device: torch.device) -> None:
    """End of a stage on a GPU: its peak GPU memory into the rule log (Snakemake's benchmark
    files record the host's memory only)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        log.info("peak GPU memory on %s: %.2f GiB", device, peak / 2**30)


#: glibc's ``mallopt`` parameter for the size from which allocations get their own mapping.
M_MMAP_THRESHOLD = -3
#: Allocations of at least this size are mapped and returned to the system when freed.
MMAP_THRESHOLD_BYTES = 128 << 10


def return_freed_memory() -> None:
    """Fix glibc's mmap threshold at its default (128 KiB), for jobs that allocate and free many
    megabyte-sized tensors around long-lived ones (the edge ablation's group outputs).

    By default glibc raises the threshold to the size of each mapped block that is freed (up to
    32 MiB), so from then on those temporaries come from the heap, which long-lived tensors pin:
    its free space grew to 2.5 GB while 135 MB were in use, by chance of the allocation order.
    Fixed (which also fixes the trim threshold), every block of 128 KiB or more is mapped and
    unmapped, and the peak is what the job holds (docs/performance.md). A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def set_threads(threads: int) -> None:
    """Start of every job: thread count, where it runs, progress bars and uncaught errors into
    the rule log."""
    torch.set_num_threads(max(1, int(threads)))
    progress.to_log()
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


def memory_budget(extract: ExtractConfig, device: torch.device) -> int:
    """The working-memory budget of an M′ or edge job on ``device`` in bytes
    (``extract.memory_budget_mb``, or half the memory the job has; ``lib.budget.derive_budget``),
    logged with its source."""
    chosen = budget.job_budget(extract.memory_budget_mb, str(device))
    log.info("memory budget: %.0f MiB (%s) on %s", chosen.n_bytes / 2**20, chosen.source, device)
    return chosen.n_bytes
