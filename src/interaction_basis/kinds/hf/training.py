"""Language models are downloaded (model.hub), not trained by rule train_model."""

from interaction_basis.config import ModelConfig
from interaction_basis.kinds.data import TaskData
from interaction_basis.kinds.training import TrainedModel


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    raise ValueError("kind 'hf' is not trained by the workflow: it downloads model.hub.")
