"""The held-out images as thumbnails on the explorer's cards."""

from interaction_basis.config import ModelConfig
from interaction_basis.kinds.mlp.data import load_image_dataset


def thumbnails(cfg: ModelConfig, samples: set[int]) -> dict[int, str]:
    """PNG thumbnails of the held-out images shown on the explorer's cards."""
    from interaction_basis.data.images import thumbnail_uri

    ds = load_image_dataset(cfg.data)
    return {s: thumbnail_uri(ds.x_test[s].reshape(ds.image_shape).numpy()) for s in sorted(samples)}
