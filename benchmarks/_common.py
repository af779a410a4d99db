"""What the benchmark scripts share: fresh child processes, peak memory, the GEMM rate."""

import json
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_mib(field: str) -> float | None:
    try:
        found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS, so that the next
    :func:`phase_peak_rss_mib` is the peak of what runs in between; False where the kernel
    does not allow it (Linux ≥ 4.0: ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def phase_peak_rss_mib() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (the process's peak without one)."""
    value = _status_mib("VmHWM")
    return peak_rss_mib() if value is None else value


def current_rss_mib() -> float | None:
    return _status_mib("VmRSS")


def flop_counter():
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts the in-place matrix
    products (``addmm_``, ``baddbmm_``, ``addbmm_``): torch's counter registers only the
    out-of-place ones, so a Gram accumulated with ``addmm_`` (LayerNormIn's and the MLP's M′)
    would count as free."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten

    def addmm(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]

    def baddbmm(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * a_shape[0] * a_shape[1] * a_shape[2] * b_shape[2]

    mapping = {aten.addmm_: addmm, aten.baddbmm_: baddbmm, aten.addbmm_: baddbmm}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {}


def run_child(cmd: list[str], *, timeout: float | None = None, tolerate: bool = False) -> dict:
    """Run one measurement in a fresh process; its last stdout line is a JSON object.

    A child that fails or runs past ``timeout`` seconds stops the benchmark, or with
    ``tolerate`` gives its last JSON line so far with ``error`` (why it failed) added: a
    child that prints what it knows before the heavy part (e.g. a section killed for memory)
    still reports that."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        if tolerate:
            out = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout
            return {**_last_json(out or ""), "error": f"ran past {timeout:.0f} s (stopped)"}
        raise SystemExit(f"benchmark child ran past {timeout} s: {' '.join(cmd)}") from None
    if done.returncode == 0:
        return json.loads(done.stdout.strip().splitlines()[-1])
    sys.stderr.write(done.stdout + done.stderr if not tolerate else done.stderr[-3000:])
    if not tolerate:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    rc = done.returncode
    why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    if rc == -signal.SIGKILL:
        why += " (out of memory?)"
    elif "allocate memory" in done.stderr or "MemoryError" in done.stderr:
        why += " (out of memory)"
    return {**_last_json(done.stdout), "error": why}


def gemm_rate(n_rows: int, k: int, n: int, reps: int = 9) -> float:
    """Median float64 GEMM rate (GFLOP/s) of ``(n_rows × k) @ (k × n)``."""
    import torch

    a = torch.randn(n_rows, k, dtype=torch.float64)
    b = torch.randn(k, n, dtype=torch.float64)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n_rows * k * n / statistics.median(times) / 1e9


def lm_configs(
    model_dir: str,
    node_layers: list[str],
    *,
    n_ctx: int,
    n_samples: int,
    batch_size: int,
    n_pos: int | None,
    seed: int = 0,
    n_eval_samples: int = 8,
):
    """ModelConfig, ExtractConfig, BasisConfig and EdgesConfig of a language-model benchmark run:
    the local model at ``model_dir`` on random token ids, LIB in float64 (relative τ 1e-10,
    rotated final layer), ``n_pos`` position sources or exact (None)."""
    from interaction_basis.config import (
        BasisConfig,
        EdgesConfig,
        ExtractConfig,
        HubModelConfig,
        ModelConfig,
        SourcesConfig,
        TextDataConfig,
    )

    model = ModelConfig(
        kind="hf",
        hub=HubModelConfig(source=model_dir),
        text=TextDataConfig(
            source="random token ids",
            n_ctx=n_ctx,
            n_samples=n_samples,
            n_eval_samples=n_eval_samples,
            seed=seed,
        ),
    )
    extract = ExtractConfig(
        node_layers=node_layers, dtype="float64", batch_size=batch_size, center=True
    )
    basis = BasisConfig(
        methods=["lib"],
        truncation=1e-10,
        relative=True,
        rotate_final=True,
        sources=SourcesConfig(n_pos=n_pos, n_hidden=None),
        seed=seed,
    )
    return model, extract, basis, EdgesConfig(n_sources_pos=n_pos, seed=seed)
