"""The edges' stochastic sources over positions (method §A.6): one ±1 draw per (source, sample,
output position), shared by every output feature, as the reference draws them.

- A brute-force reference: the full Jacobian of a tiny GPT-2's sections by autograd, contracted
  with the same draws by hand, against ``compute_edges_sum`` (closed forms and the generic path).
  Draws per output feature (the previous implementation) give other numbers.
- An invariant: over all ``2^P`` sign patterns of a sample's ``P`` output positions the cross
  terms cancel, so their mean is the exact edges, for every closed form and the generic path.
"""

import itertools

import pytest
import torch

from interaction_basis.lib import jacobians
from interaction_basis.lib.jacobians import (
    Integration,
    SourceDraws,
    Sources,
    _draw_sources,
    compute_edges_sum,
)
from interaction_basis.models.hf import build_hf_sections, hf_node_layers
from lm_fixtures import tiny_lm

F64 = torch.float64
EPS = torch.finfo(F64).eps
VOCAB, D_MODEL, SEQ, BATCH = 19, 6, 4, 2


def _sections(arch: str):
    """``[(name, section, activations)]`` of the LayerNorm-split cut up to the logits."""
    model = tiny_lm(arch, vocab=VOCAB, d_model=D_MODEL, n_ctx=8, seed=3, neo_local=False)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    layers = hf_node_layers(model, "ln", final="output")
    sectioned = build_hf_sections(model, layers)
    with torch.no_grad():
        acts = sectioned.activations(tokens)
    return [
        (f"{a}->{b}", section, acts[a])
        for a, b, section in zip(layers, layers[1:], sectioned.sections, strict=False)
    ]


def _bases(section, acts):
    gen = torch.Generator().manual_seed(4)
    d_in, d_out = acts.shape[-1], section(acts[:1]).shape[-1]
    c_in = torch.randn(d_in, d_in - 1, generator=gen, dtype=F64)
    c_out = torch.randn(d_out, min(d_out, 5), generator=gen, dtype=F64)
    return c_in, torch.linalg.pinv(c_in), c_out


def _brute_force(section, acts, c_in, c_pinv, c_out, signs):
    """``Σ_x Σ_r (Σ_t φ_{r,t}(x) Σ_s ∂F̂_{t,i}/∂g_{s,j} f̂_{s,j})²`` from the full Jacobian of
    ``F̂(g) = section(g C⁺) C_out`` at ``g = f̂`` (``gradient`` rule), ``signs`` (r, b, t)."""
    feats = acts @ c_in
    total = torch.zeros(c_out.shape[1], c_in.shape[1], dtype=F64)
    for b in range(acts.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda g: section((g @ c_pinv)[None])[0] @ c_out, feats[b]
        )  # (t, i, s, j)
        a = torch.einsum("tisj,sj->tij", jac, feats[b])
        total += torch.einsum("rt,tij->rij", signs[:, b], a).square().sum(0)
    return total


@pytest.mark.parametrize("mode", [None, "reverse"], ids=["auto", "reverse"])
def test_edges_share_one_draw_per_source_across_output_features(mode):
    """The edges of every section of a tiny GPT-2 with one position source equal the
    brute-force contraction with one sign per (sample, output position), drawn as the edges
    draw them; signs per output feature give different edges."""
    for name, section, acts in _sections("gpt2"):
        c_in, c_pinv, c_out = _bases(section, acts)
        p_out = section(acts[:1]).shape[1]
        got = compute_edges_sum(
            section, acts, c_in, c_pinv, c_out, sources=Sources(n_pos=1),
            generator=torch.Generator().manual_seed(9), mode=mode,
        )  # fmt: skip
        # The same generator state gives the edges' draws: (source, sample, output position).
        gen = torch.Generator().manual_seed(9)
        shared = (torch.rand(1, BATCH, p_out, generator=gen) > 0.5).to(F64) * 2 - 1
        want = _brute_force(section, acts, c_in, c_pinv, c_out, shared)
        err = float((got - want).abs().max() / want.abs().max())
        assert err < 1e-12, f"{name}: relative error {err:.1e}"
        # Draws per output feature (the generator's first k_out·P draws): not the edges'.
        per_feature = _draw_sources(Sources(n_pos=1), BATCH, p_out, c_out.shape[1], gen)
        assert not per_feature.shared and per_feature.draws is not None
        assert not torch.equal(per_feature.draws[0, 0], per_feature.draws[0, 1])


def _all_patterns(batch: int, p_out: int, k_out: int) -> SourceDraws:
    """Every sign pattern over ``p_out`` positions as one source each, shared by the outputs."""
    patterns = torch.tensor(list(itertools.product([False, True], repeat=p_out)))
    draws = patterns[:, None, None, :].expand(len(patterns), k_out, batch, p_out)
    return SourceDraws("pos", draws, shared=True)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
@pytest.mark.parametrize("mode", [None, "reverse"], ids=["auto", "reverse"])
def test_all_sign_patterns_average_to_the_exact_edges(arch, mode, monkeypatch):
    """``mean over φ ∈ {±1}^P of (Σ_t φ_t A_t)² = Σ_t A_t²``: each section's edges with every
    pattern as a source (shared by the output features) equal its exact edges.

    Bound: each of the ``2^P`` signed sums of ``P`` terms and its square err by a few units of
    ``u = ε/2`` relative to ``(Σ_t |A_t|)² ≤ P Σ_t A_t²``, so the mean errs by at most
    ``≈ 4 P u · max E`` per entry, here 2e-15; 1e-12 leaves room for the exact path's own
    rounding, while a missing term or a sign off by one output feature is off by O(1)."""
    rule = Integration("gauss-legendre", 1)
    for name, section, acts in _sections(arch):
        c_in, c_pinv, c_out = _bases(section, acts)
        p_out = section(acts[:1]).shape[1]
        exact = compute_edges_sum(section, acts, c_in, c_pinv, c_out, integration=rule, mode=mode)
        draws = _all_patterns(BATCH, p_out, c_out.shape[1])
        monkeypatch.setattr(jacobians, "_draw_sources", lambda *a, d=draws, **k: d)
        n = draws.draws.shape[0]
        got = compute_edges_sum(
            section, acts, c_in, c_pinv, c_out, integration=rule, sources=Sources(n_pos=n),
            mode=mode,
        )  # fmt: skip
        monkeypatch.undo()
        err = float((got - exact).abs().max() / exact.abs().max())
        assert err < 1e-12, f"{arch} {name}: relative error {err:.1e}"


def test_edges_reject_draws_per_output_feature():
    draws = _draw_sources(Sources(n_pos=1), 1, 3, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="shared by the output features"):
        draws.edge_signs()
