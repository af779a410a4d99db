"""Train the digits MLP in-process, then cut it into sections and build LIB on it."""

import numpy as np
import pydantic
import pytest
import torch

from factories import full_build
from interaction_basis.data.images import load_digits_dataset
from interaction_basis.models.mlp import MLP, build_mlp_sections
from interaction_basis.training.mlp import MLPTrainConfig, train_mlp
from invariants import assert_final_linear_edges, assert_uncorrelated, assert_whitened_gradients

#: The reference CIFAR-10 optimiser (Adam 1e-3, batch 64, 2×100 ReLU) with more epochs:
#: 96.7-98.3 % test accuracy over seeds 0-4, ~2 s on one CPU thread.
DIGITS_CONFIG = MLPTrainConfig(hidden_sizes=(100, 100), epochs=30, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    return train_mlp(
        DIGITS_CONFIG,
        digits.x_train,
        digits.y_train,
        digits.x_test,
        digits.y_test,
        progress=False,
        num_threads=1,
    )


@pytest.mark.slow
def test_digits_mlp_reaches_95_percent(trained, digits):
    assert trained.test_accuracy >= 0.95, trained.history[-1]
    assert trained.train_accuracy >= trained.test_accuracy - 0.05
    assert len(trained.history) == DIGITS_CONFIG.epochs
    steps = DIGITS_CONFIG.epochs * int(np.ceil(len(digits.x_train) / DIGITS_CONFIG.batch_size))
    assert trained.step_loss.shape == (steps,)
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"] / 5
    assert trained.state["layers.0.W"].shape == (64, 100)
    assert trained.state["layers.2.W"].shape == (100, 10)


@pytest.mark.slow
def test_sectioned_digits_mlp_gives_the_same_predictions(trained, digits):
    model = build_mlp_sections(trained.state, activation=DIGITS_CONFIG.activation)
    logits = model.activations(digits.x_test.double())["output"][:, 0]
    module = MLP.from_state_arrays(trained.state)
    with torch.no_grad():
        torch.testing.assert_close(logits.float(), module(digits.x_test), rtol=1e-4, atol=1e-4)
    accuracy = (logits.argmax(-1) == digits.y_test).double().mean()
    assert float(accuracy) == pytest.approx(trained.test_accuracy, abs=1e-12)


@pytest.mark.slow
def test_lib_on_the_trained_digits_mlp(trained, digits):
    model = build_mlp_sections(trained.state)
    inputs = digits.x_train[:400].double()
    acts, stats, bases, m_dash, edges = full_build(model, inputs, "lib", batch_size=200)
    # Some border pixels are always 0: their directions have zero variance and are dropped.
    assert bases["layers.0"].C.shape[1] < 65
    for layer in model.node_layers[:-1]:
        assert_uncorrelated(bases[layer], stats[layer])
        assert_whitened_gradients(bases[layer], m_dash[layer])
    assert_final_linear_edges(edges[("layers.2", "output")], bases["layers.2"], acts["output"])


def test_training_is_deterministic_and_validates_inputs(digits):
    cfg = MLPTrainConfig(hidden_sizes=(8,), epochs=1, batch_size=128, seed=3)
    x, y = digits.x_train[:300], digits.y_train[:300]
    a = train_mlp(cfg, x, y, digits.x_test, digits.y_test, progress=False, num_threads=1)
    b = train_mlp(cfg, x, y, digits.x_test, digits.y_test, progress=False, num_threads=1)
    for name in a.state:
        np.testing.assert_array_equal(a.state[name], b.state[name])
    assert a.test_accuracy == b.test_accuracy and len(a.step_loss) == 3
    # Another thread count sums in another order: float32 last bits move (1.0e-7 relative
    # measured after these 3 Adam steps under MKL_CBWR=COMPATIBLE with 2 threads).
    c = train_mlp(cfg, x, y, digits.x_test, digits.y_test, progress=False)
    for name in a.state:
        np.testing.assert_allclose(a.state[name], c.state[name], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="labels range over"):
        train_mlp(cfg, x, y + 5, digits.x_test, digits.y_test, progress=False, n_classes=10)
    # jaxtyping's shape check fires first under the test hook; ValueError in production.
    with pytest.raises((ValueError, TypeError), match="64 features but test inputs 63|feature"):
        train_mlp(cfg, x, y, digits.x_test[:, :63], digits.y_test, progress=False)


def test_train_config_is_strict_and_documented():
    cfg = MLPTrainConfig()
    assert (cfg.hidden_sizes, cfg.activation, cfg.lr, cfg.batch_size) == (
        (100, 100),
        "relu",
        1e-3,
        64,
    )
    assert all(f.description for f in MLPTrainConfig.model_fields.values())
    with pytest.raises(pydantic.ValidationError, match="extra"):
        MLPTrainConfig(hiden_sizes=(10,))
    with pytest.raises(pydantic.ValidationError):
        MLPTrainConfig(lr=0.0)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.epochs = 3
    assert MLPTrainConfig.model_validate({"hidden_sizes": [40, 40]}).hidden_sizes == (40, 40)
