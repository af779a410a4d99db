"""Mod-add training: the fast forward, determinism, output format and config validation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from interaction_basis.data.modadd import build_modadd_dataset
from interaction_basis.models.modadd import (
    ModAddTransformer,
    modadd_shapes,
    validate_modadd_weights,
)
from interaction_basis.training.modadd import (
    ModAddTrainConfig,
    TrainResult,
    _last_position_logits,
    train_modadd,
)

TINY = dict(modulus=13, d_model=16, n_heads=2, d_head=8, d_mlp=32, frac_train=0.5)


def tiny_config(**overrides) -> ModAddTrainConfig:
    fields = dict(
        TINY, n_epochs=30, lr=3e-2, weight_decay=1.0, eval_every=10, target_test_accuracy=None
    )
    return ModAddTrainConfig(**(fields | overrides))


def test_last_position_logits_matches_forward():
    model = ModAddTransformer(d_vocab=14, d_model=16, n_heads=2, d_head=8, d_mlp=32, seed=3)
    tokens, _ = build_modadd_dataset(13)
    with torch.no_grad():
        expected = model(tokens)[:, -1]
        got = _last_position_logits(model, F.one_hot(tokens, 14).float())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_train_modadd_runs_and_is_deterministic():
    cfg = tiny_config()
    first = train_modadd(cfg, progress=False)
    second = train_modadd(cfg, progress=False)

    assert isinstance(first, TrainResult)
    assert first.weights.keys() == second.weights.keys()
    for name in first.weights:
        np.testing.assert_array_equal(first.weights[name], second.weights[name], err_msg=name)
    assert first.history == second.history


def test_train_modadd_output_format_and_loss_decreases():
    result = train_modadd(tiny_config(), progress=False)

    reference = ModAddTransformer(d_vocab=14, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    assert result.weights.keys() == reference.state_arrays().keys()
    expected = modadd_shapes(d_vocab=14, n_ctx=3, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    for name, array in result.weights.items():
        assert array.dtype == np.float32, name
        assert array.shape == expected[name], name
    validate_modadd_weights(result.weights)

    assert [row["epoch"] for row in result.history] == [0, 10, 20, 30]
    assert set(result.history[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"}
    losses = [row["train_loss"] for row in result.history]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.75 * losses[0], losses
    assert result.train_accuracy == result.history[-1]["train_acc"]
    assert result.test_accuracy == result.history[-1]["test_acc"]
    assert 0 <= result.test_accuracy <= 1


def test_train_modadd_stops_early_at_target():
    full = train_modadd(tiny_config(n_epochs=60, eval_every=5), progress=False)
    accs = [row["test_acc"] for row in full.history]
    # The best accuracy held for two evaluations in a row: training to it must stop at the
    # first such pair, with the history a prefix of the full run's.
    target = max(min(a, b) for a, b in zip(accs[1:], accs[2:]))
    assert target > 0
    stop = next(i for i in range(2, len(accs)) if min(accs[i - 1], accs[i]) >= target)

    cfg = tiny_config(n_epochs=60, eval_every=5, target_test_accuracy=target, patience=2)
    result = train_modadd(cfg, progress=False)
    assert result.history == full.history[: stop + 1]
    assert result.test_accuracy >= target


def test_train_modadd_last_epoch_is_evaluated():
    result = train_modadd(tiny_config(n_epochs=25), progress=False)
    assert [row["epoch"] for row in result.history] == [0, 10, 20, 25]


def test_train_modadd_num_threads_is_restored():
    before = torch.get_num_threads()
    train_modadd(tiny_config(n_epochs=2), progress=False, num_threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        train_modadd(tiny_config(n_epochs=2), progress=False, num_threads=0)


def test_train_modadd_raises_on_divergence():
    with pytest.raises(FloatingPointError, match="diverged"):
        train_modadd(tiny_config(lr=1e30, warmup_steps=0, n_epochs=10), progress=False)


@pytest.mark.parametrize(
    "bad",
    [
        dict(frac_train=1.5),
        dict(frac_train=0.0),
        dict(n_epochs=0),
        dict(lr=0.0),
        dict(weight_decay=-1.0),
        dict(betas=(0.9, 1.0)),
        dict(eval_every=0),
        dict(target_test_accuracy=1.5),
        dict(modulus=1),
        dict(learning_rate=1e-3),  # unknown field
    ],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValidationError):
        ModAddTrainConfig(**bad)


def test_config_is_frozen_and_documented():
    cfg = ModAddTrainConfig()
    with pytest.raises(ValidationError):
        cfg.lr = 1.0
    for name, field in ModAddTrainConfig.model_fields.items():
        assert field.description, name
    # The architecture the rest of the pipeline assumes (method §B.1).
    assert (cfg.modulus, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (113, 128, 4, 32, 512)
