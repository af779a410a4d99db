"""The image-classifier MLP: bias folding (method §A.1), weight validation, A.9 invariants and
a block-diagonal MLP whose interaction graph must split into its two blocks."""

import numpy as np
import pytest
import torch

from factories import full_build
from interaction_basis.models.mlp import (
    MLP,
    _gelu_one,
    build_mlp_sections,
    mlp_node_layers,
    validate_mlp_weights,
)
from invariants import (
    assert_constant_node,
    assert_final_linear_edges,
    assert_uncorrelated,
    assert_whitened_gradients,
)

SIZES = (10, 12, 8, 5)  # input, hidden, hidden, classes
ACT = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "tanh": torch.tanh}


def random_mlp(activation="relu", bias=True, seed=0, sizes=SIZES) -> MLP:
    """A float64 MLP with random weights and (nonzero) biases."""
    model = MLP(sizes[0], sizes[1:-1], sizes[-1], activation=activation, bias=bias, seed=seed)
    return model.double()


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_sectioned_mlp_reproduces_the_module(activation, bias):
    module = random_mlp(activation, bias)
    model = build_mlp_sections(module.state_arrays(), activation=activation)
    assert model.node_layers == ("layers.0", "layers.1", "layers.2", "output")
    x = torch.randn(50, SIZES[0], dtype=torch.float64)
    with torch.no_grad():
        expected = module(x)
        acts = model.activations(x)
    assert acts["output"].shape == (50, 1, SIZES[-1])
    torch.testing.assert_close(acts["output"][:, 0], expected, rtol=0, atol=1e-12)
    # The hidden activations, constant stripped, are the module's post-activations.
    h = x
    for i in range(len(SIZES) - 2):
        h = h @ module.p(f"layers.{i}.W")
        if bias:
            h = h + module.p(f"layers.{i}.b")
        h = ACT[activation](h)
        torch.testing.assert_close(
            acts[f"layers.{i + 1}"][:, 0, :-1], h.detach(), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_constant_coordinate_is_one_at_every_non_output_layer(activation):
    module = random_mlp(activation)
    model = build_mlp_sections(module.state_arrays(), activation=activation)
    acts = model.activations(torch.randn(30, SIZES[0], dtype=torch.float64))
    for layer in model.node_layers[:-1]:
        assert acts[layer].shape[-1] == (SIZES[int(layer.split(".")[1])] + 1)
        assert torch.equal(acts[layer][..., -1], torch.ones(30, 1, dtype=torch.float64)), layer
    assert acts["output"].shape[-1] == SIZES[-1]  # logits carry no constant


def test_gelu_fold_preimage():
    r1 = _gelu_one()
    assert r1 == pytest.approx(1.1444507, abs=1e-6)
    assert float(torch.nn.functional.gelu(torch.tensor(r1, dtype=torch.float64))) == 1.0


def test_image_inputs_are_flattened_and_cut_at_chosen_layers():
    module = MLP(3 * 4 * 4, [7], 3, seed=1).double()
    x = torch.rand(5, 3, 4, 4, dtype=torch.float64)
    model = build_mlp_sections(module.state_arrays(), node_layers=["layers.1", "output"])
    assert model.node_layers == ("layers.1", "output")
    out = model.forward_from("layers.1", model.embed(x))
    torch.testing.assert_close(out[:, 0], module(x).detach(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="Unknown node layer"):
        build_mlp_sections(module.state_arrays(), node_layers=["layers.5", "output"])
    with pytest.raises(ValueError, match="48 features"):
        model.embed(torch.rand(5, 10, dtype=torch.float64))


def test_float32_build():
    module = random_mlp()
    model = build_mlp_sections(module.state_arrays(), dtype=torch.float32)
    x = torch.randn(8, SIZES[0])
    out = model.activations(x)["output"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], module(x.double()).float().detach(), rtol=1e-5, atol=1e-5)


def test_state_round_trip():
    module = random_mlp("tanh")
    state = module.state_arrays()
    assert sorted(state) == [f"layers.{i}.{p}" for i in range(3) for p in "Wb"]
    assert state["layers.0.W"].shape == (SIZES[0], SIZES[1])
    assert validate_mlp_weights(state) == (SIZES[0], SIZES[1:-1], SIZES[-1], True)
    clone = MLP.from_state_arrays(state, activation="tanh").double()
    x = torch.randn(4, SIZES[0], dtype=torch.float64)
    torch.testing.assert_close(clone(x), module(x), rtol=0, atol=1e-6)  # float32 params


def _edit(state, **changes):
    state = dict(state)
    for key, value in changes.items():
        name = key.replace("__", ".")
        if value is None:
            del state[name]
        else:
            state[name] = value
    return state


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(layers__1__b=None), r"missing tensor 'layers\.1\.b' \(expected shape \(8,\)"),
        (dict(layers__1__W=None), r"missing tensor 'layers\.1\.W' \(expected shape \(12, 8\)"),
        (
            dict(layers__1__W=np.zeros((11, 8))),
            r"'layers\.1\.W' has shape \(11, 8\), expected \(12",
        ),
        (dict(layers__2__b=np.zeros(4)), r"'layers\.2\.b' has shape \(4,\), expected \(5,\)"),
        (dict(layers__0__W=np.zeros(10)), r"'layers\.0\.W' has shape \(10,\)"),
        (dict(layers__0__W=np.full((10, 12), np.nan)), r"'layers\.0\.W' contains NaN"),
        (dict(layers__1__weight=np.zeros((8, 12))), r"unexpected tensor 'layers\.1\.weight'"),
    ],
    ids=["missing_b", "missing_W", "W_rows", "b_shape", "W_1d", "nan", "torch_names"],
)
def test_invalid_weights_name_the_tensor_and_expected_shape(changes, message):
    state = _edit(random_mlp().state_arrays(), **changes)
    with pytest.raises(ValueError, match=message):
        build_mlp_sections(state)


