"""The reference configs build the reference implementation's planted-module MLP (method §H).

§H: the model's ``dtype`` defaults to float32 and the sample build does not set it, so its
weights are float32 draws (``torch.manual_seed(seed)`` before each layer, then ``B1``, then
``B2``) cast to the run's float64 afterwards; float64 draws with the same seed are another
network. The expected weights here are re-stated from §H, not computed with the project's code.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from snakemake.utils import update_config

from interaction_basis.config import ModularMLPConfig, WorkflowConfig
from interaction_basis.kinds import data, training
from interaction_basis.models.modular_mlp import build_modular_mlp_sections, modular_mlp_forward

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"


def _experiments(name: str) -> dict:
    """The experiments of ``config/<name>`` as the workflow reads them: merged onto
    config/config.yaml (``--configfile``), then validated."""
    merged = yaml.safe_load((CONFIG / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((CONFIG / name).read_text()))
    return {e.name: e for e in WorkflowConfig.model_validate(merged).experiments}


REFERENCE = _experiments("modular_mlp_reference.yaml")
MODULAR = _experiments("modular_mlp.yaml")
ALL = {**REFERENCE, **MODULAR}


def _section_h_weights(n_hidden_layers, width, scales, seed, draw_dtype=torch.float32):
    """§H's ``W`` of every layer, in the run's float64: re-seed the global generator, draw
    ``B1`` then ``B2`` in the model dtype, ``block_diag``, cast."""
    w1 = width // 2
    w2 = width - w1
    with torch.random.fork_rng():
        out = []
        for _ in range(n_hidden_layers + 1):
            torch.manual_seed(seed)
            b1 = scales[0] * torch.randn(w1, w1, dtype=draw_dtype)
            b2 = scales[1] * torch.randn(w2, w2, dtype=draw_dtype)
            out.append(torch.block_diag(b1, b2).to(torch.float64))
    return out


def _built_weights(name: str) -> dict[str, np.ndarray]:
    """What rule train_model writes for experiment ``name`` (the kind's ``train``)."""
    model = ALL[name].model
    task = data.get("modular_mlp").load_data(model)
    return training.get("modular_mlp").train(model, task, threads=1).weights


def test_the_model_dtype_defaults_to_float32_as_in_the_reference():
    assert ModularMLPConfig().dtype == "float32"


def test_the_reference_config_is_the_sample_build():
    """§H, "The reference's sample build", setting by setting."""
    (exp,) = REFERENCE.values()
    m, d = exp.model.modular_mlp, exp.model.block_vector
    assert (m.n_hidden_layers, m.width, m.first_block, m.weight_variances) == (4, 8, 4, [2, 2])
    assert (m.weight_equal_columns, m.bias, m.activation_fn, m.seed) == (False, 0.0, "relu", 0)
    assert m.dtype == "float32"  # left at the reference's default
    assert not m.hidden
    assert (d.size, d.length, d.first_block, d.data_variances) == (10000, 8, 4, [1, 1])
    assert (d.data_perfect_correlation, d.dtype, d.seed) == (False, "float64", 0)
    assert exp.extract.dtype == "float64"
    assert exp.model.modular_mlp == MODULAR["modular_mlp_plain"].model.modular_mlp
    assert exp.model.block_vector == MODULAR["modular_mlp_plain"].model.block_vector


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_reference_config_draws_its_weights_in_float32(name):
    """Every planted-module experiment is the reference build with one change; none of them
    changes the draws' dtype."""
    assert ALL[name].model.modular_mlp.dtype == "float32"


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_built_weights_are_section_h_draws(name):
    """The weights rule train_model builds, in the run's dtype, equal §H's float32 draws cast
    to float64, exactly; the float64 draws with the same seed differ."""
    m = ALL[name].model.modular_mlp
    weights = _built_weights(name)
    expected = _section_h_weights(m.n_hidden_layers, m.width, m.weight_variances, m.seed)
    for i, w in enumerate(expected):
        built = torch.as_tensor(weights[f"layers.{i}.W"]).to(torch.float64)
        assert torch.equal(built, w), f"layers.{i}.W is not §H's float32 draw"
        bias = torch.as_tensor(weights[f"layers.{i}.b"]).to(torch.float64)
        assert torch.equal(bias, torch.full((m.width,), m.bias, dtype=torch.float64))
    float64_draws = _section_h_weights(
        m.n_hidden_layers, m.width, m.weight_variances, m.seed, torch.float64
    )
    assert not torch.equal(float64_draws[0], expected[0])


def test_the_sample_build_evaluates_section_h_network_in_float64():
    """The network the workflow analyses (bias-folded sections, float64) computes the
    reference's forward pass of the cast float32 draws on the block vectors."""
    (exp,) = REFERENCE.values()
    weights = _built_weights(exp.name)
    x = data.get("modular_mlp").load_data(exp.model).fit_inputs[:500]
    expected = x.to(torch.float64)
    layers = _section_h_weights(4, 8, [2.0, 2.0], 0)
    for i, w in enumerate(layers):
        expected = expected @ w
        if i < len(layers) - 1:
            expected = torch.relu(expected)
    model = build_modular_mlp_sections(weights, dtype=torch.float64)
    with torch.no_grad():
        out = model.activations(x)["output"][:, 0]
    assert out.dtype == torch.float64
    scale = float(expected.abs().max())
    tol = 1e3 * torch.finfo(torch.float64).eps * scale
    torch.testing.assert_close(out, expected, rtol=0, atol=tol)
    torch.testing.assert_close(
        modular_mlp_forward(weights, x.to(torch.float64), "relu"), expected, rtol=0, atol=tol
    )
