"""method §A.9 invariants on small random models (the reference model: integration tests)."""

import pytest

from factories import full_build, tiny_mlp, tiny_modadd
from invariants import (
    assert_constant_node,
    assert_final_linear_edges,
    assert_uncorrelated,
    assert_whitened_gradients,
)


@pytest.fixture(params=[tiny_mlp, tiny_modadd], ids=["mlp", "transformer"], scope="module")
def built(request):
    model, inputs = request.param()
    return model, full_build(model, inputs, "lib")


def test_lib_features_are_uncorrelated_with_second_moment_lambda(built):
    model, (acts, stats, bases, _, _) = built
    for layer in model.node_layers[:-1]:
        assert_uncorrelated(bases[layer], stats[layer])


def test_constant_node(built):
    model, (acts, stats, bases, _, _) = built
    for layer in model.node_layers[:-1]:
        assert_constant_node(bases[layer], acts[layer], stats[layer])


def test_gradient_second_moment_is_identity(built):
    model, (_, _, bases, m_dash, _) = built
    for layer in model.node_layers[:-1]:
        assert_whitened_gradients(bases[layer], m_dash[layer])


def test_final_linear_section_edges(built):
    model, (acts, _, bases, _, edges) = built
    last_in = model.node_layers[-2]
    assert_final_linear_edges(edges[(last_in, "output")], bases[last_in], acts["output"])


@pytest.mark.parametrize("factory", [tiny_mlp, tiny_modadd], ids=["mlp", "transformer"])
def test_pca_edges_into_output_have_the_basis_independent_total(factory):
    model, inputs = factory()
    acts, _, bases, _, edges = full_build(model, inputs, "pca")
    last_in = model.node_layers[-2]
    total = acts["output"].square().sum(-1).mean()
    assert float(edges[(last_in, "output")].sum()) == pytest.approx(float(total), rel=1e-10)
