"""Stage 5: Leiden modules of the interaction graph, with ε from the edge mass (cluster_graph)
or from the edge ablation at each evaluated resolution (cluster_resolutions), labelled where the
model kind can say what a module does."""

import functools
import logging

from interaction_basis import storage
from interaction_basis.config import ClusterConfig, ExtractConfig, ModelConfig, ResolutionsConfig
from interaction_basis.graph.clustering import Modules, build_interaction_graph, compute_modules
from interaction_basis.graph.edge_mass import compute_epsilon_from_mass
from interaction_basis.kinds import interpretation, network

log = logging.getLogger(__name__)


def _graph_layers(edges: dict, cluster: ClusterConfig) -> tuple[list[str], list[str]]:
    """The node layers of the edges, and those in the graph (``cluster.layers``, checked)."""
    node_layers = [a for a, _ in edges] + [list(edges)[-1][1]]
    layers = cluster.layers or node_layers[:-1]
    unknown = [layer for layer in layers if layer not in node_layers]
    if unknown:
        raise ValueError(f"cluster.layers {unknown} are not node layers: {node_layers}.")
    return node_layers, layers


def _labeller(model: ModelConfig, dtype: str, weights: str, basis: str, node_layers: list[str]):
    """``modules -> labels per module`` (dicts; empty where the kind cannot label)."""
    kind = interpretation.get(model.kind)

    @functools.cache
    def loaded():
        return network.load_model(model, weights, node_layers, dtype), storage.read_bases(basis)

    def label(modules: Modules) -> list[dict]:
        labels = kind.label_modules(model, loaded, modules)
        return labels if labels is not None else [{}] * modules.n_clusters

    return label


def _modules_record(graph, modules: Modules, labels: list[dict], singletons: bool) -> dict:
    """The JSON form of a partition: each node's module, and each module's features, layer
    spans and labels (modules of one feature left out unless ``singletons``)."""
    return {
        "modularity": modules.modularity,
        "n_non_singleton": modules.n_non_singleton,
        "nodes": [
            {"layer": v["layer"], "index": v["index"], "cluster": c}
            for v, c in zip(graph.vs, modules.membership, strict=True)
        ],
        "clusters": [
            {"id": i, "features": f, "layer_spans": s, **lab}
            for i, (f, s, lab) in enumerate(
                zip(modules.cluster_features, modules.layer_spans, labels, strict=True)
            )
            if singletons or sum(len(v) for v in f.values()) > 1
        ],
    }


def cluster_graph(
    model: ModelConfig,
    extract: ExtractConfig,
    cluster: ClusterConfig,
    weights: str,
    basis: str,
    edges: str,
    modules: str,
    graph: str,
) -> None:
    """Leiden modules of the interaction graph, ε from the edge mass."""
    weights_by_pair = storage.read_edges(edges)
    node_layers, layers = _graph_layers(weights_by_pair, cluster)
    epsilon = cluster.epsilon
    if epsilon is None and cluster.edge_norm in ("log", "node_log"):
        epsilon = {
            a: compute_epsilon_from_mass(e, cluster.epsilon_mass)
            for (a, _), e in weights_by_pair.items()
        }
    g = build_interaction_graph(
        weights_by_pair, layers, edge_norm=cluster.edge_norm, epsilon=epsilon
    )
    found = compute_modules(
        g,
        resolution=cluster.resolution,
        seed=cluster.seed,
        n_iterations=cluster.n_iterations,
        implementation=cluster.implementation,
    )
    g.vs["cluster"] = found.membership
    label = _labeller(model, extract.dtype, weights, basis, node_layers)
    result = {
        "resolution": found.resolution,
        "seed": found.seed,
        "n_iterations": found.n_iterations,
        "implementation": found.implementation,
        "edge_norm": cluster.edge_norm,
        "epsilon": epsilon,
        "n_clusters": found.n_clusters,
        "n_graph_edges": g.ecount(),
        "layers": layers,
        **_modules_record(g, found, label(found), singletons=True),
    }
    storage.write_json(modules, result)
    storage.write_graphml(graph, g)


def cluster_resolutions(
    model: ModelConfig,
    extract: ExtractConfig,
    cluster: ClusterConfig,
    evaluate: ResolutionsConfig,
    weights: str,
    basis: str,
    edges: str,
    ablation: str,
    modules_by_resolution: str,
) -> None:
    """Modules with the paper's ByLayerLogEdgeNorm: ε_l from the edge ablation, per γ."""
    weights_by_pair = storage.read_edges(edges)
    epsilon = {p["in_layer"]: p["epsilon"] for p in storage.read_json(ablation)["pairs"].values()}
    node_layers, layers = _graph_layers(weights_by_pair, cluster)
    g = build_interaction_graph(weights_by_pair, layers, edge_norm="log", epsilon=epsilon)
    label = _labeller(model, extract.dtype, weights, basis, node_layers)
    out = {"epsilon": epsilon, "n_graph_edges": g.ecount(), "layers": layers, "resolutions": {}}
    for gamma in evaluate.resolutions:
        found = compute_modules(
            g,
            resolution=gamma,
            seed=cluster.seed,
            n_iterations=cluster.n_iterations,
            implementation=cluster.implementation,
        )
        out["resolutions"][f"{gamma:g}"] = _modules_record(g, found, label(found), singletons=False)
    storage.write_json(modules_by_resolution, out)
