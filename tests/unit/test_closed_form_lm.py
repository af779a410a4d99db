"""Closed-form M′ and edges of the language-model sections against autograd.

Tiny GPT-2, GPT-Neo (global and local attention) and GPT-NeoX (rotary, parallel residual) models
with random biases and LayerNorm affines (zero biases would hide folding bugs) are cut at every
node layer; each section with a closed form is checked against both generic autograd modes and a
per-coordinate Jacobian loop, for every integration rule and every kind of stochastic source
(with the same draws: the closed forms take the generic path's).

Tolerance: everything runs in float64 on activations and weights of order 1; the forms differ
from autograd only in summation order, so they agree to ~1e-14 relative. 1e-10 leaves four
orders of magnitude for BLAS paths and thread counts, and a wrong term fails by far more.
"""

import pytest
import torch

from interaction_basis.lib.closed_form.causal_attention import CausalAttention
from interaction_basis.lib.closed_form.per_token import PerToken
from interaction_basis.lib.jacobians import (
    ClosedForm,
    Integration,
    Sources,
    _closed_form,
    compute_edges_sum,
    compute_m_dash_sum,
)
from interaction_basis.models.hf import build_hf_sections, hf_node_layers
from lm_fixtures import tiny_lm

F64 = torch.float64
VOCAB, D_MODEL, N_CTX, SEQ, N_SAMPLES = 23, 8, 6, 5, 3
RULES = [
    Integration("gradient", 0),
    Integration("trapezoidal", 2),
    Integration("gauss-legendre", 3),
]
SOURCES = {
    "exact": Sources(),
    "pos": Sources(n_pos=2),
    "hidden": Sources(n_hidden=2),
    "both": Sources(n_pos=2, n_hidden=2),
}


def _model(arch: str):
    return tiny_lm(arch, vocab=VOCAB, d_model=D_MODEL, n_ctx=N_CTX, seed=3)


_CACHE: dict = {}


def _sections(arch: str, kind: str = "ln", final: str = "output"):
    """``[(name, section, activations at its input)]`` for the closed-form sections."""
    key = (arch, kind, final)
    if key not in _CACHE:
        model = _model(arch)
        layers = hf_node_layers(model, kind, final=final)
        sectioned = build_hf_sections(model, layers)
        tokens = torch.randint(
            0, VOCAB, (N_SAMPLES, SEQ), generator=torch.Generator().manual_seed(1)
        )
        with torch.no_grad():
            acts = sectioned.activations(tokens)
        _CACHE[key] = [
            (f"{a}->{b}", section, acts[a])
            for a, b, section in zip(layers, layers[1:], sectioned.sections, strict=False)
            if isinstance(section, ClosedForm)
        ]
    return _CACHE[key]


def _loop_m_dash(section, acts, c_out, rule: Integration) -> torch.Tensor:
    """M′ sum from the full Jacobian of every sample, one output coordinate at a time."""
    alphas, weights = rule.points()
    m = torch.zeros(acts.shape[-1], acts.shape[-1], dtype=F64)
    for x in acts:
        jac = sum(
            w * torch.autograd.functional.jacobian(lambda v: section(v[None])[0] @ c_out, a * x)
            for a, w in zip(alphas, weights, strict=True)
        )  # (p_out, k_out, p_in, d_in)
        for t in range(jac.shape[0]):
            for i in range(jac.shape[1]):
                m += jac[t, i].T @ jac[t, i]
    return m


def _loop_edges(section, acts, c_in, c_pinv, c_out, rule: Integration) -> torch.Tensor:
    """Squared-edge sum from the full Jacobian of every sample (method §A.6)."""
    alphas, weights = rule.points()
    feats = acts @ c_in
    edges = torch.zeros(c_out.shape[1], c_in.shape[1], dtype=F64)
    for f in feats:
        jac = sum(
            w
            * torch.autograd.functional.jacobian(
                lambda g: section((g @ c_pinv)[None])[0] @ c_out, a * f
            )
            for a, w in zip(alphas, weights, strict=True)
        )  # (p_out, k_out, p_in, k_in)
        edges += torch.einsum("tisj,sj->tij", jac, f).square().sum(0)
    return edges


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-10, f"{what}: relative error {err:.1e}"


def _bases(section, acts, seed: int = 4):
    gen = torch.Generator().manual_seed(seed)
    d_in, d_out = acts.shape[-1], section(acts[:1]).shape[-1]
    c_out = torch.randn(d_out, d_out - 1, generator=gen, dtype=F64)
    c_in = torch.randn(d_in, d_in - 2, generator=gen, dtype=F64)
    return c_in, torch.linalg.pinv(c_in), c_out


ARCHS = ("gpt2", "gpt_neo", "gpt_neox")


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.method}-{r.n_intervals}")
@pytest.mark.parametrize("arch", ARCHS)
def test_lm_closed_forms_match_autograd_for_every_source_kind(arch, rule):
    _check_against_autograd(_sections(arch), rule)


def test_mlp_block_closed_form_matches_autograd():
    """The quick subset: GPT-2's MLP block (residual, gelu) at two Gauss-Legendre points,
    against reverse mode."""
    mlp = [s for s in _sections("gpt2") if s[0].startswith("mlp_in.")]
    assert len(mlp) == 1
    _check_against_autograd(mlp, Integration("gauss-legendre", 1), ("reverse",))


