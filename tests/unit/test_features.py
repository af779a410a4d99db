"""Per-feature evidence (interaction_basis.interpret.features) against brute force on small data."""

import numpy as np
import pytest
import torch

from interaction_basis.graph.layout import NO_MODULE, layout_layer, module_order
from interaction_basis.interpret.features import (
    FeatureAccumulator,
    compute_activation_evidence,
    compute_direct_effects,
    compute_fourier_evidence,
)
from interaction_basis.lib.records import Basis

N, P, F, K, W = 37, 11, 5, 4, 2


def _stream(feats, tokens=None, batch=8, n_quantile_rows=10_000, window=W):
    acc = FeatureAccumulator(F, top_k=K, n_quantile_rows=n_quantile_rows, window=window)
    for s in range(0, len(feats), batch):
        acc.add(feats[s : s + batch], s, None if tokens is None else tokens[s : s + batch])
    return acc.finish([0.0, 0.5, 1.0])


@pytest.fixture
def data():
    # Continuous random values: no ties, so the top-k is unique.
    feats = torch.randn(N, P, F, dtype=torch.float64) * torch.tensor([1.0, 10, 1e-3, 5, 2]) + 3
    tokens = torch.randint(0, 1000, (N, P))
    return feats, tokens


def test_summary_matches_numpy(data):
    feats, tokens = data
    out = _stream(feats, tokens)
    flat = feats.reshape(-1, F).numpy()
    # Chan's merge in float64 over N*P = 407 rows: error ~ rows * eps * |x|, far below 1e-12.
    np.testing.assert_allclose(out["mean"][1], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(out["std"][1], flat.std(0), rtol=1e-12)
    np.testing.assert_array_equal(out["min"][1], flat.min(0))
    np.testing.assert_array_equal(out["max"][1], flat.max(0))
    # All 407 rows fit the subsample, so the quantiles are exact.
    np.testing.assert_allclose(out["quantile_value"][1], np.quantile(flat, [0, 0.5, 1], 0))


def test_top_and_bottom_examples_with_windows(data):
    feats, tokens = data
    out = _stream(feats, tokens)
    flat = feats.reshape(-1, F).numpy()
    for name, order in (("top", -1), ("bottom", 1)):
        for f in range(F):
            rows = np.argsort(order * flat[:, f])[:K]
            np.testing.assert_array_equal(out[f"{name}_value"][1][:, f], flat[rows, f])
            np.testing.assert_array_equal(out[f"{name}_sample"][1][:, f], rows // P)
            np.testing.assert_array_equal(out[f"{name}_position"][1][:, f], rows % P)
            for r, row in enumerate(rows):
                s, p = divmod(int(row), P)
                for j, at in enumerate(range(p - W, p + W + 1)):
                    value = out[f"{name}_window_value"][1][r, f, j]
                    token = out[f"{name}_window_token"][1][r, f, j]
                    if 0 <= at < P:
                        assert value == feats[s, at, f] and token == tokens[s, at]
                    else:
                        assert np.isnan(value) and token == -1


def test_batching_does_not_change_results(data):
    feats, tokens = data
    one, many = _stream(feats, tokens, batch=N), _stream(feats, tokens, batch=3)
    for key in ("top_value", "top_sample", "bottom_window_value", "min", "max"):
        np.testing.assert_array_equal(one[key][1], many[key][1])
    np.testing.assert_allclose(one["std"][1], many["std"][1], rtol=1e-12)


def test_quantiles_from_a_subsample_are_data_values_and_seeded(data):
    feats, _ = data
    a = _stream(feats, n_quantile_rows=50, window=None)
    b = _stream(feats, n_quantile_rows=50, window=None)
    np.testing.assert_array_equal(a["quantile_value"][1], b["quantile_value"][1])
    flat = feats.reshape(-1, F).numpy()
    # q0 and q100 of a subsample are data values inside [min, max].
    for f in range(F):
        assert a["quantile_value"][1][0, f] in flat[:, f]
        assert flat[:, f].min() <= a["quantile_value"][1][0, f] <= a["quantile_value"][1][2, f]
    assert "top_window_value" not in a


def test_activation_evidence_projects_onto_the_basis():
    torch.manual_seed(1)
    d = 6
    x = torch.randn(20, 3, d, dtype=torch.float64)
    c = torch.randn(d, 4, dtype=torch.float64)
    basis = Basis(c, torch.linalg.pinv(c), torch.ones(4, dtype=torch.float64), 0)
    out = compute_activation_evidence(
        lambda inputs: {"l": x[inputs]},
        torch.arange(20),
        {"l": basis},
        batch_size=7,
        top_k=3,
        n_quantile_rows=100,
        quantiles=[0.5],
    )
    f = (x @ c).reshape(-1, 4).numpy()
    np.testing.assert_allclose(out["l"]["max"][1], f.max(0), rtol=1e-12)
    assert out["l"]["quantile"][1].tolist() == [0.5]


def test_direct_effects_are_the_directions_through_the_unembedding():
    torch.manual_seed(2)
    d, n_out, n_feat = 5, 9, 4
    w_u = torch.randn(d, n_out, dtype=torch.float64)
    c_pinv = torch.randn(n_feat, d, dtype=torch.float64)
    basis = Basis(torch.linalg.pinv(c_pinv), c_pinv, torch.ones(n_feat, dtype=torch.float64), 0)
    out = compute_direct_effects(lambda x: x @ w_u, basis, 3, chunk=3)
    effect = (c_pinv @ w_u).numpy()
    for f in range(n_feat):
        order = np.argsort(-effect[f])
        np.testing.assert_array_equal(out["promoted_output"][1][:, f], order[:3])
        np.testing.assert_array_equal(out["suppressed_output"][1][:, f], order[::-1][:3])
        np.testing.assert_allclose(out["promoted_value"][1][:, f], effect[f, order[:3]])
    with pytest.raises(ValueError, match="not linear"):
        compute_direct_effects(lambda x: torch.relu(x @ w_u), basis, 3)


def test_fourier_evidence_names_the_dominant_term():
    p = 7
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    wave = np.cos(2 * np.pi * 3 * a.reshape(-1) / p)
    acts = torch.from_numpy(np.stack([np.ones(p * p), wave], 1))[:, None, :]  # (sample, 1, 2)
    basis = Basis(
        torch.eye(2, dtype=torch.float64),
        torch.eye(2, dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
        1,
    )
    out = compute_fourier_evidence({"l": acts}, {"l": basis}, p)["l"]
    assert out["dominant_frequency"][1].tolist() == [-1, 3]
    assert out["dominant_term"][1][1] == "3a"
    assert out["dominant_share"][1][1] == pytest.approx(1.0)


def test_layout_puts_modules_in_contiguous_blocks():
    modules = {
        "nodes": [
            {"layer": "a", "index": i, "cluster": c} for i, c in enumerate([0, 5, 7, 5, 7, 5, 9])
        ]
        + [{"layer": "b", "index": i, "cluster": c} for i, c in enumerate([1, 7, 5, 5])],
    }
    assert module_order(modules) == [5, 7]  # sizes 4 and 3; singletons 0, 1 and 9 dropped
    lay = layout_layer(modules, "a", 7, constant=True)
    assert lay.order == [0, 1, 3, 5, 2, 4, 6]
    assert lay.module == [NO_MODULE, 5, 7, 5, 7, 5, NO_MODULE]
    assert layout_layer(modules, "b", 4, constant=False).order == [2, 3, 1, 0]
    assert layout_layer(None, "a", 3, constant=False).order == [0, 1, 2]


def test_histogram_counts_every_row_between_the_minimum_and_the_maximum(data):
    """With no more rows than the quantile subsample, the histogram counts every row."""
    from interaction_basis.interpret.features import N_HISTOGRAM_BINS

    feats, tokens = data
    out = _stream(feats, tokens)
    counts = out["histogram_count"][1]
    f = feats.reshape(-1, F).numpy()
    assert counts.shape == (F, N_HISTOGRAM_BINS)
    for j in range(F):
        want, _ = np.histogram(f[:, j], bins=N_HISTOGRAM_BINS, range=(f[:, j].min(), f[:, j].max()))
        np.testing.assert_array_equal(counts[j], want)


def test_quantile_examples_are_the_rows_at_each_quantile(data):
    """Each quantile level names a real (sample, position) whose value is that order
    statistic, so the card can show an example from the middle of the distribution."""
    feats, tokens = data
    out = _stream(feats, tokens)
    f = feats.reshape(-1, F).numpy()
    s, p = out["quantile_example_sample"][1], out["quantile_example_position"][1]
    v = out["quantile_example_value"][1]
    np.testing.assert_array_equal(v, feats.numpy()[s, p, np.arange(F)])
    srt = np.sort(f, axis=0)
    for k, q in enumerate([0.0, 0.5, 1.0]):
        np.testing.assert_array_equal(v[k], srt[int(np.floor(q * (len(f) - 1)))])


def test_previous_occurrence_and_token_windows():
    from interaction_basis.interpret.features import previous_occurrence, token_windows

    tokens = torch.tensor([[5, 1, 2, 5, 3, 1, 4], [7, 7, 7, 7, 7, 7, 7]])
    sample, position = np.array([0, 0, 0, 1, 1]), np.array([3, 5, 0, 0, 4])
    assert previous_occurrence(tokens, sample, position).tolist() == [0, 1, -1, -1, 3]
    win = token_windows(tokens, np.array([0, 0]), np.array([1, -1]), 2, 1)
    assert win.tolist() == [[-1, 5, 1, 2], [-1, -1, -1, -1]]


def test_residual_direct_effect_is_the_first_order_logit_change_at_a_frozen_scale():
    """The direct effect of a residual-stream direction v through the final LayerNorm and the
    unembedding, LN scale frozen at the sample's own: against brute force on a tiny GPT-2.
    Adding εv to the final residual (the direct path: later blocks unchanged), for v
    orthogonal to the centred residual (so that the true LN scale does not move to first
    order), changes the real model's logits by ε · effect(v) + O(ε²); promoted outputs are
    the largest positive effects and suppressed the most negative, split by sign."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interaction_basis.interpret.features import compute_readout_direct_effects
    from interaction_basis.kinds.hf.interpretation import TAIL, FinalLayerNormReadout
    from interaction_basis.models.hf import build_hf_sections

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=23, n_positions=8, n_embd=12, n_layer=2, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    hf = GPT2LMHeadModel(cfg).double().eval()
    with torch.no_grad():  # a non-trivial final LayerNorm
        hf.transformer.ln_f.weight.uniform_(0.5, 2.0)
        hf.transformer.ln_f.bias.normal_()
    readout = FinalLayerNormReadout(build_hf_sections(hf, TAIL, torch.float64))
    full = build_hf_sections(hf, ["resid_pre.1", "ln_final", "output"], torch.float64)
    assert readout.reads("resid_pre.1", 13) and not readout.reads("ln_final_out", 14)
    tokens = torch.randint(0, 23, (3, 8))
    x = full.activations(tokens)["ln_final"][1, 5]  # the sample's final residual (d + 1)
    var = readout.variance(tokens)[1, 5]
    xc = x[:12] - x[:12].mean()
    np.testing.assert_allclose(float(var), float(xc.square().mean()), rtol=1e-12)
    n_feat = 4
    v = torch.randn(n_feat, 13, dtype=torch.float64)
    v[:, :12] -= (v[:, :12] @ xc)[:, None] * xc / xc.square().sum()  # ⊥ centred residual
    basis = Basis(torch.linalg.pinv(v), v, torch.ones(n_feat, dtype=torch.float64), 0)
    out = compute_readout_direct_effects(basis, readout, var.expand(n_feat), 5, chunk=3)
    eps = 1e-5
    for f in range(n_feat):
        up, down = (full.sections[-1]((x + s * eps * v[f])[None, None])[0, 0] for s in (1, -1))
        brute = ((up - down) / (2 * eps)).numpy()
        order = np.argsort(-brute)
        np.testing.assert_array_equal(out["promoted_output"][1][:, f], order[:5])
        np.testing.assert_array_equal(out["suppressed_output"][1][:, f], order[::-1][:5])
        np.testing.assert_allclose(out["promoted_value"][1][:, f], brute[order[:5]], rtol=1e-7)
        assert (out["promoted_value"][1][:, f][:1] > 0).all()
        assert (out["suppressed_value"][1][:, f][:1] < 0).all()
    np.testing.assert_array_equal(out["direct_variance"][1], np.full(n_feat, float(var)))
