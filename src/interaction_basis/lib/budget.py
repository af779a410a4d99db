"""The working-memory budget of one job: how many bytes the largest intermediates of one call
(a chunk of pair terms, a block of Jacobian rows) may take (method §A.8).

A stage sets the budget once for its work (:func:`limit`); the closed forms and the generic path
read it (:func:`budget_bytes`) and chunk over positions, heads or output features to stay within
it. Chunking changes only the order of sums, never what is summed.

The stages take the budget from ``extract.memory_budget_mb`` or, where that is null, derive it
from the memory the job has (:func:`derive_budget`): the GPU's free memory on CUDA; else the
job's memory under SLURM; else the machine's available memory; times :data:`SHARE`.
"""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import NamedTuple

#: The budget where no stage has set one (a library call, a test): 2 GiB.
DEFAULT_BYTES = 2 * 2**30

#: Share of the job's memory that the budget takes where it is derived. The budget bounds the
#: largest intermediates of one chunk as the closed forms and the generic path count them; the
#: rest of the job's memory holds the model, the activation batch, the accumulators, the
#: allocators' cached blocks (PyTorch's and glibc's keep freed memory for reuse) and what the
#: counts leave out (an einsum's transient copies): one half leaves the same again as margin.
SHARE = 0.5

_MIB = 2**20

_BUDGET: ContextVar[int | None] = ContextVar("interaction_basis_memory_budget", default=None)


def budget_bytes() -> int:
    """The bytes the current call's largest intermediates may take."""
    value = _BUDGET.get()
    return DEFAULT_BYTES if value is None else value


@contextmanager
def limit(n_bytes: int) -> Iterator[None]:
    """Within the block, :func:`budget_bytes` is ``n_bytes``."""
    if n_bytes < 1:
        raise ValueError(f"A memory budget must be positive; got {n_bytes} bytes.")
    token = _BUDGET.set(int(n_bytes))
    try:
        yield
    finally:
        _BUDGET.reset(token)


class Budget(NamedTuple):
    """A budget in bytes and where it came from (for the job's log)."""

    n_bytes: int
    source: str


def slurm_memory_bytes(environ: Mapping[str, str]) -> int | None:
    """The job's memory under SLURM (``--mem`` or ``--mem-per-cpu`` × CPUs per task; SLURM
    states both in MB), or ``None`` outside a SLURM job or where neither is set."""
    per_node = environ.get("SLURM_MEM_PER_NODE")
    if per_node:
        return int(per_node) * _MIB
    per_cpu = environ.get("SLURM_MEM_PER_CPU")
    if per_cpu:
        cpus = environ.get("SLURM_CPUS_PER_TASK") or environ.get("SLURM_CPUS_ON_NODE") or "1"
        return int(per_cpu) * int(cpus) * _MIB
    return None


def mem_available_bytes(meminfo: str) -> int | None:
    """``MemAvailable`` of a ``/proc/meminfo`` text (stated in kB), or ``None`` without it."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def derive_budget(
    setting_mb: int | None,
    *,
    cuda_free_bytes: int | None,
    environ: Mapping[str, str],
    meminfo: str | None,
) -> Budget:
    """The budget of a job (pure: the caller reads the sources).

    ``setting_mb`` (``extract.memory_budget_mb``) wins where it is set. Otherwise
    :data:`SHARE` of the first of: ``cuda_free_bytes`` (the GPU's free memory, where the work
    runs on CUDA: the intermediates live there); the SLURM job's memory (``SLURM_MEM_PER_NODE``,
    or ``SLURM_MEM_PER_CPU`` × ``SLURM_CPUS_PER_TASK``: what the cgroup allows, whatever the
    node has free; the rule's ``mem_mb`` reaches SLURM as ``--mem``); ``MemAvailable`` of
    ``meminfo`` (a local run: what the machine can give without swapping). :data:`DEFAULT_BYTES`
    where none is known.
    """
    if setting_mb is not None:
        if setting_mb < 1:
            raise ValueError(f"extract.memory_budget_mb must be ≥ 1; got {setting_mb}.")
        return Budget(setting_mb * _MIB, "extract.memory_budget_mb")
    candidates = (
        (cuda_free_bytes, "the GPU's free memory"),
        (slurm_memory_bytes(environ), "the SLURM job's memory"),
        (None if meminfo is None else mem_available_bytes(meminfo), "MemAvailable"),
    )
    for n_bytes, where in candidates:
        if n_bytes is not None and n_bytes > 0:
            return Budget(max(1, int(n_bytes * SHARE)), f"{SHARE:g} × {where}")
    return Budget(DEFAULT_BYTES, "the default (no memory size known)")


def job_budget(setting_mb: int | None, device: str) -> Budget:
    """:func:`derive_budget` with the sources read from this process: CUDA's free memory on
    ``device`` where it is a CUDA device, the environment and ``/proc/meminfo``."""
    cuda_free = None
    if setting_mb is None and str(device).startswith("cuda"):
        import torch

        cuda_free = int(torch.cuda.mem_get_info(device)[0])
    meminfo_path = Path("/proc/meminfo")
    meminfo = meminfo_path.read_text() if meminfo_path.exists() else None
    return derive_budget(setting_mb, cuda_free_bytes=cuda_free, environ=os.environ, meminfo=meminfo)
