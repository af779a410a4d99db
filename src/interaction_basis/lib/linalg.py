"""Dataset statistics (method §A.2) and the small linear-algebra helpers the bases share.

Statistics are sums over (sample, position) pairs so that batches and shards can be added up
before one final division by the count.
"""

import torch
from jaxtyping import Float
from torch import Tensor


def compute_sum(acts: Float[Tensor, "batch pos d"]) -> Float[Tensor, " d"]:
    """Sum of the activations over samples and positions, in float64."""
    return acts.to(torch.float64).sum(dim=(0, 1))


def centering_shift(mean: Float[Tensor, " d"], center: bool = True) -> Float[Tensor, " d"]:
    """The shift ``μ̃``: the mean with its last (constant) entry set to 0, or 0 if not centering."""
    shift = mean.clone() if center else torch.zeros_like(mean)
    shift[-1] = 0.0
    return shift


def compute_shifted_sums(
    acts: Float[Tensor, "batch pos d"], shift: Float[Tensor, " d"]
) -> tuple[Float[Tensor, " d"], Float[Tensor, "d d"]]:
    """``Σ_x Σ_p c_p`` and ``Σ_x Σ_p c_p^T c_p`` with ``c = f - s`` (float64)."""
    c = acts.to(torch.float64) - shift
    c = c.reshape(-1, c.shape[-1])
    return c.sum(dim=0), c.T @ c


def compute_centering_matrices(
    mean: Float[Tensor, " d"], center: bool = True
) -> tuple[Float[Tensor, "d d"], Float[Tensor, "d d"]]:
    """``Y`` with ``f Y = f - μ̃`` and its inverse (method §A.3 step 2)."""
    d = mean.shape[0]
    y = torch.eye(d, dtype=torch.float64)
    y_inv = torch.eye(d, dtype=torch.float64)
    if center:
        y[-1, :-1] = -mean[:-1]
        y_inv[-1, :-1] = mean[:-1]
    return y, y_inv


def compute_sorted_eigh(
    matrix: Float[Tensor, "d d"],
) -> tuple[Float[Tensor, " d"], Float[Tensor, "d d"]]:
    """Eigendecomposition of a symmetric matrix in float64, ``|eigenvalues|`` descending."""
    vals, vecs = torch.linalg.eigh(matrix.to(torch.float64))
    vals = vals.abs()
    order = torch.argsort(vals, descending=True, stable=True)
    return vals[order], vecs[:, order]
