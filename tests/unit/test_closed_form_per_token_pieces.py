"""The per-token closed forms built from their pieces, over blocks of tokens within the memory
budget (method §A.6, per-token sections): LayerNorm-in (GPT-NeoX's dual form included),
LayerNorm-out, the residual MLP, the unembedding and chains of them.

Every section that maps positions on their own, on tiny GPT-2, GPT-Neo and GPT-NeoX models with
random biases and LayerNorm affines, is checked for M′ and the edges, exact and position
sources, every integration rule:

- against the generic autograd path (reverse mode, the same draws) to 1e-10 relative, unchunked
  (the default budget: whole samples in one block) and chunked (the budget forced down to runs
  of three positions, and to one position);
- chunked against unchunked within the float64 summation bound (see :func:`_within_sum_bound`).

The chunking is asserted, not assumed: a spy on :func:`token_blocks` records every block that
the forms plan. Separately, the largest tensor that an edge call allocates is bounded by the
budget, whatever the context length (the rows of every token, the previous implementation,
grew as ``P · d_in · d_out``).
"""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from interaction_basis.lib import budget
from interaction_basis.lib.closed_form import common
from interaction_basis.lib.closed_form.layernorm import LayerNormIn, LayerNormOut
from interaction_basis.lib.closed_form.per_token import PerToken, ResidualMLP
from interaction_basis.lib.jacobians import (
    Integration,
    Sources,
    _draw_sources,
    compute_edges_sum,
    compute_m_dash_sum,
)
from interaction_basis.models.hf import build_hf_sections, hf_node_layers
from lm_fixtures import tiny_lm

F64 = torch.float64
EPS = torch.finfo(F64).eps
VOCAB, D_MODEL, N_CTX, SEQ, N_SAMPLES = 23, 8, 8, 7, 2
RULES = [
    Integration("gradient", 0),
    Integration("trapezoidal", 2),
    Integration("gauss-legendre", 3),
]
SOURCES = {"exact": Sources(), "pos": Sources(n_pos=2)}
ARCHS = ("gpt2", "gpt_neo", "gpt_neox")


def _model(arch: str):
    return tiny_lm(arch, vocab=VOCAB, d_model=D_MODEL, n_ctx=N_CTX, seed=7, neo_local=False)


_CACHE: dict = {}


def _per_token_sections(arch: str):
    """``[(name, section, activations at its input)]``: every per-token section of the
    LayerNorm-split cut (the paper's, up to the logits) and the chains of the residual cut."""
    if arch not in _CACHE:
        model = _model(arch)
        tokens = torch.randint(
            0, VOCAB, (N_SAMPLES, SEQ), generator=torch.Generator().manual_seed(2)
        )
        found = []
        for kind in ("ln", "resid"):
            layers = hf_node_layers(model, kind, final="output")
            sectioned = build_hf_sections(model, layers)
            with torch.no_grad():
                acts = sectioned.activations(tokens)
            found += [
                (f"{a}->{b}", section, acts[a])
                for a, b, section in zip(layers, layers[1:], sectioned.sections, strict=False)
                if isinstance(section, PerToken) and (kind == "ln" or type(section) is PerToken)
            ]
        _CACHE[arch] = found
    return _CACHE[arch]


def test_the_sections_cover_every_per_token_form():
    """The cuts hold every per-token form: LayerNorm-in and -out, the dual LayerNorm-in, the
    MLP block, the unembedding and chains (generic ``PerToken``)."""
    kinds = {(type(s).__name__, getattr(s, "x_start", 0) > 0) for a in ARCHS for _, s, _ in
             _per_token_sections(a)}  # fmt: skip
    assert {
        ("LayerNormIn", False),
        ("LayerNormIn", True),
        ("LayerNormOut", False),
        ("ResidualMLP", False),
        ("PerToken", False),
    } <= kinds
    neox = dict((n, s) for n, s, _ in _per_token_sections("gpt_neox"))
    assert isinstance(neox["ln2.0->ln2_out.0"], LayerNormIn)


class _Planned:
    """A spy on :func:`token_blocks`: every plan with its arguments and the budget it saw."""

    def __init__(self, monkeypatch):
        self.plans: list[tuple[tuple, int, list]] = []
        real = common.token_blocks

        def spy(*args, **kwargs):
            blocks = real(*args, **kwargs)
            self.plans.append((args, budget.budget_bytes(), blocks))
            return blocks

        for module in ("per_token", "layernorm"):
            monkeypatch.setattr(f"interaction_basis.lib.closed_form.{module}.token_blocks", spy)

    def chunked(self) -> bool:
        """Some plan splits a sample into runs of positions."""
        return any(b.t1 - b.t0 < args[1] for args, _, blocks in self.plans for b in blocks)


