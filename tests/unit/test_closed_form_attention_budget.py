"""Causal attention's closed form in chunks within the memory budget (method §A.8).

Tiny GPT-2, GPT-Neo (global, then a local window of 3) and GPT-NeoX (rotary on half the head,
parallel block) models with random biases, at 12 tokens, so that query chunks, key ranges that
start after 0 (the local window) and chunks of output features all occur. For every
architecture, integration rule and source kind (exact, over positions):

- the closed form, unchunked (the default budget: one block per call) and chunked (a budget of a
  few kB: one query row and one output feature per block; and a middle budget: several rows),
  agrees with the generic path (reverse mode) to 1e-10 relative, as in
  ``test_closed_form_lm.py`` (float64 everywhere, the forms differ from autograd only in the
  order of sums, ~1e-15);
- chunked equals unchunked within the rounding bound of the reordered sums:
  ``|Δ| ≤ n·eps·scale`` entrywise, ``n`` the (sample, query, key, output feature) terms, the
  scale ``√(M′_jj M′_j′j′)`` for M′ (Cauchy–Schwarz bounds every term ``|ρ_j ρ_j′|`` of the
  Gram's sum by it) and ``max E`` for the edges (their terms are squares of sums whose size
  ``max E`` bounds).

The chunking is counted (blocks per call), so a budget that stops cutting fails the tests.
"""

import pytest
import torch

from interaction_basis.lib import budget, jacobians
from interaction_basis.lib.closed_form.causal_attention import CausalAttention
from interaction_basis.lib.jacobians import (
    Integration,
    Sources,
    compute_edges_sum,
    compute_m_dash_sum,
)
from interaction_basis.models.hf import build_hf_sections, hf_node_layers
from lm_fixtures import tiny_lm

F64 = torch.float64
EPS = torch.finfo(F64).eps
VOCAB, D_MODEL, N_CTX, SEQ, N_SAMPLES = 23, 8, 16, 12, 2
RULES = [
    Integration("gradient", 0),
    Integration("trapezoidal", 2),
    Integration("gauss-legendre", 3),
]
KINDS = {"exact": Sources(), "pos": Sources(n_pos=2)}
ARCHS = ("gpt2", "gpt_neo", "gpt_neox")
#: Budgets in bytes: the smallest chunks (one query row, one output feature) and a middle one
#: (several rows and every feature).
BUDGETS = {"rows": 3_000, "blocks": 150_000}


def _model(arch: str):
    return tiny_lm(arch, vocab=VOCAB, d_model=D_MODEL, n_ctx=N_CTX, seed=7)


_CACHE: dict = {}


def _attention_sections(arch: str):
    """``[(name, section, activations at its input)]`` for the attention sections."""
    if arch not in _CACHE:
        model = _model(arch)
        layers = hf_node_layers(model, "ln", final="output")
        sectioned = build_hf_sections(model, layers)
        tokens = torch.randint(
            0, VOCAB, (N_SAMPLES, SEQ), generator=torch.Generator().manual_seed(2)
        )
        with torch.no_grad():
            acts = sectioned.activations(tokens)
        _CACHE[arch] = [
            (name, section, acts[name])
            for name, section in zip(layers, sectioned.sections, strict=False)
            if isinstance(section, CausalAttention)
        ]
        assert _CACHE[arch]
    return _CACHE[arch]


def _bases(section, acts):
    gen = torch.Generator().manual_seed(4)
    d_in, d_out = acts.shape[-1], section(acts[:1]).shape[-1]
    c_out = torch.randn(d_out, d_out - 1, generator=gen, dtype=F64)
    c_in = torch.randn(d_in, d_in - 2, generator=gen, dtype=F64)
    return c_in, torch.linalg.pinv(c_in), c_out


@pytest.fixture
def blocks(monkeypatch):
    """Counts the blocks (query chunk × output-feature chunk × sample chunk) computed."""
    count = {"n": 0}
    block = CausalAttention._block

    def counted(self, *args, **kwargs):
        count["n"] += 1
        return block(self, *args, **kwargs)

    monkeypatch.setattr(CausalAttention, "_block", counted)
    return count


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-10, f"{what}: relative error {err:.1e}"


def _within_rounding(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor, n: int, what):
    ratio = float(((got - want).abs() / (n * EPS * scale)).max())
    assert ratio <= 1.0, f"{what}: {ratio:.2g} × the rounding bound"