def test_empty_weights_and_unknown_activation():
    with pytest.raises(ValueError, match=r"missing tensor 'layers\.0\.W'"):
        build_mlp_sections({})
    # Under the jaxtyping/beartype test hook the Literal annotation rejects it first.
    with pytest.raises((ValueError, TypeError), match="Unknown activation|sigmoid"):
        build_mlp_sections(random_mlp().state_arrays(), activation="sigmoid")
    with pytest.raises((ValueError, TypeError), match="Unknown activation|sigmoid"):
        MLP(4, [3], 2, activation="sigmoid")


def test_node_layer_names():
    assert mlp_node_layers(3) == ("layers.0", "layers.1", "layers.2", "output")


# ---- method §A.9 invariants after a LIB build -------------------------------------------


@pytest.fixture(params=["relu", "gelu", "tanh"], scope="module")
def lib_build(request):
    torch.manual_seed(0)
    module = random_mlp(request.param, seed=3)
    model = build_mlp_sections(module.state_arrays(), activation=request.param)
    inputs = torch.randn(200, SIZES[0], dtype=torch.float64)
    return module, model, inputs, full_build(model, inputs, "lib", batch_size=64)


def test_lib_invariants_on_every_node_layer(lib_build):
    _, model, _, (acts, stats, bases, m_dash, _) = lib_build
    assert set(m_dash) == set(model.node_layers[:-1])
    for layer in model.node_layers[:-1]:
        assert bases[layer].n_masked == 1
        assert_uncorrelated(bases[layer], stats[layer])
        assert_constant_node(bases[layer], acts[layer], stats[layer])
        assert_whitened_gradients(bases[layer], m_dash[layer])


def test_final_linear_section_invariant(lib_build):
    module, model, inputs, (acts, _, bases, _, edges) = lib_build
    e = edges[("layers.2", "output")]
    assert e.shape == (SIZES[-1], bases["layers.2"].C.shape[1])
    with torch.no_grad():
        logits = module(inputs)[:, None]
    assert_final_linear_edges(e, bases["layers.2"], logits)


# ---- block-diagonal MLP: no edges between the blocks ---------------------------------------

BLOCK = (4, 6, 5, 3)  # per block: input, hidden, hidden, classes


def block_diagonal_mlp(scale_b: float = 1.7) -> MLP:
    """Two independent ReLU sub-networks: inputs [:4] → classes [:3], inputs [4:] → [3:].

    Block B's weights are scaled so that the two blocks' spectra differ (LIB may rotate
    within a degenerate eigenspace, which would mix identical blocks legitimately).
    """
    a, b = MLP(*_block_args(), seed=1).double(), MLP(*_block_args(), seed=2).double()
    full = MLP(2 * BLOCK[0], [2 * s for s in BLOCK[1:-1]], 2 * BLOCK[-1]).double()
    with torch.no_grad():
        for name in a.state_arrays():
            wa, wb = a.p(name), b.p(name) * scale_b
            full.p(name).copy_(torch.block_diag(wa, wb) if wa.ndim == 2 else torch.cat([wa, wb]))
    return full


