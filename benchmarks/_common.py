"""What the benchmark scripts share: fresh child processes, peak memory, the GEMM rate."""

import json
import resource
import statistics
import subprocess
import sys
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(cmd: list[str]) -> dict:
    """Run one measurement in a fresh process; its last stdout line is a JSON object."""
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
