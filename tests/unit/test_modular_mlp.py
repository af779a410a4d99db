"""The planted-module MLP (method §H): its construction, its hidden variant, and the scores
against the planted blocks on tiny sizes."""

import numpy as np
import pytest
import torch

from factories import full_build
from interaction_basis.config import (
    BlockVectorConfig,
    ExperimentConfig,
    ModelConfig,
    ModularMLPConfig,
)
from interaction_basis.data.block_vectors import generate_block_vectors
from interaction_basis.evaluate.ground_truth import compute_block_weights, score_method
from interaction_basis.graph.clustering import build_interaction_graph, compute_modules
from interaction_basis.graph.edge_mass import compute_epsilon_from_mass
from interaction_basis.lib.basis import DeadLayerError, compute_neuron_basis
from interaction_basis.models.modular_mlp import (
    build_modular_mlp_sections,
    build_modular_mlp_weights,
    compute_block_labels,
    mixing_of,
    modular_mlp_forward,
    validate_modular_mlp_weights,
)

EPS64 = torch.finfo(torch.float64).eps


# --- construction: the reference's draws (method §H) ---------------------------------------


def _reference_block_matrix(width, first, scales, equal_columns, seed, dtype):
    """method §H's description, drawn from the global generator as the reference does."""
    torch.manual_seed(seed)
    m = torch.zeros(width, width, dtype=dtype)
    w2 = width - first
    if equal_columns:
        m[:first, :first] = scales[0] * torch.randn(1, first, dtype=dtype).repeat(first, 1).T
        m[first:, first:] = scales[1] * torch.randn(1, w2, dtype=dtype).repeat(w2, 1).T
    else:
        m[:first, :first] = scales[0] * torch.randn(first, first, dtype=dtype)
        m[first:, first:] = scales[1] * torch.randn(w2, w2, dtype=dtype)
    return m


