"""Whole-model LIB/PCA builds over batches of stored activations.

``batches(layer)`` returns a fresh iterator over ``(batch, pos, d)`` activation tensors of one
node layer; it may read from memory or from a Zarr store. Nothing here opens files.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.basis import (
    DeadLayerError,
    Truncation,
    compute_lib_basis,
    compute_neuron_basis,
    compute_pca_basis,
)
from interaction_basis.lib.jacobians import (
    Integration,
    Sources,
    compute_edges_sum,
    compute_m_dash_sum,
)
from interaction_basis.lib.records import Basis, BatchSource, LayerStats, Partial
from interaction_basis.lib.statistics import compute_layer_statistics, progress_bar
from interaction_basis.lib.summation import CompensatedSum
from interaction_basis.models.sectioned import SectionedModel

Method = Literal["lib", "pca", "neuron"]


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The generator of one batch's stochastic sources: independent of how data is sharded.

    torch seeds its CPU generator from 32 bits only, so (seed, batch) are hashed into them.
    """
    state = np.random.SeedSequence([seed, batch_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


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
    for i, x in enumerate(progress_bar(batches(layer), f"M' {layer}", progress)):
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
    """The last node layer: its PCA basis if rotated, else the identity (method §A.4)."""
    if not rotate_final:
        return compute_neuron_basis(stats.gram.shape[0])
    if not stats.traits.constant:
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
    isolate_var = stats.traits.variance_first
    if method == "neuron":
        return compute_neuron_basis(stats.gram.shape[0], constant_last=stats.traits.constant)
    if method == "pca":
        return compute_pca_basis(
            stats.gram, stats.mean, truncation=truncation, center=center, isolate_var=isolate_var
        )
    if method == "lib":
        if m_dash is None:
            raise ValueError(f"LIB basis of {layer!r} needs its M'.")
        try:
            return compute_lib_basis(
                stats.gram,
                stats.mean,
                m_dash,
                truncation=truncation,
                center=center,
                isolate_var=isolate_var,
            )
        except DeadLayerError as e:
            raise DeadLayerError(f"LIB basis of {layer!r}: {e}") from None
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
    """Bases for every node layer, from the last backwards (method §A.3, A.4).

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
    """Edges ``E`` (out × in) between every pair of adjacent node layers (method §A.6)."""
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
        for i, x in enumerate(progress_bar(batches(layer), f"edges {layer}", progress)):
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


class _ForwardBatches:
    """One node layer's activations, recomputed a batch at a time (sized, for the ETA)."""

    def __init__(self, model: SectionedModel, inputs, start: int, stop: int, size: int, layer):
        self.model, self.inputs, self.size = model, inputs, size
        self.starts = range(start, stop, size)
        self.stop, self.depth = stop, model.node_layers.index(layer)

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[Tensor]:
        for b0 in self.starts:
            batch = self.inputs[b0 : min(b0 + self.size, self.stop)]
            with torch.no_grad():
                # The same operations on the same batch as SectionedModel.activations, stopped
                # at the layer: the values extraction would have stored, to the last bit.
                x = self.model.embed(batch.to(self.model.device))
                for section in self.model.sections[: self.depth]:
                    x = section(x)
            yield x


def batches_from_model(
    model: SectionedModel, inputs, batch_size: int, start: int = 0, stop: int | None = None
) -> BatchSource:
    """A BatchSource that recomputes each layer's activations from the raw ``inputs[start:stop]``
    (batches of ``batch_size`` from ``start``, as extraction made them) with a forward pass up
    to the layer, in place of stored activations (``extract.store_activations`` false)."""
    end = len(inputs) if stop is None else stop

    def batches(layer: str) -> _ForwardBatches:
        return _ForwardBatches(model, inputs, start, end, batch_size, layer)

    return batches


class InMemoryBuild(NamedTuple):
    """Everything a build computes on in-memory inputs; ``methods[m] = (bases, m_dash, edges)``."""

    acts: dict[str, Tensor]
    stats: dict[str, LayerStats]
    methods: dict[str, tuple]


def build_in_memory(
    model: SectionedModel,
    inputs: Tensor,
    methods: Sequence[Method] = ("lib",),
    *,
    batch_size: int = 1024,
    truncation: Truncation = Truncation(),
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    seed: int = 0,
    **basis_kwargs,
) -> InMemoryBuild:
    """Activations, statistics, and per method the bases, their ``M′`` and the edges of
    ``model`` on ``inputs``, all in memory (a notebook's or a test's whole pipeline; the
    workflow runs the same functions over stored activations, stage by stage)."""
    with torch.no_grad():
        acts = model.activations(inputs)
    source = batches_from_tensors(acts, batch_size)
    stats = {
        layer: compute_layer_statistics(source, layer, model.traits(layer))
        for layer in model.node_layers
    }
    out: dict[str, tuple] = {}
    for method in methods:
        bases, m_dash = fit_bases(
            model,
            source,
            stats,
            method,
            truncation=truncation,
            integration=integration,
            sources=sources,
            seed=seed,
            **basis_kwargs,
        )
        edges = compute_edges(
            model, source, bases, integration=integration, sources=sources, seed=seed
        )
        out[method] = (bases, m_dash, edges)
    return InMemoryBuild(acts, stats, out)
