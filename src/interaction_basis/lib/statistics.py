"""Means and centred Grams of node-layer activations (method §A.2), as compensated sums that
add up across shards to the last bit; and the shards' sample ranges."""

from collections.abc import Iterable
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis import progress as bars
from interaction_basis.lib.linalg import centering_shift, compute_shifted_sums, compute_sum
from interaction_basis.lib.records import BatchSource, LayerStats, LayerTraits
from interaction_basis.lib.summation import CompensatedSum
from interaction_basis.models.sectioned import check_activations


def progress_bar(it: Iterable[Tensor], desc: str, enable: bool):
    return bars.progress(it, desc, disable=not enable, leave=False)


class MomentSums(NamedTuple):
    """Compensated sums ``Σ(x - s)`` and ``Σ(x - s)(x - s)ᵀ`` of one node layer around a shift
    ``s`` fixed before the data (the first batch's centring shift), and their count.

    Shards of a run share ``s``, so their sums add up exactly (to the last bit, see
    :mod:`interaction_basis.lib.summation`) and the statistics do not depend on the sharding;
    ``s`` near the mean keeps the Gram of every batch free of cancellation.
    """

    shift: Float[Tensor, " d"]
    total: CompensatedSum
    gram: CompensatedSum
    count: int  # type: ignore[assignment]  # (shadows tuple.count)
    centred: bool
    traits: LayerTraits

    @classmethod
    def start(
        cls, first: Float[Tensor, "batch pos d"], traits: LayerTraits, center: bool
    ) -> "MomentSums":
        """Empty sums around the centring shift of ``first``, the run's first batch (centred
        only where the layer has a constant coordinate to hold the mean)."""
        centred = center and traits.constant
        shift = centering_shift(compute_sum(first) / (first.shape[0] * first.shape[1]), centred)
        d = first.shape[-1]
        zeros = CompensatedSum.zeros
        return cls(shift, zeros(d, shift.device), zeros((d, d), shift.device), 0, centred, traits)

    def add(self, x: Float[Tensor, "batch pos d"], layer: str) -> "MomentSums":
        check_activations(x, layer)
        total, gram = compute_shifted_sums(x, self.shift)
        return self._replace(
            total=self.total.add(total),
            gram=self.gram.add(gram),
            count=self.count + x.shape[0] * x.shape[1],
        )

    def merge(self, other: "MomentSums") -> "MomentSums":
        if not torch.equal(self.shift, other.shift) or self.centred != other.centred:
            raise ValueError(
                "Moment sums around different shifts cannot be added: every shard must take "
                "its shift from the run's first batch. Rerun the shards' extraction."
            )
        return self._replace(
            total=self.total.merge(other.total),
            gram=self.gram.merge(other.gram),
            count=self.count + other.count,
        )

    def cpu(self) -> "MomentSums":
        return self._replace(shift=self.shift.cpu(), total=self.total.cpu(), gram=self.gram.cpu())

    def finalize(self, layer: str) -> LayerStats:
        """The mean and the Gram centred on it (or uncentred), method §A.2, on the CPU.

        With ``w = Σ(x - s) / n`` and ``u`` its centring part (``w`` without the constant
        entry, or 0), ``Σ(x - s - u)(x - s - u)ᵀ = Σ(x - s)(x - s)ᵀ - n(u wᵀ + w uᵀ - u uᵀ)``.
        """
        if self.count == 0:
            raise ValueError(f"No activations for layer {layer!r}.")
        m = self.cpu()
        w = m.total.value() / m.count
        u = centering_shift(w, m.centred)
        correction = torch.outer(u, w) + torch.outer(w, u) - torch.outer(u, u)
        gram = m.gram.value() / m.count - correction
        mean = m.shift + w
        if m.traits.constant:
            mean[-1] = 1.0
        return LayerStats(mean, gram, m.count, m.traits)


def compute_layer_statistics(
    batches: BatchSource,
    layer: str,
    traits: LayerTraits,
    *,
    center: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> LayerStats:
    """Mean and centred Gram of a layer in one pass (method §A.2), summed on ``device``."""
    moments = None
    for x in progress_bar(batches(layer), f"statistics {layer}", progress):
        x = x.to(device)
        moments = (moments or MomentSums.start(x, traits, center)).add(x, layer)
    if moments is None:
        raise ValueError(f"No activations for layer {layer!r}.")
    return moments.finalize(layer)


def shard_range(n_samples: int, batch_size: int, n_shards: int, shard: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of one of ``n_shards`` contiguous shards of whole batches.

    Shards start on batch boundaries, so every batch (and its stochastic sources, seeded by
    its global index) is the same as in an unsharded run.
    """
    n_batches = -(-n_samples // batch_size)
    if not 1 <= n_shards <= n_batches:
        raise ValueError(
            f"n_shards={n_shards} must be between 1 and the number of batches ({n_batches} of "
            f"{batch_size} samples); lower n_shards or extract.batch_size."
        )
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}.")
    first = shard * n_batches // n_shards
    last = (shard + 1) * n_batches // n_shards
    return first * batch_size, min(last * batch_size, n_samples)