@pytest.mark.parametrize("equal_columns", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weights_are_the_references_draws(equal_columns, dtype):
    cfg = ModularMLPConfig(
        n_hidden_layers=3,
        width=7,
        first_block_width=3,
        weight_variances=[2.0, 0.5],
        weight_equal_columns=equal_columns,
        bias=0.25,
        dtype=dtype,
        seed=5,
    )
    weights = build_modular_mlp_weights(cfg)
    with torch.random.fork_rng():
        expected = _reference_block_matrix(
            7, 3, [2.0, 0.5], equal_columns, 5, getattr(torch, dtype)
        )
    assert sorted(weights) == sorted(f"layers.{i}.{p}" for i in range(4) for p in ("W", "b"))
    for i in range(4):  # re-seeded before every layer: all layers are the same matrix
        np.testing.assert_array_equal(weights[f"layers.{i}.W"], expected.numpy())
        np.testing.assert_array_equal(weights[f"layers.{i}.b"], np.full(7, 0.25, dtype=dtype))
        assert weights[f"layers.{i}.W"].dtype == np.dtype(dtype)
    w = weights["layers.0.W"]
    assert not w[:3, 3:].any() and not w[3:, :3].any()
    if equal_columns:
        assert (w[:3, :3] == w[:3, :1]).all() and (w[3:, 3:] == w[3:, 3:4]).all()


def test_defaults_are_the_references():
    cfg = ModularMLPConfig()
    assert (cfg.n_hidden_layers, cfg.width, cfg.first_block) == (4, 4, 2)
    assert (cfg.weight_variances, cfg.weight_equal_columns, cfg.bias) == ([1.0, 1.0], False, 0.0)
    assert (cfg.activation_fn, cfg.seed) == ("relu", 0)
    data = BlockVectorConfig()
    assert (data.size, data.length, data.first_block, data.data_variances) == (1000, 4, 2, [1, 1])
    assert (data.data_perfect_correlation, data.dtype, data.seed) == (False, "float64", 0)


@pytest.mark.parametrize("correlated", [False, True])
def test_block_vectors_are_the_references_draws(correlated):
    cfg = BlockVectorConfig(
        size=50, length=5, data_variances=[1.5, 3.0], data_perfect_correlation=correlated, seed=3
    )
    with torch.random.fork_rng():
        torch.manual_seed(3)
        n = (50, 1) if correlated else None
        b1 = 1.5 * torch.randn(*(n or (50, 2)), dtype=torch.float64)
        b2 = 3.0 * torch.randn(*(n or (50, 3)), dtype=torch.float64)
    if correlated:
        b1, b2 = b1.repeat(1, 2), b2.repeat(1, 3)
    torch.testing.assert_close(generate_block_vectors(cfg), torch.cat([b1, b2], 1), rtol=0, atol=0)


def test_config_rejects_what_cannot_be_built():
    with pytest.raises(ValueError, match="first_block_width"):
        ModularMLPConfig(width=4, first_block_width=4)
    with pytest.raises(ValueError, match="must equal"):
        ModelConfig(kind="modular_mlp", modular_mlp={"width": 8})
    with pytest.raises(ValueError, match="remove model.weights"):
        ModelConfig(kind="modular_mlp", weights="w.npz")
    with pytest.raises(ValueError, match="no labels"):
        ExperimentConfig(name="x", model={"kind": "modular_mlp"})


# --- the hidden variant -----------------------------------------------------------------------


def _tiny(hidden: bool, **kw):
    cfg = ModularMLPConfig(n_hidden_layers=2, width=6, hidden=hidden, hidden_seed=1, **kw)
    x = generate_block_vectors(BlockVectorConfig(size=300, length=6, seed=2))
    return build_modular_mlp_weights(cfg), x


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_hidden_variant_computes_the_same_function(activation):
    plain, x = _tiny(False, activation_fn=activation, bias=0.3)
    hidden, _ = _tiny(True, activation_fn=activation, bias=0.3)
    assert {k for k in hidden if k.startswith("mixing.")} == {"mixing.1", "mixing.2"}
    for k in plain:
        np.testing.assert_array_equal(plain[k], hidden[k])
    m_plain = build_modular_mlp_sections(plain, activation=activation)
    m_hidden = build_modular_mlp_sections(hidden, activation=activation)
    with torch.no_grad():
        a_plain, a_hidden = m_plain.activations(x), m_hidden.activations(x)
    reference = modular_mlp_forward(plain, x, activation)
    # Two extra orthogonal products per layer: rounding of a few ulps of the largest activation
    # per layer (3 layers, width 6); 1e3 ulps leaves a wide margin.
    tol = 1e3 * EPS64 * float(reference.abs().max())
    torch.testing.assert_close(a_plain["output"][:, 0], reference, rtol=0, atol=tol)
    torch.testing.assert_close(a_hidden["output"], a_plain["output"], rtol=0, atol=tol)
    for layer in ("layers.1", "layers.2"):  # each hidden layer holds the plain one times Q
        q = torch.as_tensor(mixing_of(hidden, layer))
        scale = float(a_plain[layer].abs().max())
        torch.testing.assert_close(
            a_hidden[layer][..., :-1],
            a_plain[layer][..., :-1] @ q,
            rtol=0,
            atol=1e3 * EPS64 * scale,
        )
        torch.testing.assert_close(a_hidden[layer][..., -1], a_plain[layer][..., -1])


def test_mixings_are_orthogonal_and_checked():
    hidden, _ = _tiny(True)
    validate_modular_mlp_weights(hidden)
    broken = dict(hidden, **{"mixing.1": 2 * hidden["mixing.1"]})
    with pytest.raises(ValueError, match="not orthogonal"):
        validate_modular_mlp_weights(broken)
    with pytest.raises(ValueError, match="missing tensor 'mixing.2'"):
        validate_modular_mlp_weights({k: v for k, v in hidden.items() if k != "mixing.2"})


def test_a_dead_network_fails_with_the_fix():
    """Equal columns at seed 0: every ReLU of the last hidden layer is off for every sample, so
    nothing depends on the layers before it. LIB used to write a basis of NaN (1/sqrt(Λ = 0))."""
    cfg = ModularMLPConfig(
        n_hidden_layers=2, width=6, weight_variances=[2.0, 2.0], weight_equal_columns=True
    )
    x = generate_block_vectors(BlockVectorConfig(size=300, length=6))
    model = build_modular_mlp_sections(build_modular_mlp_weights(cfg))
    with pytest.raises(
        DeadLayerError,
        match=r"'layers.2': every direction has zero LIB "
        r"importance.*pca or neuron basis",
    ):
        full_build(model, x, "lib", batch_size=300)
    full_build(model, x, "pca", batch_size=300)  # the baselines still describe it


# --- scores against the planted blocks ---------------------------------------------------------


def test_neuron_basis_puts_the_constant_first():
    b = compute_neuron_basis(4, constant_last=True)
    x = torch.tensor([[2.0, 3.0, 5.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(x @ b.C, torch.tensor([[1.0, 2.0, 3.0, 5.0]], dtype=torch.float64))
    torch.testing.assert_close(b.C @ b.C_pinv, torch.eye(4, dtype=torch.float64))
    assert b.n_masked == 1


def _scores(weights, x, method):
    model = build_modular_mlp_sections(weights)
    _, _, bases, _, edges = full_build(model, x, method, batch_size=100)
    layers = model.node_layers[:-1]
    eps = {a: compute_epsilon_from_mass(e, 0.99) for (a, _), e in edges.items()}
    graph = build_interaction_graph(edges, layers, edge_norm="log", epsilon=eps)
    modules = compute_modules(graph, resolution=1.0, seed=0)
    nodes = [
        {"layer": v["layer"], "index": v["index"], "cluster": c}
        for v, c in zip(graph.vs, modules.membership, strict=True)
    ]
    blocks = compute_block_labels(6, 3)
    mixings = {layer: mixing_of(weights, layer) for layer in bases}
    constant = {layer: model.traits(layer).constant for layer in bases}
    modules = {"layers": layers, "nodes": nodes}
    return score_method(bases, edges, modules, blocks, mixings, constant), bases


def test_plain_neuron_basis_sees_the_blocks():
    """The blocks are the coordinates and never interact: every neuron is pure and no module
    holds neurons of both blocks (the sanity check of issue 16)."""
    plain, x = _tiny(False)
    scores, bases = _scores(plain, x, "neuron")
    for layer, purity in scores["purity"].items():
        constant = layer != "output"  # the logits have no folded constant
        assert (purity[0] is None) == constant
        assert all(p == 1.0 for p in purity[int(constant) :]), (layer, purity)
    assert scores["min_purity"] == 1.0 and scores["fraction_pure"] == 1.0
    assert scores["modules_spanning_both_blocks"] == 0
    assert scores["cross_block_edge_share"] == 0.0  # block-diagonal weights: exact zeros
    assert scores["n_ari_features"] == 3 * 6  # 3 clustered layers, every neuron


def test_hidden_neuron_basis_mixes_the_blocks():
    hidden, x = _tiny(True)
    scores, _ = _scores(hidden, x, "neuron")
    assert scores["layers"]["layers.0"]["min"] == 1.0  # the input is not mixed
    for layer in ("layers.1", "layers.2"):
        assert scores["layers"][layer]["n_pure"] < 6, scores["layers"][layer]


@pytest.mark.parametrize("method", ["lib", "pca"])
def test_rotation_invariant_bases_score_the_same_on_both_variants(method):
    """LIB and PCA are equivariant under an orthogonal change of coordinates, so un-mixed their
    features (hence purities) are the plain variant's. Unequal block scales keep the spectra
    apart, so the eigenvectors are well defined; their error is ~ulp / relative gap.

    A bias keeps the ReLUs off their kink: with bias 0, a sample whose block is dead in one
    layer gives the next layer pre-activations exactly 0 in the plain variant (slope 0) but
    ±1 ulp after the mixing (slope 0 or 1), and the two M′ differ."""
    kw = dict(weight_variances=[1.0, 2.5], bias=0.3)
    (plain, x), (hidden, _) = _tiny(False, **kw), _tiny(True, **kw)
    s_plain, _ = _scores(plain, x, method)
    s_hidden, _ = _scores(hidden, x, method)
    for layer, p in s_plain["purity"].items():
        q = s_hidden["purity"][layer]
        assert len(p) == len(q)
        k = int(layer != "output")  # the constant aside
        np.testing.assert_allclose(np.array(q[k:]), np.array(p[k:]), atol=1e-6)
    assert s_hidden["ari"] == pytest.approx(s_plain["ari"])


def test_block_weights_of_a_known_direction():
    """A direction split 3:1 in squared weight between the blocks has purity 0.75."""
    from interaction_basis.lib.records import Basis

    d = torch.tensor([[0.0, 0.0, 1.0], [np.sqrt(3.0), 1.0, 0.0]], dtype=torch.float64)
    basis = Basis(d.T, d, torch.ones(2, dtype=torch.float64), 1)
    shares = compute_block_weights(basis, "layers.1", np.array([0, 1]))
    assert np.isnan(shares[0]).all()
    np.testing.assert_allclose(shares[1], [0.75, 0.25])
