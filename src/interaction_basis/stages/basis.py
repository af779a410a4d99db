"""Stage 3: per-layer bases for each method, backwards from the output; sharded runs solve each
layer from the pooled statistics and the shards' M′ sums."""

import logging

from interaction_basis import io, kinds
from interaction_basis.basis import Truncation
from interaction_basis.build import (
    compute_m_dash,
    fit_bases,
    fit_final_basis,
    fit_layer_basis,
    next_basis_matrix,
)
from interaction_basis.config import BasisConfig, ExtractConfig, ModelConfig
from interaction_basis.jacobians import Integration, Sources
from interaction_basis.records import add_partials
from interaction_basis.stages.common import provenance

log = logging.getLogger(__name__)


def _m_dash_settings(basis_cfg: BasisConfig) -> dict:
    """The M′ settings, shared by the unsharded and the sharded paths so that they agree."""
    return dict(
        integration=Integration(basis_cfg.integration.method, basis_cfg.integration.n_intervals),
        sources=Sources(basis_cfg.sources.n_pos, basis_cfg.sources.n_hidden),
        seed=basis_cfg.seed,
    )


def fit_basis(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisConfig,
    method: str,
    weights: str,
    acts: str,
    basis_out: str,
) -> None:
    """Bases of every node layer for one method, backwards from the output."""
    model_cfg, extract_cfg, basis_cfg = model, extract, basis
    network = kinds.load_model(
        model_cfg, weights, io.read_node_layers(acts), extract_cfg.dtype, extract_cfg.device
    )
    bases, m_dash = fit_bases(
        network,
        io.open_activation_batches(acts, extract_cfg.batch_size),
        io.read_stats(acts),
        method,
        truncation=Truncation(basis_cfg.truncation, basis_cfg.relative),
        center=extract_cfg.center,
        rotate_final=basis_cfg.rotate_final,
        **_m_dash_settings(basis_cfg),
        progress=True,
    )
    for layer, b in bases.items():
        log.info("%s %s: %d of %d directions kept", method, layer, b.C.shape[1], b.C.shape[0])
    io.write_bases(
        basis_out, bases, m_dash, method, _basis_attrs(model_cfg, extract_cfg, basis_cfg)
    )


def _basis_attrs(model_cfg, extract_cfg, basis_cfg) -> dict:
    return provenance(
        model=model_cfg.settings(), extract=extract_cfg.model_dump(), basis=basis_cfg.model_dump()
    )


def shard_m_dash(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisConfig,
    layer: str,
    weights: str,
    acts: str,
    next_basis: str,
    m_dash: str,
) -> None:
    """One shard's sum behind a layer's ``M′``, given the next layer's (gathered) basis."""
    extract_cfg, basis_cfg, out_path = extract, basis, m_dash
    model = kinds.load_model(
        model, weights, io.read_node_layers(acts), extract_cfg.dtype, extract_cfg.device
    )
    nxt = model.node_layers[model.node_layers.index(layer) + 1]
    c_next = next_basis_matrix(
        model.node_layers, layer, io.read_bases(next_basis), basis_cfg.rotate_final
    )
    part = compute_m_dash(
        model,
        io.open_activation_batches(acts, extract_cfg.batch_size),
        layer,
        c_next,
        **_m_dash_settings(basis_cfg),
        first_batch=int(io.read_attrs(acts)["first_batch"]),
        progress=True,
    )
    log.info("M' %s (next %s): %d (sample, position) pairs", layer, nxt, part.count)
    io.write_partial_sums(out_path, {layer: part}, provenance(layer=layer))


def fit_layer(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisConfig,
    method: str,
    layer: str,
    stats: str,
    m_dash: list[str],
    basis_out: str,
) -> None:
    """One layer's basis from the pooled statistics and, for LIB, the shards' ``M′`` sums."""
    model_cfg, extract_cfg, basis_cfg = model, extract, basis
    stats_path, m_dash_paths, out_path = stats, m_dash, basis_out
    layers = io.read_node_layers(stats_path)
    stats = io.read_stats(stats_path)[layer]
    truncation = Truncation(basis_cfg.truncation, basis_cfg.relative)
    m_dash = {}
    if layer == layers[-1]:
        basis = fit_final_basis(
            stats,
            layer,
            truncation=truncation,
            center=extract_cfg.center,
            rotate_final=basis_cfg.rotate_final,
        )
    else:
        if method == "lib":
            parts = [io.read_partial_sums(p)[layer] for p in m_dash_paths]
            m_dash[layer] = add_partials(parts).mean()
        basis = fit_layer_basis(
            stats,
            layer,
            method,
            m_dash.get(layer),
            truncation=truncation,
            center=extract_cfg.center,
        )
    log.info("%s %s: %d of %d directions kept", method, layer, basis.C.shape[1], basis.C.shape[0])
    attrs = _basis_attrs(model_cfg, extract_cfg, basis_cfg)
    io.write_bases(out_path, {layer: basis}, m_dash, method, attrs)


def assemble_basis(
    model: ModelConfig,
    extract: ExtractConfig,
    basis: BasisConfig,
    method: str,
    layers: list[str],
    basis_out: str,
) -> None:
    """The per-layer bases of a sharded run as one basis.zarr, in forward order."""
    bases, m_dash = {}, {}
    for path in layers:
        bases |= io.read_bases(path)
        m_dash |= io.read_m_dash(path)
    io.write_bases(basis_out, bases, m_dash, method, _basis_attrs(model, extract, basis))
