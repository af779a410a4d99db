"""The GPU path in full: the tiny GPT-2 and the toy induction LM through every model-running
stage on CUDA, compared with the CPU path. Skipped where torch sees no GPU; the CPU-only
checks of the same code (every tensor moved, products on the device) are
tests/integration/test_device_path.py.

Each GPU stage reads the CPU run's inputs (activations, bases, edges), so that a difference
is that stage's own arithmetic. Both runs sum in float64 with compensated sums
(``lib/summation.py``), exact to about n·2⁻¹⁰⁶, so the order of the additions adds nothing; what
differs is the rounding of each batch's float64 products (GPU kernels block and fuse
differently): about 2⁻⁵³ ≈ 1.1e-16 times the contraction length (at most a few hundred here)
per product, compounded over the model's sections. :data:`TOL`, relative to the largest
magnitude of each array, leaves three orders of magnitude above that.

Run with ``python -m pytest tests/gpu -s`` to see the timings of each stage on both devices.
"""

import time

import numpy as np
import pytest
import torch

import lm_stages
from interaction_basis import storage

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA GPU (torch.cuda.is_available() is False): the GPU path runs only on a "
        "GPU machine; tests/integration/test_device_path.py checks it on the CPU",
    ),
]

#: Agreement of the two devices, relative to each array's largest magnitude (see above).
TOL = 1e-9
#: Bases are eigenvectors of slightly different M′: compared as the projection they define
#: (``C C⁺``, the same for any rotation within a degenerate eigenspace), whose error is M′'s
#: relative to the gap at the truncation (kept eigenvalues against null directions).
BASIS_TOL = 1e-6

LMS = {
    "tiny-gpt2": lambda root: lm_stages.write_gpt2(root, n_layer=2, n_ctx=12),
    "induction-lm": lm_stages.write_induction_lm,
}


def _timed(run) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - start


@pytest.fixture(scope="module", params=list(LMS))
def cpu_run(request, tmp_path_factory):
    """One LM, every stage run on the CPU (timed), and where the GPU run writes."""
    root = tmp_path_factory.mktemp(request.param)
    lm = LMS[request.param](root)
    cpu = lm_stages.paths(root / "cpu")
    settings = lm_stages.settings(lm, "cpu")
    torch.cuda.init()  # CUDA's start-up is no stage's time
    seconds = {
        name: _timed(lambda s=stage: s(lm, settings, cpu, cpu)) for name, stage in lm_stages.STAGES
    }
    return request.param, lm, cpu, lm_stages.paths(root / "gpu"), seconds


def _close(key: str, cpu, gpu) -> None:
    cpu, gpu = torch.as_tensor(cpu), torch.as_tensor(gpu)
    assert gpu.device.type == "cpu", f"{key}: stored from the GPU without .cpu()"
    scale = float(cpu.abs().max()) if cpu.numel() else 0.0
    torch.testing.assert_close(
        gpu, cpu, rtol=TOL, atol=TOL * max(scale, 1e-300), msg=lambda m: f"{key}: {m}"
    )


def _compare(stage: str, cpu: dict, gpu: dict) -> None:
    assert cpu.keys() == gpu.keys()
    for key, want in cpu.items():
        have = gpu[key]
        if stage == "ablations":
            _compare_ablation(key, want, have)
        elif key.startswith(("lib/C/", "pca/C/")) or "top_sample" in key:
            continue  # bases: see test_bases_on_gpu_span_the_cpu_bases; ranks: exact below
        else:
            _close(key, want, have)
    for key in [k for k in cpu if "top_sample" in k]:
        np.testing.assert_array_equal(gpu[key], cpu[key], err_msg=key)


def _compare_ablation(key: str, cpu: dict, gpu: dict) -> None:
    if key == "node_ablation":
        _close("base_score", cpu["base_score"], gpu["base_score"])
        for layer, want in cpu["layers"].items():
            assert gpu["layers"][layer]["kept"] == want["kept"]
            _close(f"node {layer}", want["score"], gpu["layers"][layer]["score"])
        return
    for pair, want in cpu["pairs"].items():
        have = gpu["pairs"][pair]
        # A bisection decision flips only for a score within rounding of base + delta.
        assert have["n_edges_required"] == want["n_edges_required"], pair
        _close(f"edge {pair}", want["score"], have["score"])


@pytest.mark.parametrize("stage", [name for name, _ in lm_stages.STAGES])
def test_stage_on_gpu_matches_the_cpu(cpu_run, stage):
    name, lm, cpu, gpu, cpu_seconds = cpu_run
    run = dict(lm_stages.STAGES)[stage]
    torch.cuda.reset_peak_memory_stats()
    seconds = _timed(lambda: run(lm, lm_stages.settings(lm, "cuda"), gpu, cpu))
    peak = torch.cuda.max_memory_allocated()
    assert peak > 0, f"{stage}: nothing was allocated on the GPU"
    print(
        f"\n{name} {stage}: CPU {cpu_seconds[stage]:.2f} s, GPU {seconds:.2f} s "
        f"({torch.cuda.get_device_name()}), peak GPU memory {peak / 2**20:.1f} MiB"
    )
    read = lm_stages.READERS[stage]
    _compare(stage, read(cpu), read(gpu))


def test_bases_on_gpu_span_the_cpu_bases(cpu_run):
    """The bases fitted from the GPU's M′ keep as many directions, spanning the same space."""
    _, lm, cpu, gpu, _ = cpu_run
    if not gpu.basis["lib"].exists():
        dict(lm_stages.STAGES)["bases"](lm, lm_stages.settings(lm, "cuda"), gpu, cpu)
    for method in ("lib", "pca"):
        want, have = storage.read_bases(cpu.basis[method]), storage.read_bases(gpu.basis[method])
        for layer, b in want.items():
            assert have[layer].C.shape == b.C.shape, f"{method} {layer}"
            _close(f"{method} {layer} importance", b.importance, have[layer].importance)
            projector = b.C @ b.C_pinv
            torch.testing.assert_close(
                have[layer].C @ have[layer].C_pinv,
                projector,
                rtol=BASIS_TOL,
                atol=BASIS_TOL * float(projector.abs().max()),
                msg=lambda m, k=f"{method} {layer}": f"{k}: {m}",
            )
