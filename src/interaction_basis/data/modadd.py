"""Datasets that need no download: modular addition (method §B.1)."""

import torch
from jaxtyping import Int
from torch import Tensor


def build_modadd_dataset(
    modulus: int = 113,
) -> tuple[Int[Tensor, "sample 3"], Int[Tensor, " sample"]]:
    """All ``modulus**2`` inputs ``(a, b, =)`` ordered ``index = a * modulus + b``, and labels."""
    a, b = torch.meshgrid(torch.arange(modulus), torch.arange(modulus), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    tokens = torch.stack([a, b, torch.full_like(a, modulus)], dim=1)
    return tokens, (a + b) % modulus


def compute_modadd_split(
    n_samples: int, frac_train: float = 0.3, seed: int = 0
) -> tuple[Int[Tensor, " train"], Int[Tensor, " test"]]:
    """The reference split: ``random_split`` with ``Generator().manual_seed(seed)``.

    The train indices are the first ``int(frac_train * n)`` entries of ``randperm(n)``.
    """
    if not 0 < frac_train < 1:
        raise ValueError(f"frac_train must be in (0, 1), got {frac_train}.")
    perm = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))
    n_train = int(frac_train * n_samples)
    return perm[:n_train], perm[n_train:]