def test_layer_norm_sections_match_autograd():
    """The quick subset for the per-token forms: GPT-NeoX's LayerNorm sections (the parallel
    block's dual LayerNorm-in and -out included) and the final ones, against reverse mode."""
    norms = [s for s in _sections("gpt_neox") if s[0].startswith(("ln", "ln_final"))]
    assert len(norms) == 6
    kinds = {"exact": Sources(), "hidden": Sources(n_hidden=2)}
    _check_against_autograd(norms, Integration("trapezoidal", 1), ("reverse",), kinds)


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_closed_form_matches_autograd(arch):
    """The quick subset for attention: GPT-2 (causal), GPT-Neo (global, then local) and
    GPT-NeoX (rotary, parallel: the residual passed on), exact and position sources, against
    reverse mode."""
    attention = [s for s in _sections(arch) if s[0].startswith("attn_in.")]
    assert attention
    rule = Integration("gauss-legendre", 1)
    kinds = {"exact": Sources(), "pos": Sources(n_pos=2)}
    _check_against_autograd(attention, rule, ("reverse",), kinds)


def test_closed_forms_serve_the_source_kinds_they_list():
    """Per-token sections take every kind of stochastic source, attention those over
    positions; the rest, and the explicit modes, run autograd."""
    sections = dict((name.split("->")[0], section) for name, section, _ in _sections("gpt2"))
    per_token, attention = sections["mlp_in.0"], sections["attn_in.0"]
    for kind, sources in SOURCES.items():
        assert _closed_form(per_token, None, sources) is per_token
        want = attention if kind in ("exact", "pos") else None
        assert _closed_form(attention, "auto", sources) is want
        assert _closed_form(attention, "reverse", sources) is None


def _check_against_autograd(
    sections, rule: Integration, modes=("reverse", "forward"), source_kinds=SOURCES
) -> None:
    assert sections
    for name, section, acts in sections:
        c_in, c_pinv, c_out = _bases(section, acts)
        for kind, sources in source_kinds.items():
            what = f"{name} {kind}"
            kw = dict(integration=rule, sources=sources)
            m_dash = compute_m_dash_sum(
                section, acts, c_out, generator=torch.Generator().manual_seed(5), **kw
            )
            for mode in modes:
                want = compute_m_dash_sum(
                    section, acts, c_out, generator=torch.Generator().manual_seed(5),
                    mode=mode, **kw,
                )  # fmt: skip
                _close(m_dash, want, f"M′ {what} vs {mode}")
            if sources.n_hidden is not None:
                continue  # edges take position sources only
            edges = compute_edges_sum(
                section, acts, c_in, c_pinv, c_out, generator=torch.Generator().manual_seed(6),
                **kw,
            )  # fmt: skip
            for mode in modes:
                want = compute_edges_sum(
                    section, acts, c_in, c_pinv, c_out,
                    generator=torch.Generator().manual_seed(6), mode=mode, **kw,
                )  # fmt: skip
                _close(edges, want, f"edges {what} vs {mode}")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_lm_closed_forms_match_a_per_coordinate_loop(arch):
    rule = Integration("gauss-legendre", 1)
    for name, section, acts in _sections(arch):
        c_in, c_pinv, c_out = _bases(section, acts)
        _close(
            compute_m_dash_sum(section, acts, c_out, integration=rule),
            _loop_m_dash(section, acts, c_out, rule),
            f"M′ {name}",
        )
        _close(
            compute_edges_sum(section, acts, c_in, c_pinv, c_out, integration=rule),
            _loop_edges(section, acts, c_in, c_pinv, c_out, rule),
            f"edges {name}",
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_every_single_step_section_has_a_closed_form(arch):
    model = _model(arch)
    layers = hf_node_layers(model, "all", final="output")
    sectioned = build_hf_sections(model, layers)
    for name, section in zip(layers, sectioned.sections, strict=False):
        want = CausalAttention if name.startswith("attn_in.") else PerToken
        assert isinstance(section, want), name
    # Alias steps drop out, chains of per-token steps stay per-token, and a chain through
    # attention and more takes the generic path.
    layers = hf_node_layers(model, "resid", final="output")
    resid = build_hf_sections(model, layers)
    for name, section in zip(layers, resid.sections, strict=False):
        assert isinstance(section, PerToken) == (not name.startswith("resid_pre.")), name
        assert isinstance(section, ClosedForm) == (not name.startswith("resid_pre.")), name


@pytest.mark.parametrize("arch", ARCHS)
def test_value_bias_folding_changes_only_the_constant_inputs_derivative(arch):
    """Folding b_V into b_O (the default, as TransformerLens) leaves every activation as it was
    but changes the attention section's derivative with respect to the constant input: M′
    differs in the constant's row and column only, so only the constant feature's Λ and edges
    move. (The difference is ~1e-3 relative here; rounding is ~1e-15.)"""
    model = _model(arch)
    layers = hf_node_layers(model, "ln")
    folded = build_hf_sections(model, layers)
    kept = build_hf_sections(model, layers, fold_value_biases=False)
    tokens = torch.randint(0, VOCAB, (N_SAMPLES, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts_folded, acts_kept = folded.activations(tokens), kept.activations(tokens)
    for name in layers:
        torch.testing.assert_close(acts_folded[name], acts_kept[name], rtol=1e-12, atol=1e-12)
    attn = layers.index("attn_in.0")
    acts = acts_folded["attn_in.0"]
    m_folded = compute_m_dash_sum(folded.sections[attn], acts, None)
    m_kept = compute_m_dash_sum(kept.sections[attn], acts, None)
    scale = m_kept.abs().max()
    const = D_MODEL  # the constant coordinate of the normalised half of (n, x)
    diff = (m_folded - m_kept).abs()
    assert diff[const].max() > 1e-6 * scale
    others = torch.ones_like(diff, dtype=torch.bool)
    others[const], others[:, const] = False, False
    assert diff[others].max() <= 1e-12 * scale