def _both(section, acts, c_in, c_pinv, c_out, rule, sources, mode=None):
    kw = dict(integration=rule, sources=sources, mode=mode)
    m = compute_m_dash_sum(section, acts, c_out, generator=torch.Generator().manual_seed(5), **kw)
    e = compute_edges_sum(
        section, acts, c_in, c_pinv, c_out, generator=torch.Generator().manual_seed(6), **kw
    )
    return m, e


def _bases(section, acts):
    gen = torch.Generator().manual_seed(4)
    d_in, d_out = acts.shape[-1], section(acts[:1]).shape[-1]
    c_out = torch.randn(d_out, d_out - 1, generator=gen, dtype=F64)
    c_in = torch.randn(d_in, d_in - 2, generator=gen, dtype=F64)
    return c_in, torch.linalg.pinv(c_in), c_out


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    err = float((got - want).abs().max() / want.abs().max())
    assert err <= 1e-10, f"{what}: relative error {err:.1e}"


def _within_sum_bound(got: torch.Tensor, want: torch.Tensor, n_terms: int, what: str) -> None:
    """Chunking only regroups the sums over tokens; recursive float64 summation of ``n`` terms
    errs by at most ``γ_n = n u / (1 - n u)`` times the sum of their magnitudes (Higham,
    Accuracy and Stability, §4.2), which we bound by ``64 · max |result|`` (the per-token
    terms and the pieces that combine them are of the result's order here; a sign error or a
    lost block is off by the result itself)."""
    u = EPS / 2
    n = n_terms + 16  # the pieces' own products add a few roundings per term
    bound = n * u / (1 - n * u) * 64 * float(want.abs().max())
    err = float((got - want).abs().max())
    assert err <= bound, f"{what}: chunked differs by {err:.1e} > bound {bound:.1e}"


def _block_bytes(token: int, sample: int = 0, fixed: int = 0, *, n_tokens: int) -> int:
    """The working set of a block of one sample and ``n_tokens`` positions (``token_blocks``)."""
    return fixed + sample + n_tokens * token


def _check_section(name, section, acts, rule, monkeypatch) -> None:
    c_in, c_pinv, c_out = _bases(section, acts)
    n_tokens = acts.shape[0] * acts.shape[1]
    for kind, sources in SOURCES.items():
        what = f"{name} {kind} {rule.method}"
        want = _both(section, acts, c_in, c_pinv, c_out, rule, sources, mode="reverse")
        spy = _Planned(monkeypatch)
        whole = _both(section, acts, c_in, c_pinv, c_out, rule, sources)
        assert spy.plans and not spy.chunked(), f"{what}: the default budget chunks"
        # One position per block, then runs of about three: what the plans at one position
        # need (the fixed part of a block at its smallest) for three.
        limits, planned = [1], []
        while limits:
            limit = limits.pop(0)
            spy = _Planned(monkeypatch)
            with budget.limit(limit):
                chunked = _both(section, acts, c_in, c_pinv, c_out, rule, sources)
            assert spy.chunked(), f"{what}: a budget of {limit} B does not chunk"
            if not planned:
                planned = [_block_bytes(*args[2:], n_tokens=3) for args, _, _ in spy.plans]
                limits.append(max(planned))
            for label, got, unchunked, ref in zip(("M′", "edges"), chunked, whole, want):
                _close(unchunked, ref, f"{label} {what} unchunked vs reverse")
                _close(got, ref, f"{label} {what} chunked ({limit} B) vs reverse")
                _within_sum_bound(got, unchunked, n_tokens, f"{label} {what} ({limit} B)")


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.method)
@pytest.mark.parametrize("arch", ARCHS)
def test_per_token_pieces_match_autograd_chunked_and_not(arch, rule, monkeypatch):
    for name, section, acts in _per_token_sections(arch):
        _check_section(name, section, acts, rule, monkeypatch)


def test_dual_layer_norm_in_matches_autograd(monkeypatch):
    """The quick subset: GPT-NeoX's dual LayerNorm-in, two Gauss-Legendre points."""
    (name, section, acts), *_ = [
        s for s in _per_token_sections("gpt_neox") if s[0] == "ln2.0->ln2_out.0"
    ]
    _check_section(name, section, acts, Integration("gauss-legendre", 1), monkeypatch)


# --- the working set -------------------------------------------------------------------------


