"""Stage 1: the model, trained from the config or imported from an existing weights.npz."""

import logging
import os

from interaction_basis import storage
from interaction_basis.config import ModelConfig
from interaction_basis.kinds import data, network, training
from interaction_basis.report.training_curve import plot_training_curve

log = logging.getLogger(__name__)


def _curve(history: list, path: str) -> None:
    with storage.atomic_figure_path(path) as tmp:
        plot_training_curve(history, tmp)


def train_model(
    model: ModelConfig, weights: str, metrics: str, curve: str, threads: int = 1
) -> None:
    """Train the configured model; save weights, accuracies and the loss curve."""
    task = data.get(model.kind).load_data(model)
    result = training.get(model.kind).train(model, task, threads)
    log.info("trained: train acc %.6f, test acc %.6f", result.train_accuracy, result.test_accuracy)
    storage.write_weights(weights, result.weights)
    record = {
        "source": "trained",
        **training.get(model.kind).accuracies(model, result.weights, task),
        "history": result.history,
    }
    storage.write_json(metrics, record)
    _curve(result.history, curve)


def import_model(
    model: ModelConfig, weights_in: str, weights: str, metrics: str, curve: str
) -> None:
    """Validate existing weights, copy them into results and record their accuracy."""
    arrays = storage.read_weights(weights_in)
    network.get(model.kind).validate_weights(model, arrays, weights_in)
    arrays = {k: v for k, v in arrays.items() if not k.endswith(storage.NON_PARAMETER_BUFFERS)}
    storage.write_weights(weights, arrays)
    record = {
        "source": os.path.abspath(weights_in),
        **training.get(model.kind).accuracies(model, arrays, data.get(model.kind).load_data(model)),
        "history": [],
    }
    log.info("imported %s: %s", weights_in, record)
    storage.write_json(metrics, record)
    _curve([], curve)
