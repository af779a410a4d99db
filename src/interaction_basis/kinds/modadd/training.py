"""Training the mod-add transformer (``training.modadd``) and its accuracies."""

import torch

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._classifier import classifier_accuracies
from interaction_basis.kinds.data import TaskData
from interaction_basis.kinds.modadd.network import build_model, default_node_layers
from interaction_basis.kinds.training import TrainedModel


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    from interaction_basis.training.modadd import train_modadd

    r = train_modadd(cfg.train, num_threads=threads)
    return TrainedModel(r.weights, r.history, r.train_accuracy, r.test_accuracy)


def accuracies(cfg: ModelConfig, weights, data: TaskData) -> dict[str, float]:
    model = build_model(cfg, weights, default_node_layers(cfg, weights), torch.float32, None)
    return classifier_accuracies(model, data)
