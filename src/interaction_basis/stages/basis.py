"""Stage 3: per-layer bases for each method, backwards from the output; sharded runs solve each
layer from the pooled statistics and the shards' M′ sums."""

import logging

import torch
from torch import Tensor

from interaction_basis import storage
from interaction_basis.config import BasisSettings, ExtractConfig, Method, ModelConfig
from interaction_basis.kinds import network
from interaction_basis.lib import budget
from interaction_basis.lib.basis import Truncation
from interaction_basis.lib.fit import (
    batches_from_model,
    compute_m_dash,
    fit_bases,
    fit_final_basis,
    fit_layer_basis,
    next_basis_matrix,
)
from interaction_basis.lib.jacobians import Integration, Sources
from interaction_basis.lib.records import Basis, BatchSource, add_partials
from interaction_basis.models.sectioned import SectionedModel
from interaction_basis.stages.common import (
    log_device_peak,
    memory_budget,
    provenance,
    resolve_device,
)

log = logging.getLogger(__name__)


def _m_dash_settings(basis: BasisSettings) -> dict:
    """The M′ settings, shared by the unsharded and the sharded paths so that they agree."""
    return dict(
        integration=Integration(basis.integration.method, basis.integration.n_intervals),
        sources=Sources(basis.sources.n_pos, basis.sources.n_hidden),
        seed=basis.seed,
    )


def activation_batches(
    net: SectionedModel, extract: ExtractConfig, acts: str, tokens: str | None
) -> BatchSource:
    """The fitting activations of the run or shard whose statistics are in ``acts``: read from
    the store, or where it keeps none (``extract.store_activations`` false, language models)
    recomputed with a forward pass over the same token chunks (the store's ``sample_start`` and
    ``n_samples``) in the same batches, so that M' and the edges see what extraction saw."""
    if storage.has_activations(acts):
        return storage.open_activation_batches(acts, extract.batch_size)
    if tokens is None:
        raise ValueError(f"{acts} keeps no activations, and no token chunks were given.")
    attrs = storage.read_attrs(acts)
    start = int(attrs.get("sample_start", 0))
    stop = start + int(attrs["n_samples"])
    # The fitting inputs of a language model (kinds/hf/data.py): each chunk but its last token,
    # whose only role is the next-token target.
    inputs = torch.from_numpy(storage.read_token_chunks(tokens)["fit"][start:stop][:, :-1])
    log.info("activations recomputed with the model: samples %d..%d", start, stop - 1)
    return batches_from_model(net, inputs, extract.batch_size)


def fit_basis(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisSettings,
    method: Method,
    weights: str,
    acts: str,
    basis_out: str,
    tokens: str | None = None,
) -> None:
    """Bases of every node layer for one method, backwards from the output (the activations
    recomputed from ``tokens`` where the store keeps none)."""
    net = network.load_model(
        model,
        weights,
        storage.read_node_layers(acts),
        extract.dtype,
        resolve_device(extract.device, model.kind),
    )
    with budget.limit(memory_budget(extract, net.device)):
        bases, m_dash = fit_bases(
            net,
            activation_batches(net, extract, acts, tokens),
            storage.read_stats(acts),
            method,
            truncation=Truncation(basis.truncation, basis.relative),
            center=extract.center,
            rotate_final=basis.rotate_final,
            **_m_dash_settings(basis),
            progress=True,
        )
    log_device_peak(net.device)
    for layer, b in bases.items():
        log.info("%s %s: %d of %d directions kept", method, layer, b.C.shape[1], b.C.shape[0])
    storage.write_bases(basis_out, bases, m_dash, method, _basis_attrs(model, extract, basis))


def _basis_attrs(model: ModelConfig, extract: ExtractConfig, basis: BasisSettings) -> dict:
    return provenance(model=model, extract=extract, basis=basis)


def shard_m_dash(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisSettings,
    layer: str,
    weights: str,
    acts: str,
    next_basis: str,
    m_dash: str,
    tokens: str | None = None,
) -> None:
    """One shard's sum behind a layer's ``M′``, given the next layer's (gathered) basis."""
    net = network.load_model(
        model,
        weights,
        storage.read_node_layers(acts),
        extract.dtype,
        resolve_device(extract.device, model.kind),
    )
    nxt = net.node_layers[net.node_layers.index(layer) + 1]
    c_next = next_basis_matrix(
        net.node_layers, layer, storage.read_bases(next_basis), basis.rotate_final
    )
    with budget.limit(memory_budget(extract, net.device)):
        part = compute_m_dash(
            net,
            activation_batches(net, extract, acts, tokens),
            layer,
            c_next,
            **_m_dash_settings(basis),
            first_batch=int(storage.read_attrs(acts)["first_batch"]),
            progress=True,
        )
    log.info("M' %s (next %s): %d (sample, position) pairs", layer, nxt, part.count)
    log_device_peak(net.device)
    storage.write_partial_sums(m_dash, {layer: part}, provenance(layer=layer))


def fit_layer(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisSettings,
    method: Method,
    layer: str,
    stats: str,
    m_dash: list[str],
    basis_out: str,
) -> None:
    """One layer's basis from the pooled statistics and, for LIB, the shards' ``M′`` sums."""
    layers = storage.read_node_layers(stats)
    layer_stats = storage.read_stats(stats)[layer]
    truncation = Truncation(basis.truncation, basis.relative)
    pooled: dict[str, Tensor] = {}
    if layer == layers[-1]:
        fitted = fit_final_basis(
            layer_stats,
            layer,
            truncation=truncation,
            center=extract.center,
            rotate_final=basis.rotate_final,
        )
    else:
        if method == "lib":
            parts = [storage.read_partial_sums(p)[layer] for p in m_dash]
            pooled[layer] = add_partials(parts).mean()
        fitted = fit_layer_basis(
            layer_stats,
            layer,
            method,
            pooled.get(layer),
            truncation=truncation,
            center=extract.center,
        )
    n_kept, n_orig = fitted.C.shape[1], fitted.C.shape[0]
    log.info("%s %s: %d of %d directions kept", method, layer, n_kept, n_orig)
    attrs = _basis_attrs(model, extract, basis)
    storage.write_bases(basis_out, {layer: fitted}, pooled, method, attrs)


def assemble_basis(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisSettings,
    method: Method,
    layers: list[str],
    basis_out: str,
) -> None:
    """The per-layer bases of a sharded run as one basis.zarr, in forward order."""
    bases: dict[str, Basis] = {}
    m_dash: dict[str, Tensor] = {}
    for path in layers:
        bases |= storage.read_bases(path)
        m_dash |= storage.read_m_dash(path)
    storage.write_bases(basis_out, bases, m_dash, method, _basis_attrs(model, extract, basis))
