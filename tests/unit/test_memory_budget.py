"""The memory budget (method §A.8): its default from the memory the job has, and the generic
Jacobian path cut to stay within it."""

import pytest
import torch
from pydantic import ValidationError

from interaction_basis.config import ExtractConfig
from interaction_basis.lib import budget, jacobians
from interaction_basis.lib.budget import SHARE, derive_budget
from interaction_basis.lib.jacobians import (
    Integration,
    Sources,
    compute_edges_sum,
    compute_m_dash_sum,
)

MIB = 2**20
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"


def _derive(setting=None, cuda=None, environ=None, meminfo=MEMINFO):
    return derive_budget(setting, cuda_free_bytes=cuda, environ=environ or {}, meminfo=meminfo)


def test_the_setting_wins_over_every_source():
    got = _derive(512, cuda=10**10, environ={"SLURM_MEM_PER_NODE": "4000"})
    assert got.n_bytes == 512 * MIB and "memory_budget_mb" in got.source


def test_the_default_is_a_share_of_the_gpu_then_slurm_then_available_memory():
    slurm = {"SLURM_MEM_PER_NODE": "4000"}
    assert _derive(cuda=8 * 2**30, environ=slurm).n_bytes == int(SHARE * 8 * 2**30)
    assert _derive(environ=slurm).n_bytes == int(SHARE * 4000 * MIB)
    per_cpu = {"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "6"}
    assert _derive(environ=per_cpu).n_bytes == int(SHARE * 6000 * MIB)
    got = _derive()
    assert got.n_bytes == int(SHARE * 8000000 * 1024) and "MemAvailable" in got.source
    assert _derive(meminfo=None).n_bytes == budget.DEFAULT_BYTES
    assert _derive(meminfo="MemTotal: 100 kB\n").n_bytes == budget.DEFAULT_BYTES


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="memory_budget_mb"):
        _derive(0)
    with pytest.raises(ValidationError):
        ExtractConfig(memory_budget_mb=0)
    assert ExtractConfig().memory_budget_mb is None


def test_limit_sets_the_budget_within_its_block():
    assert budget.budget_bytes() == budget.DEFAULT_BYTES
    with budget.limit(1234):
        assert budget.budget_bytes() == 1234
    assert budget.budget_bytes() == budget.DEFAULT_BYTES


def _attention_like():
    """A causal softmax mixing over 12 positions (no closed form): its Jacobians carry
    (P, P) intermediates per direction in either mode."""
    gen = torch.Generator().manual_seed(0)
    d, n_pos = 6, 12
    w_q, w_k, w_v = (torch.randn(d, d, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()

    def section(x):
        scores = ((x @ w_q) @ (x @ w_k).transpose(-1, -2)).masked_fill(~mask, float("-inf"))
        return x + scores.softmax(-1) @ (x @ w_v)

    acts = torch.randn(5, n_pos, d, generator=gen, dtype=torch.float64)
    c_in = torch.randn(d, d - 1, generator=gen, dtype=torch.float64)
    c_out = torch.randn(d, d - 2, generator=gen, dtype=torch.float64)
    return section, acts, c_in, torch.linalg.pinv(c_in), c_out


@pytest.mark.parametrize("mode", ["auto", "reverse", "forward"])
def test_the_generic_path_cuts_its_calls_to_the_budget(monkeypatch, mode):
    """A budget below one whole call's bytes cuts samples and directions (more calls of the
    section; each call's measured bytes within the budget where one direction of one sample
    fits) and gives the same sums. At 40 kB one sample's reverse-mode edge weights (12·6·5
    floats × 4) exceed a quarter of it, so that path projects per cotangent instead."""
    section, acts, c_in, c_pinv, c_out = _attention_like()
    calls = {"n": 0}
    planned: list[tuple[float, int]] = []
    plan = jacobians._plan

    def counted(x):
        calls["n"] += 1
        return section(x)

    def recorded(strategy, batch, chunk_bytes, memory=None):
        units, sub = plan(strategy, batch, chunk_bytes, memory)
        if memory is not None:
            planned.append((memory(sub, units), units * sub))
        return units, sub

    monkeypatch.setattr(jacobians, "_plan", recorded)
    results = {}
    for label, n_bytes in (("whole", budget.DEFAULT_BYTES), ("cut", 40_000)):
        calls["n"], planned[:] = 0, []
        kw = dict(integration=Integration("gauss-legendre", 1), mode=mode)
        with budget.limit(n_bytes):
            m_dash = compute_m_dash_sum(counted, acts, c_out, **kw)
            edges = compute_edges_sum(
                counted, acts, c_in, c_pinv, c_out, sources=Sources(n_pos=2),
                generator=torch.Generator().manual_seed(1), **kw,
            )  # fmt: skip
        results[label] = (m_dash, edges, calls["n"])
        if label == "cut":
            for n_call_bytes, size in planned:
                assert n_call_bytes <= n_bytes or size == 1, (n_call_bytes, size)
    (m_whole, e_whole, n_whole), (m_cut, e_cut, n_cut) = results["whole"], results["cut"]
    assert n_cut > n_whole
    for got, want in ((m_cut, m_whole), (e_cut, e_whole)):
        assert float((got - want).abs().max() / want.abs().max()) <= 1e-12


def test_the_stages_budget_comes_from_the_setting_and_is_logged(caplog):
    from interaction_basis.stages.common import memory_budget

    with caplog.at_level("INFO"):
        n_bytes = memory_budget(ExtractConfig(memory_budget_mb=256), torch.device("cpu"))
    assert n_bytes == 256 * MIB
    assert "memory budget: 256 MiB (extract.memory_budget_mb) on cpu" in caplog.text
