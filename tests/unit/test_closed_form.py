"""Closed-form M′ and edges (mod-add blocks, MLP layers) against the generic autograd paths.

``test_oracle.py`` checks the whole tiny transformer build (closed forms) against a plain
per-coordinate autograd loop; here each section is checked on its own, in more shapes (more
positions and heads, other activations, no residual, raw outputs), against both generic modes,
which in turn are what language models use.
"""

import math

import pytest
import torch

from factories import tiny_modadd
from interaction_basis.lib.closed_form.attention import LastPositionAttention
from interaction_basis.lib.closed_form.mlp import (
    ElementwiseMLP,
    Linear,
    _binary_blocks,
    _dense_blocks,
)
from interaction_basis.lib.jacobians import (
    ClosedForm,
    Integration,
    Sources,
    compute_edges_sum,
    compute_m_dash_sum,
)
from interaction_basis.models.mlp import MLP, build_mlp_sections

RULES = [
    Integration("gradient", 0),
    Integration("trapezoidal", 2),
    Integration("gauss-legendre", 3),
]
F64 = torch.float64


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64) * scale


def _with_constant(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], -1)


def _attention(n_heads: int = 3, d_head: int = 4, d: int = 7, n_pos: int = 4):
    gen = torch.Generator().manual_seed(1)
    s = 1 / math.sqrt(d)
    section = LastPositionAttention(
        _randn(gen, d, n_heads * d_head, scale=2 * s),  # sharp patterns: large pattern terms
        _randn(gen, d, n_heads * d_head, scale=2 * s),
        _randn(gen, d, n_heads * (d_head + 1), scale=s),
        _randn(gen, n_heads * (d_head + 1), d, scale=s),
        n_heads,
    )
    return section, _with_constant(_randn(gen, 11, n_pos, d - 1))


def _mlp(activation, residual: bool, d: int = 6, hidden: int = 9):
    gen = torch.Generator().manual_seed(2)
    w_out = _randn(gen, hidden, d if residual else 5)
    section = ElementwiseMLP(_randn(gen, d, hidden), w_out, activation, residual=residual)
    return section, _with_constant(_randn(gen, 13, 2, d - 1))


def _linear():
    gen = torch.Generator().manual_seed(3)
    return Linear(_randn(gen, 6, 4)), _with_constant(_randn(gen, 9, 2, 5))


def _modadd(idx: int):
    """A section of the tiny mod-add model and its own activations at the section's input."""
    model, tokens = tiny_modadd()
    with torch.no_grad():
        acts = model.activations(tokens)[model.node_layers[idx]]
    return model.sections[idx], acts


def _mlp_model(activation: str, idx: int):
    """A section of a bias-folded MLP model (``build_mlp_sections``) and its activations."""
    state = MLP(6, [8, 7], 4, activation=activation, seed=6).state_arrays()
    model = build_mlp_sections(state, activation=activation)
    inputs = torch.randn(15, 6, generator=torch.Generator().manual_seed(7), dtype=F64)
    with torch.no_grad():
        acts = model.activations(inputs)[model.node_layers[idx]]
    return model.sections[idx], acts


SECTIONS = {
    "modadd-attention": lambda: _modadd(0),
    "modadd-mlp": lambda: _modadd(1),
    "attention-4pos-3heads": _attention,
    "mlp-gelu-no-residual": lambda: _mlp(torch.nn.functional.gelu, residual=False),
    "mlp-relu": lambda: _mlp(torch.relu, residual=True),
    "linear": _linear,
    "mlp-model-relu-layer": lambda: _mlp_model("relu", 1),
    "mlp-model-tanh-layer": lambda: _mlp_model("tanh", 0),  # the constant bypasses tanh
    "mlp-model-gelu-output": lambda: _mlp_model("gelu", 2),
}


