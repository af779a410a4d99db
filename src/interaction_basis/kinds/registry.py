"""The one registry of model kinds: what each reads from the config and what it is.

A kind ``<name>`` is the package ``kinds/<name>/`` with one module per concern (see
``kinds/__init__.py``); this table is the only other place that names it. The config's
``model.kind`` choices, the settings sections each kind's jobs record, and the workflow's
download and ground-truth rules all read it. Plain data, no imports: the config and the
planner read it while Snakemake plans.
"""

from typing import NamedTuple


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


KINDS: dict[str, Kind] = {
    "modadd": Kind(("weights", "train"), "the paper's 1-layer transformer"),
    "mlp": Kind(("weights", "mlp", "data"), "an image-classifier MLP"),
    "hf": Kind(
        ("hub", "text"), "a GPT-2/GPT-Neo/GPT-NeoX causal LM from the hub", uses_gpu=True, text=True
    ),
    "modular_mlp": Kind(
        ("modular_mlp", "block_vector"),
        "the planted-module MLP of method §H, constructed, on block vectors",
        planted=True,
    ),
}

#: What a kind implements, one module each (``kinds/<name>/<concern>.py``), behind the accessor
#: module ``kinds/<concern>.py`` that states the concern's protocol and defaults.
CONCERNS = ("network", "data", "training", "interpretation", "ground_truth")