def _closed(section, acts, c_in, c_pinv, c_out, rule, sources, n_bytes, blocks):
    """M′ and edge sums of the closed form under a budget, and the blocks each took."""
    with budget.limit(n_bytes):
        blocks["n"] = 0
        m_dash = compute_m_dash_sum(
            section, acts, c_out, integration=rule, sources=sources,
            generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        m_blocks, blocks["n"] = blocks["n"], 0
        edges = compute_edges_sum(
            section, acts, c_in, c_pinv, c_out, integration=rule, sources=sources,
            generator=torch.Generator().manual_seed(6),
        )  # fmt: skip
        return m_dash, edges, m_blocks, blocks["n"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.method}-{r.n_intervals}")
@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_attention_matches_autograd_and_the_unchunked_form(arch, rule, kind, blocks):
    sources = KINDS[kind]
    for name, section, acts in _attention_sections(arch):
        c_in, c_pinv, c_out = _bases(section, acts)
        args = (section, acts, c_in, c_pinv, c_out, rule, sources)
        m_dash, edges, m_blocks, e_blocks = _closed(*args, budget.DEFAULT_BYTES, blocks)
        assert (m_blocks, e_blocks) == (1, 1), "the default budget takes each call whole"
        want_m = compute_m_dash_sum(
            section, acts, c_out, integration=rule, sources=sources,
            generator=torch.Generator().manual_seed(5), mode="reverse",
        )  # fmt: skip
        want_e = compute_edges_sum(
            section, acts, c_in, c_pinv, c_out, integration=rule, sources=sources,
            generator=torch.Generator().manual_seed(6), mode="reverse",
        )  # fmt: skip
        _close(m_dash, want_m, f"{name} M′ unchunked")
        _close(edges, want_e, f"{name} edges unchunked")
        k_out = c_out.shape[1]
        n_terms = N_SAMPLES * SEQ * SEQ * k_out * (sources.n_pos or 1)
        diag = m_dash.diagonal().abs()
        m_scale = (diag[:, None] * diag[None, :]).sqrt()
        for label, n_bytes in BUDGETS.items():
            got_m, got_e, m_blocks, e_blocks = _closed(*args, n_bytes, blocks)
            assert m_blocks > 1 and e_blocks > 1, f"{label}: the budget must cut the calls"
            if label == "rows":  # a few query rows and one output feature per block
                assert m_blocks > N_SAMPLES * k_out
            what = f"{name} {label}"
            _close(got_m, want_m, f"{what} M′")
            _close(got_e, want_e, f"{what} edges")
            _within_rounding(got_m, m_dash, m_scale, n_terms, f"{what} M′ vs unchunked")
            _within_rounding(got_e, edges, edges.abs().max(), n_terms, f"{what} edges")


def test_local_window_blocks_see_only_their_keys():
    """GPT-Neo's local layer (window 3): a query chunk's keys start at its first row's window,
    so a chunk costs its window, not the whole prefix."""
    _, local, acts = _attention_sections("gpt_neo")[1]
    with budget.limit(BUDGETS["rows"]):
        plan = local._plan(N_SAMPLES, SEQ, 4)
    assert plan.features == 1 and plan.samples == 1
    starts = [t0 for t0, *_ in plan.queries]
    stops = [t1 for _, t1, *_ in plan.queries]
    assert starts == [0, *stops[:-1]] and stops[-1] == SEQ and len(starts) > SEQ // 2
    for t0, t1, s0, s1 in plan.queries:
        assert (s0, s1) == (max(0, t0 - 2), t1), (t0, t1, s0, s1)
    assert max(s0 for *_, s0, _ in plan.queries) > 0


def test_attention_takes_the_closed_form_at_long_context(monkeypatch, blocks):
    """At 2304 tokens one sample's pair terms (1.3e8 floats) exceed the old cap of 2 GiB per
    sample, which sent attention to the generic path; within a 64 MiB budget the closed form
    now serves it in query chunks. The generic path is made to fail, so taking it fails the
    test at once."""
    n_pos, d, heads = 2304, 8, 2
    gen = torch.Generator().manual_seed(0)

    def weights(*shape):
        return 0.3 * torch.randn(*shape, generator=gen, dtype=F64)

    dn = d + 1
    w_q, w_k, w_v, w_o = weights(dn, d), weights(dn, d), weights(dn, d), weights(d, d)
    mask = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    scale = (d // heads) ** -0.5

    def attention(n):  # only called by the generic path
        raise AssertionError("the generic path ran")

    section = CausalAttention(attention, w_q, w_k, w_v, w_o, mask, scale, heads)
    acts = torch.randn(1, n_pos, dn + d, generator=gen, dtype=F64)
    monkeypatch.setattr(jacobians, "_out_shape", attention)
    with budget.limit(64 * 2**20):
        m_dash = compute_m_dash_sum(section, acts, None)
    assert m_dash.shape == (dn + d, dn + d) and torch.isfinite(m_dash).all()
    assert blocks["n"] > 1
