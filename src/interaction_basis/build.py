"""Whole-model LIB/PCA builds over batches of stored activations.

``batches(layer)`` returns a fresh iterator over ``(batch, pos, d)`` activation tensors of one
node layer; it may read from memory or from a Zarr store. Nothing here opens files.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple

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
from interaction_basis.linalg import centering_shift, compute_gram_sum, compute_sum
from interaction_basis.models.sectioned import SectionedModel, check_activations

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


def compute_layer_statistics(
    batches: BatchSource, layer: str, *, center: bool = True, progress: bool = False
) -> LayerStats:
    """Two passes over a layer: the mean, then the centred Gram (lib_spec A.2)."""
    total, count = None, 0
    for x in _progress(batches(layer), f"mean {layer}", progress):
        check_activations(x, layer)
        s = compute_sum(x)
        total = s if total is None else total + s
        count += x.shape[0] * x.shape[1]
    if total is None or count == 0:
        raise ValueError(f"No activations for layer {layer!r}.")
    mean = total / count
    if has_constant(layer):
        mean[-1] = 1.0
    shift = centering_shift(mean, center and has_constant(layer))
    gram = torch.zeros(len(mean), len(mean), dtype=torch.float64)
    for x in _progress(batches(layer), f"gram {layer}", progress):
        gram += compute_gram_sum(x, shift)
    return LayerStats(mean, gram / count, count)


def compute_m_dash(
    model: SectionedModel,
    batches: BatchSource,
    layer: str,
    c_next: Tensor | None,
    *,
    integration: Integration = Integration(),
    sources: Sources = Sources(),
    seed: int = 0,
    progress: bool = False,
) -> Float[Tensor, "d d"]:
    """``M′`` of one node layer given the next layer's basis (``None``: raw outputs)."""
    section = model.sections[model.node_layers.index(layer)]
    generator = torch.Generator().manual_seed(seed)
    total, count = None, 0
    for x in _progress(batches(layer), f"M' {layer}", progress):
        part = compute_m_dash_sum(
            section, x, c_next, integration=integration, sources=sources, generator=generator
        )
        total = part if total is None else total + part
        count += x.shape[0] * x.shape[1]
    return total / count


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
    bases: dict[str, Basis] = {}
    m_dashes: dict[str, Tensor] = {}
    if rotate_final:
        if not has_constant(final):
            raise ValueError(
                "rotate_final needs a last node layer with a constant coordinate "
                f"(e.g. 'unembed'), got {final!r}."
            )
        s = stats[final]
        bases[final] = compute_pca_basis(s.gram, s.mean, truncation=truncation, center=center)
    else:
        bases[final] = compute_neuron_basis(stats[final].gram.shape[0])
    for layer in reversed(layers[:-1]):
        s = stats[layer]
        kw = dict(truncation=truncation, center=center, isolate_var=isolates_var(layer))
        if method == "neuron":
            bases[layer] = compute_neuron_basis(s.gram.shape[0])
        elif method == "pca":
            bases[layer] = compute_pca_basis(s.gram, s.mean, **kw)
        elif method == "lib":
            nxt = layers[layers.index(layer) + 1]
            c_next = None if (nxt == final and not rotate_final) else bases[nxt].C
            m_dash = compute_m_dash(
                model,
                batches,
                layer,
                c_next,
                integration=integration,
                sources=sources,
                seed=seed,
                progress=progress,
            )
            m_dashes[layer] = m_dash
            bases[layer] = compute_lib_basis(s.gram, s.mean, m_dash, **kw)
        else:
            raise ValueError(f"Unknown basis method {method!r}; use lib, pca or neuron.")
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
    names = model.node_layers
    final = names[-1]
    edges = {}
    for layer in layers if layers is not None else names[:-1]:
        idx = names.index(layer)
        nxt = names[idx + 1]
        b_in, b_out = bases[layer], bases[nxt]
        c_out = None if nxt == final and b_out.n_masked == 0 and _is_identity(b_out.C) else b_out.C
        generator = torch.Generator().manual_seed(seed)
        total, count = None, 0
        for x in _progress(batches(layer), f"edges {layer}", progress):
            part = compute_edges_sum(
                model.sections[idx],
                x,
                b_in.C.to(x.dtype),
                b_in.C_pinv.to(x.dtype),
                None if c_out is None else c_out.to(x.dtype),
                integration=integration,
                sources=sources,
                generator=generator,
            )
            total = part if total is None else total + part
            count += x.shape[0] * x.shape[1]
        edges[(layer, nxt)] = total / count
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
