"""Concern ``data``: a kind's task inputs, and the held-out inputs features are described on."""

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._concern import implementation

if TYPE_CHECKING:
    from torch import Tensor


class TaskData(NamedTuple):
    """Raw model inputs: LIB is fitted on ``fit_inputs`` (and its statistics on
    ``stats_inputs`` when given); evaluations use the test split."""

    fit_inputs: "Tensor"
    train_inputs: "Tensor"
    train_labels: "Tensor"
    test_inputs: "Tensor"
    test_labels: "Tensor"
    description: str
    stats_inputs: Any = None  # the means and Grams' own inputs (sliceable to tensors), if any


class HeldOut(NamedTuple):
    """The held-out inputs features are described on."""

    inputs: "Tensor"
    description: str
    labels: list[str] | None  # names of the output classes, where they have names


@runtime_checkable
class Data(Protocol):
    def load_data(self, cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
        """The task's inputs (language models read their token chunks from ``tokens_path``)."""
        ...

    def held_out(
        self, cfg: ModelConfig, tokens_path: str | None, max_samples: int | None
    ) -> HeldOut:
        """At most ``max_samples`` held-out inputs, for the feature descriptions."""
        ...


MEMBERS = ("load_data", "held_out")


def get(kind: str) -> Data:
    return cast(Data, implementation(kind, "data", MEMBERS))
