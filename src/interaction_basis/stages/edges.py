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
from interaction_basis.stages.common import memory_budget, provenance


def _edge_settings(edges_cfg: EdgesConfig) -> dict:
    """The edge settings, shared by the unsharded and the sharded paths so that they agree."""
    return dict(
        integration=Integration(edges_cfg.integration.method, edges_cfg.integration.n_intervals),
        sources=Sources(edges_cfg.n_sources_pos),
        seed=edges_cfg.seed,
    )


def _edge_inputs(model: ModelConfig, extract: ExtractConfig, weights: str, acts: str, basis: str):
    """The network cut at the stored node layers, the activation batches and the bases."""
    net = network.load_model(
        model, weights, storage.read_node_layers(acts), extract.dtype, extract.device
    )
    batches = storage.open_activation_batches(acts, extract.batch_size)
    return net, batches, storage.read_bases(basis)


def shard_edges(
    model: ModelConfig,
    extract: ExtractConfig,
    edges: EdgesConfig,
    weights: str,
    acts: str,
    basis: str,
    parts: str,
) -> None:
    """One shard's sums behind the edges of every adjacent pair."""
    with budget.limit(memory_budget(extract, network.resolve_device(extract.device, model.kind))):
        sums = compute_edge_sums(
            *_edge_inputs(model, extract, weights, acts, basis),
            **_edge_settings(edges),
            first_batch=int(storage.read_attrs(acts)["first_batch"]),
            progress=True,
        )
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
) -> None:
    """Edges between every pair of adjacent node layers."""
    with budget.limit(memory_budget(extract, network.resolve_device(extract.device, model.kind))):
        result = build_edges(
            *_edge_inputs(model, extract, weights, acts, basis),
            **_edge_settings(edges),
            progress=True,
        )
    storage.write_edges(edges_out, result, provenance(edges=edges))
