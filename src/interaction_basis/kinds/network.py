"""Concern ``network``: loading a kind's weights and building its sectioned model."""

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from interaction_basis.config import ModelConfig
from interaction_basis.kinds._concern import implementation

if TYPE_CHECKING:
    import numpy as np
    import torch

    from interaction_basis.models.sectioned import SectionedModel


@runtime_checkable
class Network(Protocol):
    """``weights`` is whatever :meth:`load_weights` returns (a weights.npz dict, or a loaded
    Hugging Face model); only the kind itself looks inside."""

    def load_weights(self, cfg: ModelConfig, path: str) -> Any:
        """The network at ``path``: results/.../weights.npz, or a downloaded model folder."""
        ...

    def validate_weights(self, cfg: ModelConfig, weights: Mapping, source: str) -> None:
        """Raise a ValueError naming ``source`` and the fix if ``weights`` cannot be imported."""
        ...

    def default_node_layers(self, cfg: ModelConfig, weights: Any) -> list[str]:
        """Node layers when ``extract.node_layers`` is null, in forward order."""
        ...

    def build_model(
        self,
        cfg: ModelConfig,
        weights: Any,
        node_layers: list[str],
        dtype: "torch.dtype",
        device: "torch.device",
    ) -> "SectionedModel":
        """The bias-folded sectioned model (method §A.1) cut at ``node_layers``."""
        ...


class Defaults:
    @staticmethod
    def load_weights(cfg: ModelConfig, path: str) -> dict[str, "np.ndarray"]:
        """A weights.npz written by rule train_model or import_model."""
        from interaction_basis import storage

        return storage.read_weights(path)


MEMBERS = ("load_weights", "validate_weights", "default_node_layers", "build_model")


def get(kind: str) -> Network:
    return cast(Network, implementation(kind, "network", MEMBERS, Defaults))


def build_model(
    cfg: ModelConfig,
    weights: Any,
    node_layers: list[str] | None,
    dtype: str,
    device: "torch.device | None" = None,
) -> "SectionedModel":
    """The kind's sectioned model: ``node_layers`` (null: the kind's default) and ``dtype`` as
    in the config, its weights on ``device`` (the stage's, from
    :func:`interaction_basis.stages.common.resolve_device`; None: the CPU)."""
    import torch

    from interaction_basis.models import DTYPES

    kind = get(cfg.kind)
    layers = node_layers or kind.default_node_layers(cfg, weights)
    return kind.build_model(cfg, weights, layers, DTYPES[dtype], device or torch.device("cpu"))


def load_model(
    cfg: ModelConfig,
    weights_path: str,
    node_layers: list[str] | None,
    dtype: str,
    device: "torch.device | None" = None,
) -> "SectionedModel":
    """:func:`build_model` of the network at ``weights_path`` (see ``Network.load_weights``)."""
    weights = get(cfg.kind).load_weights(cfg, weights_path)
    return build_model(cfg, weights, node_layers, dtype, device)
