"""Kind ``mlp``: a fully connected image classifier (lib_spec B.2) on a local or hub dataset."""

from collections.abc import Mapping

import numpy as np
import torch

from interaction_basis.config import ImageDataConfig, ModelConfig
from interaction_basis.kinds import HeldOut, TaskData, TrainedModel
from interaction_basis.kinds._classifier import classifier_accuracies
from interaction_basis.models.mlp import build_mlp_sections, validate_mlp_weights
from interaction_basis.models.sectioned import SectionedModel

USES_GPU = False
TEXT = False


def load_weights(cfg: ModelConfig, path: str) -> dict[str, np.ndarray]:
    from interaction_basis import storage

    return storage.read_weights(path)


def validate_weights(cfg: ModelConfig, weights: Mapping, source: str) -> None:
    validate_mlp_weights(weights, source=source)


def load_image_dataset(cfg: ImageDataConfig):
    """The configured image dataset (local or hub); the only place that picks a loader."""
    from interaction_basis.data import images

    if cfg.source == "digits":
        return images.load_digits_dataset(
            test_fraction=cfg.test_fraction, seed=cfg.split_seed, normalize=cfg.normalize
        )
    if cfg.source in ("cifar10", "mnist"):
        if cfg.path is None:
            raise ValueError(
                f"data.source {cfg.source!r} needs data.path (a local folder or file)."
            )
        if cfg.source == "cifar10":
            md5 = images.CIFAR10_MD5 if cfg.verify_checksum else None
            return images.load_cifar10_archive(cfg.path, md5=md5, normalize=cfg.normalize)
        files = images.MNIST_FILES if cfg.verify_checksum else None
        return images.load_mnist_idx(cfg.path, md5=files, normalize=cfg.normalize)
    if cfg.name is None:
        raise ValueError("data.source 'hub' needs data.name (a datasets id, e.g. uoft-cs/cifar10).")
    return images.load_hub_image_dataset(cfg.name, revision=cfg.revision, normalize=cfg.normalize)


def load_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
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


def default_node_layers(cfg: ModelConfig, weights) -> list[str]:
    n_linear = len(validate_mlp_weights(weights)[1]) + 1
    return [f"layers.{i}" for i in range(n_linear)] + ["output"]


def build_model(cfg, weights, node_layers, dtype, device) -> SectionedModel:
    return build_mlp_sections(weights, node_layers, dtype, activation=cfg.mlp.activation)


def train(cfg: ModelConfig, data: TaskData, threads: int) -> TrainedModel:
    from interaction_basis.training.mlp import train_mlp

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


def accuracies(cfg: ModelConfig, weights, data: TaskData) -> dict[str, float]:
    model = build_model(cfg, weights, default_node_layers(cfg, weights), torch.float32, None)
    return classifier_accuracies(model, data)


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    ds = load_image_dataset(cfg.data)
    return HeldOut(ds.x_test[:max_samples], f"{ds.source}, test split", list(ds.class_names))


def label_modules(cfg: ModelConfig, network, modules) -> None:
    return None


def add_feature_evidence(cfg: ModelConfig, model, bases, evidence, inputs) -> None:
    pass


def tokenizer(cfg: ModelConfig, weights_path: str) -> None:
    return None


def thumbnails(cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
    """PNG thumbnails of the held-out images shown on the explorer's cards."""
    from interaction_basis.interpret.explorer import thumbnail_uri

    ds = load_image_dataset(cfg.data)
    return {s: thumbnail_uri(ds.x_test[s].reshape(ds.image_shape).numpy()) for s in sorted(samples)}


def planted_blocks(cfg: ModelConfig, weights, layers: list[str]) -> None:
    return None
