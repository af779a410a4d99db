"""Concern ``training``: training a kind from its config, and its accuracies for metrics.json."""

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._concern import implementation

if TYPE_CHECKING:
    import numpy as np

    from interaction_basis.kinds.data import TaskData


class TrainedModel(NamedTuple):
    weights: dict[str, "np.ndarray"]
    history: list[dict]
    train_accuracy: float
    test_accuracy: float


@runtime_checkable
class Training(Protocol):
    def train(self, cfg: ModelConfig, data: "TaskData", threads: int) -> TrainedModel:
        """Train from the config (rule train_model); kinds that cannot train raise ValueError."""
        ...

    def accuracies(self, cfg: ModelConfig, weights: Any, data: "TaskData") -> dict[str, float]:
        """Train and test accuracy for metrics.json ({} where it has no meaning)."""
        ...


class Defaults:
    @staticmethod
    def accuracies(cfg: ModelConfig, weights: Any, data: "TaskData") -> dict[str, float]:
        return {}


MEMBERS = ("train", "accuracies")


def get(kind: str) -> Training:
    return cast(Training, implementation(kind, "training", MEMBERS, Defaults))
