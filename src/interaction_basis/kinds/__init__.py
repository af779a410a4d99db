"""Model kinds: everything a stage needs to know about an architecture, behind one protocol.

Each kind (``model.kind`` in the config) is one module of this package implementing
:class:`ModelKind` with module-level names; stages call ``kinds.get(cfg.kind).<name>`` and
never name a kind. To add an architecture:

1. write ``kinds/<name>.py`` implementing :class:`ModelKind` (its network goes in ``models/``);
2. add ``"<name>": "interaction_basis.kinds.<name>"`` to :data:`KINDS`, and the name (and any
   settings section of its own) to ``ModelConfig`` in ``config.py``.

Stages never import a kind module: :func:`get` imports it by name, and the workflow adds each
experiment's kind module (with its imports) to that experiment's code inputs
(``planning.stage_code``), so editing one kind reruns only its experiments.
"""

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from interaction_basis.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

    from interaction_basis.graph.clustering import Modules
    from interaction_basis.lib.records import Basis
    from interaction_basis.models.sectioned import SectionedModel

#: Kind name -> module implementing :class:`ModelKind`.
KINDS = {
    "modadd": "interaction_basis.kinds.modadd",
    "mlp": "interaction_basis.kinds.mlp",
    "hf": "interaction_basis.kinds.hf",
    "modular_mlp": "interaction_basis.kinds.modular_mlp",
}


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


class TrainedModel(NamedTuple):
    weights: dict[str, "np.ndarray"]
    history: list[dict]
    train_accuracy: float
    test_accuracy: float


class HeldOut(NamedTuple):
    """The held-out inputs features are described on."""

    inputs: "Tensor"
    description: str
    labels: list[str] | None  # names of the output classes, where they have names


class PlantedBlocks(NamedTuple):
    """The known answer of a network with planted modules (lib_spec H)."""

    blocks: "np.ndarray"  # (width,) the planted block of each coordinate
    mixings: dict[str, "np.ndarray | None"]  # per node layer: its orthogonal mixing, or None


@runtime_checkable
class ModelKind(Protocol):
    """One architecture: its data, its network as a sectioned model, training, and what it can
    say about features and modules. ``weights`` is whatever :meth:`load_weights` returns (a
    weights.npz dict, or a loaded Hugging Face model); only the kind itself looks inside."""

    #: Whether the model gains from a GPU (``extract.device: auto`` uses CUDA only then).
    USES_GPU: bool
    #: Whether inputs are token sequences (features are described with token windows).
    TEXT: bool

    def load_weights(self, cfg: ModelConfig, path: str) -> Any:
        """The network at ``path``: results/.../weights.npz, or a downloaded model folder."""
        ...

    def validate_weights(self, cfg: ModelConfig, weights: Mapping, source: str) -> None:
        """Raise a ValueError naming ``source`` and the fix if ``weights`` cannot be imported."""
        ...

    def load_data(self, cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
        """The task's inputs (language models read their token chunks from ``tokens_path``)."""
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
        """The bias-folded sectioned model (lib_spec A.1) cut at ``node_layers``."""
        ...

    def train(self, cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
        """Train from the config (rule train_model); kinds that cannot train raise ValueError."""
        ...

    def accuracies(self, cfg: ModelConfig, weights: Any, data: TaskData) -> dict[str, float]:
        """Train and test accuracy for metrics.json ({} where it has no meaning)."""
        ...

    def held_out(
        self, cfg: ModelConfig, tokens_path: str | None, max_samples: int | None
    ) -> HeldOut:
        """At most ``max_samples`` held-out inputs, for the feature descriptions."""
        ...

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

    def planted_blocks(self, cfg: ModelConfig, weights: Any, layers: list[str]) -> Any:
        """The :class:`PlantedBlocks` of ``layers`` where the network has planted modules
        (``ModelConfig.planted``), else None."""
        ...


_MEMBERS = [n for n in ModelKind.__dict__ if not n.startswith("_")] + ["USES_GPU", "TEXT"]


def get(kind: str) -> ModelKind:
    """The module implementing ``kind`` (imported on first use)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; supported: {', '.join(KINDS)}.")
    module = importlib.import_module(KINDS[kind])
    if not isinstance(module, ModelKind):  # names only: signatures are the type checker's
        missing = [n for n in _MEMBERS if not hasattr(module, n)]
        raise TypeError(f"{KINDS[kind]} does not implement ModelKind: it lacks {missing}.")
    return module


def build_model(
    cfg: ModelConfig, weights: Any, node_layers: list[str] | None, dtype: str, device: str = "cpu"
) -> "SectionedModel":
    """The kind's sectioned model: ``node_layers`` (null: the kind's default), ``dtype`` and
    ``device`` as in the config (``extract.device``, see :func:`resolve_device`)."""
    from interaction_basis.models import DTYPES

    kind = get(cfg.kind)
    layers = node_layers or kind.default_node_layers(cfg, weights)
    return kind.build_model(cfg, weights, layers, DTYPES[dtype], resolve_device(device, cfg.kind))


def load_model(
    cfg: ModelConfig,
    weights_path: str,
    node_layers: list[str] | None,
    dtype: str,
    device: str = "cpu",
) -> "SectionedModel":
    """:func:`build_model` of the network at ``weights_path`` (see ``ModelKind.load_weights``)."""
    weights = get(cfg.kind).load_weights(cfg, weights_path)
    return build_model(cfg, weights, node_layers, dtype, device)


def resolve_device(name: str, kind: str) -> "torch.device":
    """``extract.device`` as a torch device: ``auto`` is CUDA for kinds that gain from a GPU
    (language models) when torch sees one; the toy models (mod-add, MLP) use the CPU."""
    import torch

    cpu = torch.device("cpu")
    if name == "cpu":
        return cpu
    if not get(kind).USES_GPU:
        if name == "auto":
            return cpu
        raise ValueError(
            f"extract.device {name!r} is for language models (model.kind hf); {kind} models "
            "run on the CPU: set extract.device to auto or cpu."
        )
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "auto":
        return cpu
    raise ValueError(
        f"extract.device is {name!r} but torch sees no CUDA device (torch {torch.__version__}, "
        f"CUDA build: {torch.version.cuda}); set extract.device to auto or cpu, or install a "
        "CUDA build of torch on the GPU nodes."
    )
