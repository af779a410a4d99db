"""What each model kind needs besides its weights: data splits, training and evaluation.

A task is chosen by ``ModelConfig.kind``; stages only talk to these functions, so a new kind
(an HF language model, say) plugs in here and in ``models/`` without touching the stages.
"""

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from interaction_basis.config import ImageDataConfig, ModelConfig
from interaction_basis.data import build_modadd_dataset, compute_modadd_split
from interaction_basis.models import load_sectioned_model
from interaction_basis.models.mlp import validate_mlp_weights
from interaction_basis.models.modadd import MODADD_NODE_LAYERS, validate_modadd_weights

if TYPE_CHECKING:
    from interaction_basis.io import TokenRows


class LazyInputs:
    """Language-model inputs read a slice at a time (``inputs[a:b]``: a tensor), so that a large
    set of statistics chunks never sits in memory whole."""

    def __init__(self, rows: "TokenRows"):
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, rows: slice) -> Tensor:
        return torch.from_numpy(self._rows[rows][:, :-1])


class TaskData(NamedTuple):
    """Raw model inputs: LIB is fitted on ``fit_inputs`` (and its statistics on
    ``stats_inputs`` when given); evaluations use the test split."""

    fit_inputs: Tensor
    train_inputs: Tensor
    train_labels: Tensor
    test_inputs: Tensor
    test_labels: Tensor
    description: str
    stats_inputs: LazyInputs | None = None  # the means and Grams' own inputs, if any


class TrainedModel(NamedTuple):
    weights: dict[str, np.ndarray]
    history: list[dict]
    train_accuracy: float
    test_accuracy: float


def load_image_dataset(cfg: ImageDataConfig):
    """The configured image dataset (local or hub); the only place that picks a loader."""
    from interaction_basis import images

    if cfg.source == "digits":
        return images.load_digits_dataset(
            test_fraction=cfg.test_fraction, seed=cfg.split_seed, normalize=cfg.normalize
        )
    if cfg.source in ("cifar10", "mnist") and cfg.path is None:
        raise ValueError(f"data.source {cfg.source!r} needs data.path (a local folder or file).")
    if cfg.source == "cifar10":
        md5 = images.CIFAR10_MD5 if cfg.verify_checksum else None
        return images.load_cifar10_archive(cfg.path, md5=md5, normalize=cfg.normalize)
    if cfg.source == "mnist":
        md5 = images.MNIST_FILES if cfg.verify_checksum else None
        return images.load_mnist_idx(cfg.path, md5=md5, normalize=cfg.normalize)
    if cfg.name is None:
        raise ValueError("data.source 'hub' needs data.name (a datasets id, e.g. uoft-cs/cifar10).")
    return images.load_hub_image_dataset(cfg.name, revision=cfg.revision, normalize=cfg.normalize)


def load_task_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
    """The task's inputs; language models read their token chunks from ``tokens_path``."""
    if cfg.kind == "hf":
        if tokens_path is None:
            raise ValueError("kind 'hf' needs the tokenized dataset (rule tokenize_dataset).")
        from interaction_basis import io

        chunks = io.read_token_chunks(tokens_path)
        fit, held_out = (torch.from_numpy(chunks[name][:]) for name in ("fit", "eval"))
        return TaskData(
            fit[:, :-1],
            fit[:, :-1],
            fit[:, 1:],
            held_out[:, :-1],
            held_out[:, 1:],
            f"{cfg.text.source} ({len(fit)} chunks of {cfg.text.n_ctx} tokens)",
            LazyInputs(chunks["stats"]) if "stats" in chunks else None,
        )
    if cfg.kind == "modular_mlp":
        return _modular_mlp_task_data(cfg)
    if cfg.kind == "modadd":
        t = cfg.train
        tokens, labels = build_modadd_dataset(t.modulus)
        train, test = compute_modadd_split(len(labels), t.frac_train, t.data_seed)
        return TaskData(
            tokens[train],
            tokens[train],
            labels[train],
            tokens[test],
            labels[test],
            f"modular addition mod {t.modulus}, train split",
        )
    ds = load_image_dataset(cfg.data)
    fit = ds.x_train[: cfg.data.max_fit_samples] if cfg.data.max_fit_samples else ds.x_train
    return TaskData(
        fit,
        ds.x_train,
        ds.y_train,
        ds.x_test,
        ds.y_test,
        f"{ds.source}, train split ({len(fit)} samples)",
    )


