"""What the closed forms share: chunking over samples, float64, ±1 signs, and the records
that carry a contraction's repeated arguments (:class:`Contraction`, :class:`EdgeInputs`)."""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

#: An integration rule's α values and their weights (``Integration.points()``).
Points = tuple[Sequence[float], Sequence[float]]

#: Bytes of the largest per-chunk intermediate; bounds memory and keeps work in cache.
CHUNK_BYTES = 16 * 2**20

F64 = torch.float64


class Contraction(NamedTuple):
    """The output side of one contraction, which M′ and the edges both take: ``c_out``
    (``None``: the identity, raw outputs) and the integration rule's ``points``."""

    c_out: Float[Tensor, "d_out k_out"] | None
    points: Points


class EdgeInputs(NamedTuple):
    """The input side of the edges: the features ``feats``, ``c_in_pinv`` and
    ``recon = feats @ c_in_pinv``, the activations rebuilt from the features."""

    recon: Float[Tensor, "batch pos d_in"]
    feats: Float[Tensor, "batch pos k_in"]
    c_in_pinv: Float[Tensor, "k_in d_in"]


def chunks(n: int, bytes_per_row: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive rows of ``n`` with at most ``CHUNK_BYTES`` each
    (one row at least)."""
    size = max(1, CHUNK_BYTES // max(1, bytes_per_row))
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def identity_if_none(c: Tensor | None, d: int, like: Tensor) -> Tensor:
    """``c`` in float64, or the ``d × d`` identity (on ``like``'s device) if ``None``."""
    return torch.eye(d, dtype=F64, device=like.device) if c is None else c.to(F64)


def as_signs(draws: Tensor) -> Tensor:
    """Boolean draws (True: +1) as float64 ±1."""
    return draws.to(F64) * 2 - 1
