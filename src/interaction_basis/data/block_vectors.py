"""Block vectors: the planted-module MLP's inputs (method §H, reference ``block_vector``).

Gaussian vectors whose two coordinate blocks have their own scales, optionally perfectly
correlated within a block. The draws follow the reference exactly (same order, same dtype), so a
reference dataset config gives the same vectors here.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.config import BlockVectorConfig
from interaction_basis.models import DTYPES


def generate_block_vectors(cfg: BlockVectorConfig) -> Float[Tensor, "size length"]:
    """The dataset: block 1 drawn first, then block 2, from a generator seeded with ``seed``
    (the same stream as the reference's ``torch.manual_seed``)."""
    dtype = DTYPES[cfg.dtype]
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
