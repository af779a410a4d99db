"""The configured image dataset (digits, CIFAR-10, MNIST, or a hub dataset)."""

from interaction_basis.config import ImageDataConfig, ModelConfig
from interaction_basis.kinds.data import HeldOut, TaskData


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


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    ds = load_image_dataset(cfg.data)
    return HeldOut(ds.x_test[:max_samples], f"{ds.source}, test split", list(ds.class_names))
