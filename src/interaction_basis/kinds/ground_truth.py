"""Concern ``ground_truth``: the known answer of a network with planted modules (method §H)."""

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._concern import implementation

if TYPE_CHECKING:
    import numpy as np


class PlantedBlocks(NamedTuple):
    blocks: "np.ndarray"  # (width,) the planted block of each coordinate
    mixings: dict[str, "np.ndarray | None"]  # per node layer: its orthogonal mixing, or None
    constant: dict[str, bool]  # per node layer: whether it ends with the folded constant


@runtime_checkable
class GroundTruth(Protocol):
    def planted_blocks(
        self, cfg: ModelConfig, weights: Any, layers: list[str]
    ) -> PlantedBlocks | None:
        """The planted blocks of ``layers`` where the network has them, else None."""
        ...


class Defaults:
    @staticmethod
    def planted_blocks(cfg: ModelConfig, weights: Any, layers: list[str]) -> None:
        return None


MEMBERS = ("planted_blocks",)


def get(kind: str) -> GroundTruth:
    return cast(GroundTruth, implementation(kind, "ground_truth", MEMBERS, Defaults))