def default_node_layers(cfg: ModelConfig, weights: Mapping[str, np.ndarray]) -> list[str]:
    if cfg.kind == "modular_mlp":
        return [f"layers.{i}" for i in range(cfg.modular_mlp.n_hidden_layers + 1)] + ["output"]
    if cfg.kind == "modadd":
        return list(MODADD_NODE_LAYERS)
    if cfg.kind == "hf":
        from interaction_basis.models.hf import hf_node_layers

        return hf_node_layers(weights["__model__"], "ln", final="unembed")
    n_linear = len(validate_mlp_weights(weights)[1]) + 1
    return [f"layers.{i}" for i in range(n_linear)] + ["output"]


def validate_weights(cfg: ModelConfig, weights: Mapping[str, np.ndarray], source: str) -> None:
    if cfg.kind == "modadd":
        validate_modadd_weights(weights, source=source)
    elif cfg.kind == "modular_mlp":
        from interaction_basis.models.modular_mlp import validate_modular_mlp_weights

        validate_modular_mlp_weights(weights, source=source)
    else:
        validate_mlp_weights(weights, source=source)


def build_model(
    cfg: ModelConfig,
    weights: Mapping,
    node_layers: list[str] | None,
    dtype: str,
    device: str = "cpu",
):
    """The sectioned model; ``weights`` is a weights.npz dict, or for kind 'hf'
    ``{"__model__": <the loaded HF model>}`` (see :func:`load_weights`). ``device`` is an
    ``extract.device`` value (:func:`~interaction_basis.models.resolve_device`)."""
    from interaction_basis.models import resolve_device

    target = resolve_device(device, cfg.kind)
    layers = node_layers or default_node_layers(cfg, weights)
    if cfg.kind == "hf":
        from interaction_basis.models import DTYPES
        from interaction_basis.models.hf import build_hf_sections

        return build_hf_sections(
            weights["__model__"].to(target),
            layers,
            DTYPES[dtype],
            fold_value_biases=cfg.hub.fold_value_biases,
        )
    activation = cfg.modular_mlp.activation_fn if cfg.kind == "modular_mlp" else cfg.mlp.activation
    return load_sectioned_model(cfg.kind, weights, layers, dtype, activation=activation)


def load_weights(cfg: ModelConfig, path: str) -> Mapping:
    """weights.npz arrays, or for kind 'hf' the model loaded from its downloaded folder."""
    from interaction_basis import io

    if cfg.kind == "hf":
        from interaction_basis.models.hf import load_hf_model

        return {"__model__": load_hf_model(path, torch.float64)}
    return io.read_weights(path)


def compute_accuracies(
    cfg: ModelConfig, weights: Mapping[str, np.ndarray], data: TaskData
) -> dict[str, float]:
    """Train and test accuracy of the bias-folded model in float32 (as the paper evaluates)."""
    if cfg.kind in ("hf", "modular_mlp"):  # no labels here
        return {}
    model = build_model(cfg, weights, None, "float32")
    out = {}
    with torch.no_grad():
        for name, x, y in (
            ("train", data.train_inputs, data.train_labels),
            ("test", data.test_inputs, data.test_labels),
        ):
            logits = model.forward_from(model.node_layers[0], model.embed(x))[:, -1]
            out[f"{name}_accuracy"] = float((logits.argmax(-1) == y).double().mean())
    return out


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    if cfg.kind == "modular_mlp":  # constructed from its settings, not trained
        from interaction_basis.models.modular_mlp import build_modular_mlp_weights

        nan = float("nan")
        return TrainedModel(build_modular_mlp_weights(cfg.modular_mlp), [], nan, nan)
    if cfg.kind == "modadd":
        from interaction_basis.train import train_modadd

        r = train_modadd(cfg.train, num_threads=threads)
        return TrainedModel(r.weights, r.history, r.train_accuracy, r.test_accuracy)
    from interaction_basis.train_mlp import train_mlp

    r = train_mlp(
        cfg.mlp,
        data.train_inputs,
        data.train_labels,
        data.test_inputs,
        data.test_labels,
        num_threads=threads,
    )
    history = [
        {
            "epoch": h["epoch"],
            "train_loss": h["train_loss"],
            "test_loss": h["test_loss"],
            "test_acc": h["test_accuracy"],
        }
        for h in r.history
    ]
    return TrainedModel(dict(r.state), history, r.train_accuracy, r.test_accuracy)


# --- kind modular_mlp (lib_spec H): block vectors, no labels, no held-out split -------------


def _modular_mlp_task_data(cfg: ModelConfig) -> TaskData:
    from interaction_basis.block_vectors import generate_block_vectors

    x = generate_block_vectors(cfg.block_vector)
    none = torch.empty(0, dtype=torch.long)
    b = cfg.block_vector
    return TaskData(x, x, none, x, none, f"{b.size} block vectors of length {b.length}")