def _block_args():
    return BLOCK[0], BLOCK[1:-1], BLOCK[-1]


def product_inputs(n: int = 30) -> torch.Tensor:
    """Every pair of ``n`` block-A and ``n`` block-B inputs.

    On a product set the sample covariance between the blocks is exactly zero (it factorises
    into two zero-mean sums), so the Grams, M′ and the bases are exactly block-diagonal.
    """
    gen = torch.Generator().manual_seed(5)
    xa = torch.randn(n, BLOCK[0], generator=gen, dtype=torch.float64)
    xb = 2.0 * torch.randn(n, BLOCK[0], generator=gen, dtype=torch.float64) + 0.5
    ia, ib = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    return torch.cat([xa[ia.flatten()], xb[ib.flatten()]], dim=1)


def feature_blocks(basis, n_orig: int, has_constant: bool) -> np.ndarray:
    """0/1 per feature: the block its basis vector lives in (-1 for the constant node).

    Asserts that no non-constant feature mixes the two blocks.
    """
    c = basis.C[: n_orig - 1] if has_constant else basis.C
    half = c.shape[0] // 2
    norm_a, norm_b = c[:half].norm(dim=0), c[half:].norm(dim=0)
    blocks = (norm_b > norm_a).long().numpy()
    mixed = torch.minimum(norm_a, norm_b) / torch.maximum(norm_a, norm_b)
    start = basis.n_masked if has_constant else 0
    assert mixed[start:].max() < 1e-8, mixed
    if has_constant:
        blocks[: basis.n_masked] = -1
    return blocks


@pytest.fixture(scope="module")
def block_build():
    module = block_diagonal_mlp()
    model = build_mlp_sections(module.state_arrays())
    inputs = product_inputs()
    return model, full_build(model, inputs, "lib", batch_size=300)


def test_block_diagonal_mlp_has_no_edges_between_blocks(block_build):
    model, (acts, _, bases, _, edges) = block_build
    blocks = {
        layer: feature_blocks(bases[layer], acts[layer].shape[-1], layer != "output")
        for layer in model.node_layers
    }
    for layer in model.node_layers[:-1]:
        # Both blocks survive in every layer (dead ReLUs aside).
        assert (blocks[layer] == 0).sum() > 0 and (blocks[layer] == 1).sum() > 0, layer
    for (l_in, l_out), e in edges.items():
        b_in, b_out = blocks[l_in], blocks[l_out]
        cross = (b_out[:, None] >= 0) & (b_in[None, :] >= 0) & (b_out[:, None] != b_in[None, :])
        within = (b_out[:, None] >= 0) & (b_out[:, None] == b_in[None, :])
        assert e[torch.from_numpy(cross)].max() <= 1e-12 * e.max(), (l_in, l_out)
        assert e[torch.from_numpy(within)].max() > 1e-3 * e.max(), (l_in, l_out)


def test_leiden_recovers_the_two_blocks(block_build):
    clustering = pytest.importorskip("interaction_basis.graph.clustering")
    model, (acts, _, bases, _, edges) = block_build
    blocks = {
        layer: feature_blocks(bases[layer], acts[layer].shape[-1], layer != "output")
        for layer in model.node_layers
    }
    eps = 1e-10 * max(float(e.max()) for e in edges.values())
    graph = clustering.build_interaction_graph(
        edges, model.node_layers, edge_norm="log", epsilon=eps
    )
    modules = clustering.compute_modules(graph, resolution=0.5, seed=0)
    truth = [int(blocks[v["layer"]][v["index"]]) for v in graph.vs]
    non_singleton = [m for m in modules.clusters if len(m) > 1]
    assert len(non_singleton) == 2
    for members in non_singleton:
        assert len({truth[v] for v in members}) == 1  # each module lies within one block
    assert {truth[non_singleton[0][0]], truth[non_singleton[1][0]]} == {0, 1}
    # Only the constant nodes (excluded from the graph) and dead units are left alone.
    covered = {v for m in non_singleton for v in m}
    assert all(truth[v] == -1 for v in range(graph.vcount()) if v not in covered)
