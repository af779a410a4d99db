"""Whole-model LIB/PCA builds over batches of stored activations.

``batches(layer)`` returns a fresh iterator over ``(batch, pos, d)`` activation tensors of one
node layer; it may read from memory or from a Zarr store. Nothing here opens files.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interaction_basis.basis import (
    Basis,
    Truncation,
    compute_lib_basis,
    compute_neuron_basis,
    compute_pca_basis,
)
from interaction_basis.jacobians import (
    Integration,
    Sources,
    compute_edges_sum,
    compute_m_dash_sum,
)
from interaction_basis.linalg import centering_shift, compute_shifted_sums, compute_sum
from interaction_basis.models.sectioned import SectionedModel, check_activations
from interaction_basis.summation import CompensatedSum

Method = Literal["lib", "pca", "neuron"]
BatchSource = Callable[[str], Iterator[Tensor]]


class LayerStats(NamedTuple):
    """Mean and centred Gram of one node layer over ``count`` (sample, position) pairs."""

    mean: Float[Tensor, " d"]
    gram: Float[Tensor, "d d"]
    count: int


def isolates_var(layer: str) -> bool:
    """LayerNorm-variance isolation applies to ``ln1_out``/``ln2_out`` only (lib_spec A.3)."""
    return layer.split(".")[0] in ("ln1_out", "ln2_out")


def has_constant(layer: str) -> bool:
    """Every node layer but the logits carries the folded constant coordinate."""
    return layer != "output"


def _progress(it: Iterable[Tensor], desc: str, enable: bool):
    return tqdm(it, desc=desc, unit="batch", disable=not enable, leave=False)


class MomentSums(NamedTuple):
    """Compensated sums ``Σ(x - s)`` and ``Σ(x - s)(x - s)ᵀ`` of one node layer around a shift
    ``s`` fixed before the data (the first batch's centring shift), and their count.

    Shards of a run share ``s``, so their sums add up exactly (to the last bit, see
    :mod:`interaction_basis.summation`) and the statistics do not depend on the sharding;
    ``s`` near the mean keeps the Gram of every batch free of cancellation.
    """

    shift: Float[Tensor, " d"]
    total: CompensatedSum
    gram: CompensatedSum
    count: int
    centred: bool

    @classmethod
    def start(cls, first: Float[Tensor, "batch pos d"], layer: str, center: bool) -> "MomentSums":
        """Empty sums around the centring shift of ``first``, the run's first batch."""
        centred = center and has_constant(layer)
        shift = centering_shift(compute_sum(first) / (first.shape[0] * first.shape[1]), centred)
        d = first.shape[-1]
        zeros = CompensatedSum.zeros
        return cls(shift, zeros(d, shift.device), zeros((d, d), shift.device), 0, centred)

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
        """The mean and the Gram centred on it (or uncentred), lib_spec A.2, on the CPU.

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
        if has_constant(layer):
            mean[-1] = 1.0
        return LayerStats(mean, gram, m.count)


def compute_layer_statistics(
    batches: BatchSource,
    layer: str,
    *,
    center: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> LayerStats:
    """Mean and centred Gram of a layer in one pass (lib_spec A.2), summed on ``device``."""
    moments = None
    for x in _progress(batches(layer), f"statistics {layer}", progress):
        x = x.to(device)
        moments = (moments or MomentSums.start(x, layer, center)).add(x, layer)
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


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The generator of one batch's stochastic sources: independent of how data is sharded.

    torch seeds its CPU generator from 32 bits only, so (seed, batch) are hashed into them.
    """
    state = np.random.SeedSequence([seed, batch_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class Partial(NamedTuple):
    """A compensated sum over (sample, position) pairs and their count, before the division."""

    total: CompensatedSum
    count: int

    def mean(self) -> Tensor:
        return self.total.value() / self.count


def add_partials(parts: Iterable[Partial]) -> Partial:
    parts = list(parts)
    if not parts:
        raise ValueError("No partial sums to add.")
    total = parts[0].total
    for p in parts[1:]:
        total = total.merge(p.total)
    return Partial(total, sum(p.count for p in parts))


def compute_m_dash(
    model: SectionedModel,
    batches: BatchSource,
    layer: str,
    c_next: Tensor | None,
    *,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    seed: int = 0,
    first_batch: int = 0,
    progress: bool = False,
) -> Partial:
    """The sum behind ``M′`` of one node layer given the next layer's basis (``None``: raw
    outputs), and its count. ``first_batch`` is the global index of the first batch (shards)."""
    section = model.sections[model.node_layers.index(layer)]
    c_next = None if c_next is None else c_next.to(model.device)
    total, count = None, 0
    for i, x in enumerate(_progress(batches(layer), f"M' {layer}", progress)):
        part = compute_m_dash_sum(
            section,
            x.to(model.device),
            c_next,
            integration=integration,
            sources=sources,
            generator=batch_generator(seed, first_batch + i),
        )
        total = (total or CompensatedSum.zeros(part.shape, part.device)).add(part)
        count += x.shape[0] * x.shape[1]
    if total is None:
        raise ValueError(f"No activations for layer {layer!r}.")
    return Partial(total.cpu(), count)


def next_basis_matrix(
    layers: Sequence[str], layer: str, bases: Mapping[str, Basis], rotate_final: bool
) -> Tensor | None:
    """``C`` of the layer after ``layer``, or ``None`` for raw outputs (final layer unrotated)."""
    nxt = layers[layers.index(layer) + 1]
    return None if (nxt == layers[-1] and not rotate_final) else bases[nxt].C


def fit_final_basis(
    stats: LayerStats,
    layer: str,
    *,
    truncation: Truncation = Truncation(),
    center: bool = True,
    rotate_final: bool = False,
) -> Basis:
    """The last node layer: its PCA basis if rotated, else the identity (lib_spec A.4)."""
    if not rotate_final:
        return compute_neuron_basis(stats.gram.shape[0])
    if not has_constant(layer):
        raise ValueError(
            "rotate_final needs a last node layer with a constant coordinate "
            f"(e.g. 'unembed'), got {layer!r}."
        )
    return compute_pca_basis(stats.gram, stats.mean, truncation=truncation, center=center)


def fit_layer_basis(
    stats: LayerStats,
    layer: str,
    method: Method,
    m_dash: Tensor | None = None,
    *,
    truncation: Truncation = Truncation(),
    center: bool = True,
) -> Basis:
    """The basis of one non-final node layer; LIB needs its ``M′``."""
    kw = dict(truncation=truncation, center=center, isolate_var=isolates_var(layer))
    if method == "neuron":
        return compute_neuron_basis(stats.gram.shape[0], constant_last=has_constant(layer))
    if method == "pca":
        return compute_pca_basis(stats.gram, stats.mean, **kw)
    if method == "lib":
        if m_dash is None:
            raise ValueError(f"LIB basis of {layer!r} needs its M'.")
        return compute_lib_basis(stats.gram, stats.mean, m_dash, **kw)
    raise ValueError(f"Unknown basis method {method!r}; use lib, pca or neuron.")


def fit_bases(
    model: SectionedModel,
    batches: BatchSource,
    stats: Mapping[str, LayerStats],
    method: Method,
    *,
    truncation: Truncation = Truncation(),
    center: bool = True,
    rotate_final: bool = False,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Basis], dict[str, Tensor]]:
    """Bases for every node layer, from the last backwards (lib_spec A.3, A.4).

    Returns:
        (bases, m_dash): the basis per layer, and for LIB the ``M′`` each basis was fitted on.
    """
    layers = model.node_layers
    final = layers[-1]
    bases = {
        final: fit_final_basis(
            stats[final], final, truncation=truncation, center=center, rotate_final=rotate_final
        )
    }
    m_dashes: dict[str, Tensor] = {}
    for layer in reversed(layers[:-1]):
        if method == "lib":
            m_dashes[layer] = compute_m_dash(
                model,
                batches,
                layer,
                next_basis_matrix(layers, layer, bases, rotate_final),
                integration=integration,
                sources=sources,
                seed=seed,
                progress=progress,
            ).mean()
        bases[layer] = fit_layer_basis(
            stats[layer],
            layer,
            method,
            m_dashes.get(layer),
            truncation=truncation,
            center=center,
        )
    ordered = {layer: bases[layer] for layer in layers}
    return ordered, {layer: m_dashes[layer] for layer in layers if layer in m_dashes}


def compute_edges(
    model: SectionedModel,
    batches: BatchSource,
    bases: Mapping[str, Basis],
    *,
    layers: Sequence[str] | None = None,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    seed: int = 0,
    progress: bool = False,
) -> dict[tuple[str, str], Float[Tensor, "out in"]]:
    """Edges ``E`` (out × in) between every pair of adjacent node layers (lib_spec A.6)."""
    sums = compute_edge_sums(
        model,
        batches,
        bases,
        layers=layers,
        integration=integration,
        sources=sources,
        seed=seed,
        progress=progress,
    )
    return {pair: part.mean() for pair, part in sums.items()}


def compute_edge_sums(
    model: SectionedModel,
    batches: BatchSource,
    bases: Mapping[str, Basis],
    *,
    layers: Sequence[str] | None = None,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    seed: int = 0,
    first_batch: int = 0,
    progress: bool = False,
) -> dict[tuple[str, str], Partial]:
    """The sums behind :func:`compute_edges` and their counts (for shards)."""
    names = model.node_layers
    final = names[-1]
    edges = {}
    for layer in layers if layers is not None else names[:-1]:
        idx = names.index(layer)
        nxt = names[idx + 1]
        b_in, b_out = bases[layer], bases[nxt]
        c_out = None if nxt == final and b_out.n_masked == 0 and _is_identity(b_out.C) else b_out.C
        total, count = None, 0
        for i, x in enumerate(_progress(batches(layer), f"edges {layer}", progress)):
            x = x.to(model.device)
            part = compute_edges_sum(
                model.sections[idx],
                x,
                b_in.C.to(x),
                b_in.C_pinv.to(x),
                None if c_out is None else c_out.to(x),
                integration=integration,
                sources=sources,
                generator=batch_generator(seed, first_batch + i),
            )
            total = (total or CompensatedSum.zeros(part.shape, part.device)).add(part)
            count += x.shape[0] * x.shape[1]
        if total is None:
            raise ValueError(f"No activations for layer {layer!r}.")
        edges[(layer, nxt)] = Partial(total.cpu(), count)
    return edges


def _is_identity(c: Tensor) -> bool:
    return c.shape[0] == c.shape[1] and bool(torch.equal(c, torch.eye(len(c), dtype=c.dtype)))


def batches_from_tensors(acts: Mapping[str, Tensor], batch_size: int) -> BatchSource:
    """A BatchSource over in-memory activations."""

    def batches(layer: str) -> Iterator[Tensor]:
        x = acts[layer]
        for start in range(0, x.shape[0], batch_size):
            yield x[start : start + batch_size]

    return batches
