"""Stage 7 (report): evaluation.json, every number behind the evaluation figures, and the
figures."""

from collections.abc import Callable

from interaction_basis import storage
from interaction_basis.report.figures import (
    plot_edge_ablation,
    plot_edge_distributions,
    plot_interaction_graphs,
    plot_node_ablation,
)

MODULES_TITLE = "Leiden modules, log edge norm with ε from the edge-ablation threshold (method §D)"


def make_report_figures(
    experiment: str,
    methods: list[str],
    nodes: list[str],
    edge_ablation: list[str],
    modules: list[str],
    edges: list[str],
    json: str,
    nodes_png: str,
    edges_png: str,
    distribution: str,
    modules_png: str,
) -> None:
    """evaluation.json (every number in the report's plots) and the evaluation figures."""
    node_abl = {m: storage.read_json(p) for m, p in zip(methods, nodes, strict=True)}
    edge_abl = {m: storage.read_json(p) for m, p in zip(methods, edge_ablation, strict=True)}
    partitions = {m: storage.read_json(p) for m, p in zip(methods, modules, strict=True)}
    weights = {m: storage.read_edges(p) for m, p in zip(methods, edges, strict=True)}
    gamma = max(partitions[methods[0]]["resolutions"], key=float)
    graph_modules = {
        m: {
            **partitions[m]["resolutions"][gamma],
            "layers": partitions[m]["layers"],
            "resolution": float(gamma),
        }
        for m in methods
    }
    storage.write_json(
        json,
        {
            "experiment": experiment,
            "node_ablation": node_abl,
            "edge_ablation": edge_abl,
            "modules": partitions,
        },
    )
    figures: list[tuple[str, Callable[..., None], tuple]] = [
        (nodes_png, plot_node_ablation, (node_abl,)),
        (edges_png, plot_edge_ablation, (edge_abl,)),
        (distribution, plot_edge_distributions, (weights,)),
        (modules_png, plot_interaction_graphs, (weights, graph_modules, MODULES_TITLE)),
    ]
    for path, plot, args in figures:
        with storage.atomic_figure_path(path) as tmp:
            plot(*args, tmp)
