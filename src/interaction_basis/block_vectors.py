"""Block vectors: the planted-module MLP's inputs (lib_spec H, reference ``block_vector``).

Gaussian vectors whose two coordinate blocks have their own scales, optionally perfectly
correlated within a block. The draws follow the reference exactly (same order, same dtype), so a
reference dataset config gives the same vectors here.
"""

from typing import Literal

import torch
from jaxtyping import Float
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class BlockVectorConfig(BaseModel):
    """The reference's ``block_vector`` dataset (lib_spec H); there are no labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(1000, ge=1, description="Number of vectors.")
    length: int = Field(4, ge=2, description="Length of each vector (the MLP's width).")
    first_block_length: int | None = Field(
        None, ge=1, description="Length of the first block; null: length // 2."
    )
    data_variances: list[float] = Field(
        [1.0, 1.0],
        min_length=2,
        max_length=2,
        description="Scale of each block. As in the reference they multiply a standard "
        "normal: standard deviations, despite the name.",
    )
    data_perfect_correlation: bool = Field(
        False, description="One draw per sample and block, repeated across the block."
    )
    dtype: Literal["float64", "float32"] = Field(
        "float64", description="dtype of the draws (float32 draws are other numbers)."
    )
    seed: int = Field(0, ge=0, description="torch.manual_seed before drawing.")

    @model_validator(mode="after")
    def _blocks_fit(self) -> "BlockVectorConfig":
        if self.first_block_length is not None and self.first_block_length >= self.length:
            raise ValueError(
                f"block_vector.first_block_length ({self.first_block_length}) must be smaller "
                f"than length ({self.length}): both blocks need a coordinate."
            )
        return self

    @property
    def first_block(self) -> int:
        return self.first_block_length or self.length // 2


def generate_block_vectors(cfg: BlockVectorConfig) -> Float[Tensor, "size length"]:
    """The dataset: block 1 drawn first, then block 2, from a generator seeded with ``seed``
    (the same stream as the reference's ``torch.manual_seed``)."""
    dtype = _DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.seed)
    l1 = cfg.first_block
    l2 = cfg.length - l1
    s1, s2 = cfg.data_variances
    if cfg.data_perfect_correlation:
        b1 = s1 * torch.randn(cfg.size, 1, dtype=dtype, generator=gen).repeat(1, l1)
        b2 = s2 * torch.randn(cfg.size, 1, dtype=dtype, generator=gen).repeat(1, l2)
    else:
        b1 = s1 * torch.randn(cfg.size, l1, dtype=dtype, generator=gen)
        b2 = s2 * torch.randn(cfg.size, l2, dtype=dtype, generator=gen)
    return torch.cat([b1, b2], dim=1)
