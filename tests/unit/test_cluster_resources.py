"""The cluster stages' memory and runtime requests for a language model (resources.py's
interaction-graph formulas), against the graph the stage builds and the benchmark's figures;
and the explorer's memory."""

import itertools

import numpy as np
import pytest
from test_resources import _plan

from interaction_basis import resources as r
from interaction_basis.graph.clustering import build_interaction_graph


def test_graph_edges_bound_the_graph_the_stage_builds():
    # A two-block model: every feature pair of consecutive graph layers (the node layers but
    # the last) is an edge when every E is positive and the constant nodes keep theirs.
    shape = r.shape_from_config({"n_layer": 2, "n_embd": 6, "n_head": 2, "vocab_size": 11})
    plan = _plan(shape=shape)
    names, widths = list(plan.node_layers), plan.widths
    edges = {
        (a, b): np.ones((wb, wa)) for (a, wa), (b, wb) in itertools.pairwise(zip(names, widths))
    }
    full = build_interaction_graph(edges, names[:-1], edge_norm="sqrt", exclude_constant=False)
    assert full.ecount() == r.graph_edges(plan)
    assert full.vcount() == sum(widths[:-1])
    usual = build_interaction_graph(edges, names[:-1], edge_norm="sqrt")
    assert usual.ecount() < r.graph_edges(plan)


#: benchmarks/bench_clustering.py on the random-weight GPT-2's LIB graph (config/gpt2.yaml at
#: n_ctx 32, 2 samples; ε from its edge ablation): (implementation, graph edges, peak RSS, and
#: the peak's growth per edge from the edges' read to the end of Leiden).
MEASURED = [
    ("igraph", 15_562_467, 2.78 * 2**30, 156),
    ("leidenalg", 11_747_136, 2.57 * 2**30, 186),
]


@pytest.mark.parametrize(("implementation", "n_edges", "peak", "per_edge"), MEASURED)
def test_gpt2_cluster_memory_covers_the_measured_peak(implementation, n_edges, peak, per_edge):
    """The request bounds the graph by every feature pair; at the graph's real edge count the
    formula must cover the measured peak, and the bound must hold at least that many edges."""
    assert r.GRAPH_EDGE_BYTES >= per_edge
    plan = _plan()
    assert r.graph_edges(plan) == pytest.approx(71.6e6, rel=0.01)
    assert r.graph_edges(plan) >= n_edges
    store = 8 * sum(a * b for a, b in itertools.pairwise(plan.widths))
    assert r.RUNTIME_OVERHEAD_BYTES + store + r.GRAPH_EDGE_BYTES * n_edges >= peak
    assert r.cluster_memory_bytes(plan) < 20e9  # the worst case: every edge kept


def test_cluster_runtime_follows_the_implementation_and_the_runs():
    plan = _plan()

    def minutes(impl, iterations=10, runs=2):
        return r.cluster_minutes(plan, implementation=impl, n_iterations=iterations, n_runs=runs)

    assert minutes("igraph") < minutes("leidenalg")
    assert minutes("leidenalg", runs=1) < minutes("leidenalg", runs=2)
    assert minutes("leidenalg", iterations=-1) == minutes("leidenalg", iterations=10)
    seconds = (
        r.RUNTIME_MARGIN
        * r.graph_edges(plan)
        * (r.GRAPH_BUILD_SECONDS_PER_EDGE + 2 * 10 * r.LEIDEN_SECONDS_PER_EDGE["leidenalg"])
    )
    assert minutes("leidenalg") == pytest.approx(seconds / 60 + r.STARTUP_MINUTES, abs=1)


def test_gpt2_explorer_memory_covers_the_measured_peaks():
    """build_explorer peaked at 8.5 GB on bench_explorer.py's GPT-2 store at full widths (152,312
    cards, two methods) and at 4.05 GB on the random GPT-2's run (n_ctx 32, 101,993 cards):
    the request (bases as wide as the layers) must cover both, and count one card per
    feature of every node layer and method."""
    plan = _plan()
    assert plan.n_methods * sum(plan.widths) == 152_312
    assert r.explorer_memory_bytes(plan) >= 8.5e9
    one = r.explorer_memory_bytes(_plan()) - r.explorer_memory_bytes(
        r.Plan(**{**_plan().__dict__, "n_methods": 1})
    )
    assert one == pytest.approx((r.explorer_memory_bytes(plan) - r.RUNTIME_OVERHEAD_BYTES) / 2)
