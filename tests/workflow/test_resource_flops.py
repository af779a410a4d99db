"""The runtime requests' FLOP per section (``resources.section_flops``) against the FLOP that
``benchmarks/bench_lm_shapes.py`` counts on fake tensors (``torch.utils.flop_counter``, matrix
products, in-place ones included): the three paper shapes with two blocks, a vocabulary of 64
and 16 tokens, one and two position sources and exact sources, one and two samples a call, a
budget small enough to chunk the attention's features and queries, and the unembedding into
``output``. The formulas count every matrix product of the closed forms; they agree to well
under 1 %, and the bound is 2 % so that a closed form whose cost changes fails here until the
formula follows it."""

import sys

import pytest
from smk_helpers import REPO

from interaction_basis import resources as r

pytestmark = pytest.mark.slow

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_lm_shapes as bench  # noqa: E402

REL = 0.02


@pytest.fixture(scope="module", params=["gpt2", "tinystories", "pythia"])
def model(request):
    """The shape's random model with two blocks (block 0 and the head are the sections)."""
    import torch
    from transformers import AutoModelForCausalLM

    from interaction_basis.models.hf import build_hf_sections, hf_node_layers
    from lm_fixtures import randomise_lm

    cfg = bench._hf_config(request.param, 64)
    for key in ("n_layer", "num_layers", "num_hidden_layers"):
        if hasattr(cfg, key):
            setattr(cfg, key, 2)
    torch.manual_seed(0)
    hf = randomise_lm(AutoModelForCausalLM.from_config(cfg), seed=0)
    layers = [*hf_node_layers(hf, "ln"), "output"]
    net = build_hf_sections(hf, layers, fold_value_biases=True)
    shape = r.shape_from_config(hf.config.to_dict())
    return request.param, shape, net


def _plan(shape, net, n_ctx, batch, sources, budget_mb):
    return r.Plan(
        shape=shape, node_layers=tuple(net.node_layers), dtype="float64", batch_size=batch,
        n_ctx=n_ctx, n_samples=batch, n_stats_samples=None, n_shards=1, store_activations=True,
        lib=True, n_methods=1, m_dash_pos=sources, edges_pos=sources,
        memory_budget_mb=budget_mb,
    )  # fmt: skip


@pytest.mark.parametrize(
    "n_ctx, batch, sources, budget_mb",
    [(16, 1, 1, 2048), (16, 2, 2, 2048), (16, 1, None, 2048), (64, 1, 1, 16)],
    ids=["one-source", "two-sources-two-samples", "exact", "chunked"],
)
def test_section_flops_are_what_the_benchmark_counts(model, n_ctx, batch, sources, budget_mb):
    from interaction_basis.lib import budget

    name, shape, net = model
    plan = _plan(shape, net, n_ctx, batch, sources, budget_mb)
    assert plan.widths == [bench._widths(net, n_ctx)[n] for n in net.node_layers]
    run = dict(basis_n_pos=sources, basis_n_hidden=None, edges_n_pos=sources)
    run |= dict(basis_integration=["gradient", 0], edges_integration=["gradient", 0])
    chosen = [*bench._chosen(net.node_layers[:-1], None), len(net.node_layers) - 2]
    checked = 0
    for i in chosen:
        phases = {p: r.pair_section(plan, i, p) for p in ("m_dash", "edges")}
        assert all(s is not None for s in phases.values())
        assert phases["m_dash"].kind == type(net.sections[i]).__name__
        x_shape = (batch, n_ctx, plan.widths[i])
        with budget.limit(budget_mb * 2**20):
            counted = bench._fake_run(net.sections[i], x_shape, plan.widths[i + 1], run)
        for index, phase in enumerate(("m_dash", "edges")):
            if phase not in counted:  # the MLP's exact edges branch on data: not countable
                assert name and phases[phase].kind == "ResidualMLP" and sources is None
                continue
            assert counted[phase]["path"] == phases[phase].kind
            formula = r.section_flops(phases[phase])[index] * batch
            what = f"{name} {net.node_layers[i]} {phase}: {formula:.4g} vs {counted[phase]['flop']}"
            assert formula == pytest.approx(counted[phase]["flop"], rel=REL), what
            checked += 1
    assert checked >= 15


def test_pairs_without_a_closed_form_take_the_generic_formula(model):
    _, shape, net = model
    plan = _plan(shape, net, 16, 1, 1, 2048)
    skipping = r.Plan(**{**plan.__dict__, "node_layers": ("ln1.0", "ln2.0", "ln_final")})
    assert r.pair_section(skipping, 0, "edges") is None
    hidden = r.Plan(**{**plan.__dict__, "m_dash_hidden": 4})
    assert r.pair_section(hidden, 2, "m_dash") is None
    assert r.pair_section(hidden, 2, "edges") is not None
    assert r.stage_flops_per_sample(skipping, "edges") > 0
