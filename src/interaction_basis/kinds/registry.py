"""The one registry of model kinds: what each reads from the config and what it is.

A kind ``<name>`` is the package ``kinds/<name>/`` with one module per concern (see
``kinds/__init__.py``); this table is the only other place that names it. The config's
``model.kind`` choices, the settings sections each kind's jobs record, and the workflow's
download and ground-truth rules all read it. Plain data, no imports: the config and the
planner read it while Snakemake plans.
"""

from collections.abc import Callable
from typing import Any, NamedTuple


def _unknown(model: Any) -> None:
    return None


class Kind(NamedTuple):
    #: The sections of ``model`` the kind reads (``weights``: an existing weights.npz to import;
    #: ``hub``: downloaded by rules download_model, download_dataset and tokenize_dataset).
    sections: tuple[str, ...]
    description: str
    #: Whether the model gains from a GPU (``extract.device: auto`` uses CUDA only then).
    uses_gpu: bool = False
    #: Whether inputs are token sequences (features are described with token windows).
    text: bool = False
    #: Whether the network has planted modules to score against (rule score_ground_truth).
    planted: bool = False
    #: The node layers the kind's network has, from its ``model`` config alone (``None``: known
    #: only once the weights load), so that a misspelt ``extract.node_layers`` fails before any
    #: job runs. ``kinds/<name>/network.py`` builds exactly these (a unit test checks it).
    node_layer_names: Callable[[Any], tuple[str, ...] | None] = _unknown


def _numbered(n_linear: int) -> tuple[str, ...]:
    return (*(f"layers.{i}" for i in range(n_linear)), "output")


def _mlp_layers(model: Any) -> tuple[str, ...] | None:
    # An imported MLP's depth is that of its weights, not of the training settings.
    return None if model.weights is not None else _numbered(len(model.mlp.hidden_sizes) + 1)


KINDS: dict[str, Kind] = {
    "modadd": Kind(
        ("weights", "train"),
        "the paper's 1-layer transformer",
        node_layer_names=lambda model: ("ln1.0", "ln2.0", "unembed", "output"),
    ),
    "mlp": Kind(
        ("weights", "mlp", "data"), "an image-classifier MLP", node_layer_names=_mlp_layers
    ),
    "hf": Kind(
        ("hub", "text"), "a GPT-2/GPT-Neo/GPT-NeoX causal LM from the hub", uses_gpu=True, text=True
    ),
    "modular_mlp": Kind(
        ("modular_mlp", "block_vector"),
        "the planted-module MLP of method §H, constructed, on block vectors",
        planted=True,
        node_layer_names=lambda model: _numbered(model.modular_mlp.n_hidden_layers + 1),
    ),
}

#: What a kind implements, one module each (``kinds/<name>/<concern>.py``), behind the accessor
#: module ``kinds/<concern>.py`` that states the concern's protocol and defaults.
CONCERNS = ("network", "data", "training", "interpretation", "ground_truth")