def _section_and_acts(name: str):
    return SECTIONS[name]()


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-10 * want.abs().max(), (got - want).abs().max()


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.method}-{r.n_intervals}")
@pytest.mark.parametrize("rotated", [True, False], ids=["c_out", "raw-outputs"])
@pytest.mark.parametrize("name", list(SECTIONS))
def test_closed_form_matches_both_autograd_modes(name, rotated, rule):
    section, acts = _section_and_acts(name)
    assert isinstance(section, ClosedForm)
    gen = torch.Generator().manual_seed(4)
    d_in, d_out = acts.shape[-1], section(acts[:1]).shape[-1]
    c_out = _randn(gen, d_out, d_out - 1) if rotated else None
    c_in = _randn(gen, d_in, d_in - 2)
    c_pinv = torch.linalg.pinv(c_in)

    m_dash = compute_m_dash_sum(section, acts, c_out, integration=rule)
    edges = compute_edges_sum(section, acts, c_in, c_pinv, c_out, integration=rule)
    assert m_dash.dtype == edges.dtype == F64
    for mode in ("reverse", "forward"):
        _close(m_dash, compute_m_dash_sum(section, acts, c_out, integration=rule, mode=mode))
        _close(
            edges,
            compute_edges_sum(section, acts, c_in, c_pinv, c_out, integration=rule, mode=mode),
        )


def test_closed_form_runs_only_for_auto_mode_and_exact_sources(monkeypatch):
    section, acts = _section_and_acts("modadd-mlp")
    calls = []
    original = ElementwiseMLP.compute_m_dash_sum

    def spy(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(ElementwiseMLP, "compute_m_dash_sum", spy)
    compute_m_dash_sum(section, acts, None)
    assert len(calls) == 1
    compute_m_dash_sum(section, acts, None, mode="reverse")
    compute_m_dash_sum(
        section, acts, None, sources=Sources(n_hidden=2), generator=torch.Generator()
    )
    assert len(calls) == 1  # autograd both times


def test_single_step_sections_keep_their_closed_form():
    model, _ = tiny_modadd()
    assert [isinstance(s, ClosedForm) for s in model.sections] == [True, True, True]
    state = MLP(6, [8, 7], 4).state_arrays()
    mlp = build_mlp_sections(state, node_layers=["layers.0", "layers.2", "output"])
    assert [isinstance(s, ClosedForm) for s in mlp.sections] == [False, True]


def test_residual_mlp_rejects_a_shape_changing_residual():
    with pytest.raises(ValueError, match="residual MLP maps d to d"):
        ElementwiseMLP(torch.zeros(4, 3), torch.zeros(3, 5), residual=True)


def test_binary_slopes_take_the_shorter_neuron_sum():
    """0/1 slopes sum over the active neurons or subtract the inactive ones, whichever is
    fewer: every row (none, few, most, all active) equals the dense product."""
    gen = torch.Generator().manual_seed(5)
    hidden = 10
    slopes = (torch.rand(37, hidden, generator=gen) < torch.linspace(0, 1, 37)[:, None]).to(F64)
    slopes[0], slopes[-1] = 0.0, 1.0
    args = (slopes, _randn(gen, 4, hidden), _randn(gen, hidden, 3), _randn(gen, 4, 3))
    want = torch.cat([a for _, a in _dense_blocks(*args)])
    got = torch.zeros_like(want)
    for rows, a in _binary_blocks(*args):
        got[rows] = a
    counts = slopes.sum(1)
    assert (counts <= hidden // 2).any() and (counts > hidden // 2).any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_binary_slopes_with_a_block_of_rows_without_neurons_to_sum(value):
    """Rows with every neuron inactive (or every one active, summed as the full product) fill
    whole blocks of rows with nothing to sum: they give ``base`` (or ``base + w p``)."""
    gen = torch.Generator().manual_seed(6)
    slopes = torch.full((40, 6), value, dtype=F64)
    args = (slopes, _randn(gen, 4, 6), _randn(gen, 6, 3), _randn(gen, 4, 3))
    want = torch.cat([a for _, a in _dense_blocks(*args)])
    got = torch.zeros_like(want)
    for rows, a in _binary_blocks(*args):
        got[rows] = a
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
