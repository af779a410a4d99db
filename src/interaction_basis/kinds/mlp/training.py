"""Training the image MLP (``training.mlp``) and its accuracies."""

import torch

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._classifier import classifier_accuracies
from interaction_basis.kinds.data import TaskData
from interaction_basis.kinds.mlp.network import build_model, default_node_layers
from interaction_basis.kinds.training import TrainedModel


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    from interaction_basis.training.mlp import train_mlp

    r = train_mlp(
        cfg.mlp,
        data.train_inputs,
        data.train_labels,
        data.test_inputs,
        data.test_labels,
        num_threads=threads,
    )
    history = [
        {
            "epoch": h["epoch"],
            "train_loss": h["train_loss"],
            "test_loss": h["test_loss"],
            "test_acc": h["test_accuracy"],
        }
        for h in r.history
    ]
    return TrainedModel(dict(r.state), history, r.train_accuracy, r.test_accuracy)


def accuracies(cfg: ModelConfig, weights, data: TaskData) -> dict[str, float]:
    model = build_model(cfg, weights, default_node_layers(cfg, weights), torch.float32, None)
    return classifier_accuracies(model, data)
