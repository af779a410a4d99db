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
