"""The planted-module MLP is constructed from its settings, not trained."""

from interaction_basis.config import ModelConfig
from interaction_basis.kinds.data import TaskData
from interaction_basis.kinds.training import TrainedModel
from interaction_basis.models.modular_mlp import build_modular_mlp_weights


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    """Constructed from its settings: no history, no accuracies (it has no labels)."""
    nan = float("nan")
    return TrainedModel(build_modular_mlp_weights(cfg.modular_mlp), [], nan, nan)
