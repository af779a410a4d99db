"""Compensated (double-double) sums, so that a total does not depend on how it was split.

Every statistic of a run (means, Grams, M′, edges) is a sum over batches. Plain float64
addition rounds at every step, so adding the same batch sums in another grouping (shards)
gives totals that differ in the last bits, and the whitening of the basis amplifies that a
hundred-thousand-fold in the least important directions. A double-double accumulator carries
the rounding error of every addition in a second word: the total is exact to about
``n · 2⁻¹⁰⁶`` of the summed magnitudes, so its rounding to float64 is the correctly rounded
sum, whatever the order, except when the exact sum lies within that distance of a rounding
boundary.
"""

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor


def two_sum(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``s = fl(a + b)`` and its exact rounding error ``e``: ``a + b = s + e`` (Knuth)."""
    s = a + b
    b_virtual = s - a
    e = (a - (s - b_virtual)) + (b - b_virtual)
    return s, e


class CompensatedSum(NamedTuple):
    """A float64 sum held as ``hi + lo`` with ``|lo| ≤ ulp(hi) / 2``."""

    hi: Float[Tensor, "..."]
    lo: Float[Tensor, "..."]

    @classmethod
    def zeros(cls, shape, device: torch.device | str = "cpu") -> "CompensatedSum":
        return cls(
            torch.zeros(shape, dtype=torch.float64, device=device),
            torch.zeros(shape, dtype=torch.float64, device=device),
        )

    def add(self, x: Tensor) -> "CompensatedSum":
        """This sum plus ``x`` (converted to float64)."""
        s, e = two_sum(self.hi, x.to(torch.float64))
        return CompensatedSum(*two_sum(s, e + self.lo))

    def merge(self, other: "CompensatedSum") -> "CompensatedSum":
        """The sum of two compensated sums (shards)."""
        s, e = two_sum(self.hi, other.hi)
        return CompensatedSum(*two_sum(s, e + (self.lo + other.lo)))

    def value(self) -> Float[Tensor, "..."]:
        """The total, rounded to float64."""
        return self.hi + self.lo

    def cpu(self) -> "CompensatedSum":
        return CompensatedSum(self.hi.cpu(), self.lo.cpu())