class _Largest(TorchDispatchMode):
    """The largest tensor an op returns (bytes), inputs passed through (views) excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor) and o._base is None:
                self.largest = max(self.largest, o.numel() * o.element_size())
        return out


def _layer_norm_sections(d: int):
    """A plain LayerNorm-in, LayerNorm-out (passing the residual on), GPT-NeoX's dual
    LayerNorm-in, a GELU MLP block and a generic per-token chain, on ``d``-wide residuals
    (the constant last)."""
    big = d + 1

    def var(x):
        r = x[..., :d]
        return (r - r.mean(-1, keepdim=True)).square().mean(-1, keepdim=True)

    def ln_in(x):
        return torch.cat([var(x), x], -1)

    def ln_out(h):
        x = h[..., 1:]
        r = x[..., :d]
        n = (r - r.mean(-1, keepdim=True)) / torch.sqrt(torch.relu(h[..., :1]) + 1e-5)
        return torch.cat([n, x[..., d:], x], -1)

    def dual_in(h):
        return torch.cat([var(h[..., big:]), h[..., big:], h[..., :big]], -1)

    gen = torch.Generator().manual_seed(3)
    w_in = torch.randn(big, 2 * d, generator=gen, dtype=F64) / math.sqrt(d)
    w_out = torch.randn(2 * d, big, generator=gen, dtype=F64) / math.sqrt(d)
    norm_in = LayerNormIn(ln_in, d)
    norm_out = LayerNormOut(ln_out, d, 1e-5, passthrough=1)
    return {
        "ln_in": (norm_in, big),
        "ln_out": (norm_out, big + 1),
        "dual_ln_in": (LayerNormIn(dual_in, d, x_start=big), 2 * big),
        "mlp": (ResidualMLP(w_in, w_out, torch.nn.functional.gelu), 2 * big),
        "chain": (PerToken(lambda x: norm_out(norm_in(x))), big),
    }


def _edge_call(section, width: int, n_pos: int, limit: int) -> tuple[int, int]:
    """One edge call with a position source on 2 samples of ``n_pos`` tokens (full bases)
    under a budget of ``limit`` bytes: the largest tensor it allocates, and the largest
    working set that its plans admit."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(2, n_pos, width, generator=gen, dtype=F64)
    acts[..., 0] = acts[..., 0].abs() + 0.5  # a variance, where the section reads one
    d_out = section(acts[:1, :1]).shape[-1]
    c_in = torch.randn(width, width, generator=gen, dtype=F64)
    c_pinv = torch.linalg.inv(c_in)
    c_out = torch.randn(d_out, d_out, generator=gen, dtype=F64)
    feats = acts @ c_in
    recon = feats @ c_pinv
    gen1 = torch.Generator().manual_seed(1)
    draws = _draw_sources(Sources(n_pos=1), 2, n_pos, d_out, gen1, shared=True)
    points = Integration("gauss-legendre", 1).points()
    plans = []
    real = common.token_blocks

    def spy(n_batch, n_tok, token, sample=0, fixed=0):
        blocks = real(n_batch, n_tok, token, sample, fixed)
        plans.extend(fixed + (b.b1 - b.b0) * (sample + (b.t1 - b.t0) * token) for b in blocks)
        return blocks

    with pytest.MonkeyPatch.context() as mp:
        for module in ("per_token", "layernorm"):
            mp.setattr(f"interaction_basis.lib.closed_form.{module}.token_blocks", spy)
        with budget.limit(limit), _Largest() as mode:
            section.compute_edges_sum(recon, feats, c_pinv, c_out, points, draws)
    return mode.largest, max(plans)


@pytest.mark.parametrize("kind", ["ln_in", "ln_out", "dual_ln_in", "mlp", "chain"])
def test_the_edge_working_set_stays_within_the_budget_at_any_context(kind):
    """At 16 and 128 tokens, the largest tensor an edge call with position sources allocates
    and the working set it plans stay within a 192 KiB budget: blocks of tokens, never every
    token's rows. (Before, one sample's rows or pushforwards were the largest tensor: 0.6 to
    2.4 MB at 128 tokens here, eight times their size at 16.)"""
    section, width = _layer_norm_sections(16)[kind]
    limit = 192 * 2**10
    for n_pos in (16, 128):
        largest, planned = _edge_call(section, width, n_pos, limit)
        assert planned <= limit, f"{kind} at {n_pos} tokens plans {planned} B"
        assert largest <= limit, f"{kind} at {n_pos} tokens allocates {largest} B"
