"""Stage 4: interaction edges between adjacent node layers, whole or per shard (then gathered
by adding the shards' sums)."""

from interaction_basis import storage
from interaction_basis.config import EdgesConfig, ExtractConfig, ModelConfig
from interaction_basis.kinds import network
from interaction_basis.lib import budget
from interaction_basis.lib.fit import compute_edge_sums
from interaction_basis.lib.fit import compute_edges as build_edges
from interaction_basis.lib.jacobians import Integration, Sources
from interaction_basis.lib.records import add_partials
from interaction_basis.stages.basis import activation_batches
from interaction_basis.stages.common import (
    log_device_peak,
    memory_budget,
    provenance,
    resolve_device,
)


def _edge_settings(edges_cfg: EdgesConfig) -> dict:
    """The edge settings, shared by the unsharded and the sharded paths so that they agree."""
    return dict(
        integration=Integration(edges_cfg.integration.method, edges_cfg.integration.n_intervals),
        sources=Sources(edges_cfg.n_sources_pos),
        seed=edges_cfg.seed,
    )


def _edge_inputs(
    model: ModelConfig,
    extract: ExtractConfig,
    weights: str,
    acts: str,
    basis: str,
    tokens: str | None,
):
    """The network cut at the stored node layers, the activation batches (recomputed from
    ``tokens`` where the store keeps none) and the bases."""
    net = network.load_model(
        model,
        weights,
        storage.read_node_layers(acts),
        extract.dtype,
        resolve_device(extract.device, model.kind),
    )
    batches = activation_batches(net, extract, acts, tokens)
    return net, batches, storage.read_bases(basis)


def shard_edges(
    model: ModelConfig,
    extract: ExtractConfig,
    edges: EdgesConfig,
    weights: str,
    acts: str,
    basis: str,
    parts: str,
    tokens: str | None = None,
) -> None:
    """One shard's sums behind the edges of every adjacent pair."""
    inputs = _edge_inputs(model, extract, weights, acts, basis, tokens)
    with budget.limit(memory_budget(extract, inputs[0].device)):
        sums = compute_edge_sums(
            *inputs,
            **_edge_settings(edges),
            first_batch=int(storage.read_attrs(acts)["first_batch"]),
            progress=True,
        )
    log_device_peak(inputs[0].device)
    storage.write_partial_sums(
        parts,
        {storage.edge_group_name(a, b): part for (a, b), part in sums.items()},
        provenance(edges=edges),
    )


def gather_edges(edges: EdgesConfig, basis: str, parts: list[str], edges_out: str) -> None:
    """The edges of a sharded run: the shards' sums added, divided by the total count."""
    layers = storage.read_node_layers(basis)
    sums = [storage.read_partial_sums(p) for p in parts]
    pooled = {
        (a, b): add_partials(part[storage.edge_group_name(a, b)] for part in sums).mean()
        for a, b in zip(layers, layers[1:])
    }
    storage.write_edges(edges_out, pooled, provenance(edges=edges))


def compute_edges(
    model: ModelConfig,
    extract: ExtractConfig,
    edges: EdgesConfig,
    weights: str,
    acts: str,
    basis: str,
    edges_out: str,
    tokens: str | None = None,
) -> None:
    """Edges between every pair of adjacent node layers."""
    inputs = _edge_inputs(model, extract, weights, acts, basis, tokens)
    with budget.limit(memory_budget(extract, inputs[0].device)):
        result = build_edges(*inputs, **_edge_settings(edges), progress=True)
    log_device_peak(inputs[0].device)
    storage.write_edges(edges_out, result, provenance(edges=edges))
