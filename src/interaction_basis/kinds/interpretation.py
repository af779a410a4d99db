"""Concern ``interpretation``: what a kind can say about its features and modules beyond the generic
evidence (module labels, extra per-feature arrays, a tokenizer, image thumbnails)."""

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._concern import implementation

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from interaction_basis.graph.clustering import Modules
    from interaction_basis.lib.records import Basis
    from interaction_basis.models.sectioned import SectionedModel


@runtime_checkable
class Interpretation(Protocol):
    def label_modules(
        self,
        cfg: ModelConfig,
        network: Callable[[], tuple["SectionedModel", Mapping[str, "Basis"]]],
        modules: "Modules",
    ) -> list[dict] | None:
        """Per module, JSON fields to add to its record in modules.json (mod-add:
        ``{"frequency": {"frequency", "share", "n_labelled"}}``); None where the kind can say
        nothing. ``network()`` loads the model and the bases (only kinds that label call it)."""
        ...

    def add_feature_evidence(
        self,
        cfg: ModelConfig,
        model: "SectionedModel",
        bases: Mapping[str, "Basis"],
        evidence: dict[str, dict],
        inputs: "Tensor",
    ) -> None:
        """Add kind-specific evidence (arrays keyed like ``features.zarr`` variables) to each
        layer's ``evidence``."""
        ...

    def tokenizer(self, cfg: ModelConfig, weights_path: str) -> Any:
        """The tokenizer that names token ids, or None."""
        ...

    def thumbnails(self, cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
        """Image data URIs of held-out samples for the explorer's cards ({} if not images)."""
        ...

    def final_readout(
        self, cfg: ModelConfig, weights_path: str, dtype: str, device: "torch.device | None"
    ) -> Any:
        """Language models: the final LayerNorm and unembedding (an
        ``interpret.features.FinalReadout``) that give residual-stream features a direct
        effect; None for other kinds."""
        ...


class Defaults:
    """A kind that says nothing beyond the generic evidence."""

    @staticmethod
    def label_modules(cfg: ModelConfig, network, modules) -> None:
        return None

    @staticmethod
    def add_feature_evidence(cfg: ModelConfig, model, bases, evidence, inputs) -> None:
        pass

    @staticmethod
    def tokenizer(cfg: ModelConfig, weights_path: str) -> None:
        return None

    @staticmethod
    def thumbnails(cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
        return {}

    @staticmethod
    def final_readout(
        cfg: ModelConfig, weights_path: str, dtype: str, device: "torch.device | None"
    ) -> None:
        return None


MEMBERS = ("label_modules", "add_feature_evidence", "tokenizer", "thumbnails", "final_readout")


def get(kind: str) -> Interpretation:
    return cast(Interpretation, implementation(kind, "interpretation", MEMBERS, Defaults))
