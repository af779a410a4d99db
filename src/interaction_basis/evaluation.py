"""Evaluation stage entry points: node and edge ablations, ablation-threshold modules and the
numbers behind the report (lib_spec D, E). Wiring only, like ``stages``."""

import logging

from tqdm.auto import tqdm

from interaction_basis import ablation, io, tasks
from interaction_basis.clustering import build_interaction_graph, compute_modules
from interaction_basis.config import ClusterConfig, EvaluateConfig, ModelConfig
from interaction_basis.stages import set_threads  # noqa: F401 (the scripts' first call)
from interaction_basis.summary import MASS_FRACTIONS, label_modadd_clusters

log = logging.getLogger(__name__)


def _eval_set(model_cfg: ModelConfig, cfg: EvaluateConfig, tokens_path: str | None):
    data = tasks.load_task_data(model_cfg, tokens_path)
    n = cfg.max_samples or len(data.test_labels)
    return data.test_inputs[:n], data.test_labels[:n]


def _model(model_cfg: ModelConfig, weights_path: str, basis_path: str, dtype: str):
    bases = io.read_bases(basis_path)
    # Scores need the logits: continue past a rotated final node layer (LMs end at unembed).
    layers = list(bases) if "output" in bases else [*bases, "output"]
    model = tasks.build_model(model_cfg, tasks.load_weights(model_cfg, weights_path), layers, dtype)
    return model, bases


def ablate_nodes(
    model_cfg: ModelConfig,
    cfg: EvaluateConfig,
    weights_path: str,
    basis_path: str,
    out_json: str,
    tokens_path: str | None = None,
) -> None:
    """Score with the k most important features kept, per node layer (lib_spec E)."""
    model, bases = _model(model_cfg, weights_path, basis_path, cfg.dtype)
    inputs, labels = _eval_set(model_cfg, cfg, tokens_path)
    base = ablation.compute_unablated_score(
        model, inputs, labels, metric=cfg.metric, batch_size=cfg.batch_size
    )
    layers = {}
    for layer in tqdm(model.node_layers[:-1], desc="node ablation", unit="layer"):
        n = bases[layer].C.shape[0]
        if cfg.node_schedule == "exponential":
            counts = ablation.compute_exponential_schedule(
                n,
                ablate_every_vec_cutoff=min(cfg.ablate_every_vec_cutoff, n - 1),
                exp_base=cfg.exp_base,
            )
        else:
            counts = ablation.compute_linear_schedule(n, n_points=min(cfg.n_points, n + 1))
        scores = ablation.compute_node_ablation_scores(
            model,
            layer,
            bases[layer],
            inputs,
            labels,
            counts,
            metric=cfg.metric,
            batch_size=cfg.batch_size,
        )
        layers[layer] = {
            "kept": list(scores),
            "score": list(scores.values()),
            "n_features": int(bases[layer].C.shape[1]),
            "orig": n,
        }
        log.info("node ablation %s: %s", layer, scores)
    io.write_json(
        out_json,
        {"metric": cfg.metric, "base_score": base, "n_samples": len(labels), "layers": layers},
    )


def ablate_edges(
    model_cfg: ModelConfig,
    cfg: EvaluateConfig,
    weights_path: str,
    basis_path: str,
    edges_path: str,
    out_json: str,
    tokens_path: str | None = None,
) -> None:
    """Fewest edges per layer pair that keep the score within ``edge_delta`` (lib_spec E)."""
    model, bases = _model(model_cfg, weights_path, basis_path, cfg.dtype)
    edges = io.read_edges(edges_path)
    inputs, labels = _eval_set(model_cfg, cfg, tokens_path)
    settings = dict(
        metric=cfg.metric, delta=cfg.edge_delta, scaling=cfg.edge_scaling, batch_size=cfg.batch_size
    )
    base = ablation.compute_unablated_score(
        model, inputs, labels, metric=cfg.metric, batch_size=cfg.batch_size
    )
    # One pair at a time (what compute_all_edges_required does), for a progress line per pair.
    results = {
        (a, b): ablation.compute_edges_required(
            model, a, bases[a], bases[b], e, inputs, labels, base_score=base, **settings
        )
        for (a, b), e in tqdm(edges.items(), desc="edge ablation", unit="pair")
    }
    pairs = {}
    for (a, b), r in results.items():
        mass = ablation.compute_edge_mass_counts(edges[(a, b)], (*MASS_FRACTIONS, 0.999))
        pairs[f"{a}__{b}"] = {
            "in_layer": a,
            "out_layer": b,
            "n_edges_required": r.n_edges_required,
            "score": r.score,
            "base_score": r.base_score,
            "epsilon": r.epsilon,
            "epsilon_last": r.epsilon_last,
            "search_space": r.total,
            "n_non_constant_edges": int(edges[(a, b)][:, 1:].numel()),
            "edges_for_mass": {f"{f:g}": n for f, n in mass.items()},
            "bisect": {str(k): v for k, v in dict(r.scores).items()},
        }
        log.info("edge ablation %s->%s: %d edges (eps %.4g)", a, b, r.n_edges_required, r.epsilon)
    io.write_json(
        out_json,
        {
            "metric": cfg.metric,
            "delta": cfg.edge_delta,
            "scaling": cfg.edge_scaling,
            "pairs": pairs,
        },
    )


def cluster_resolutions(
    model_cfg: ModelConfig,
    extract_dtype: str,
    cluster_cfg: ClusterConfig,
    cfg: EvaluateConfig,
    weights_path: str,
    basis_path: str,
    edges_path: str,
    edge_ablation_json: str,
    out_json: str,
) -> None:
    """Modules with the paper's ByLayerLogEdgeNorm: ε_l from the edge ablation, per γ."""
    edges = io.read_edges(edges_path)
    abl = io.read_json(edge_ablation_json)["pairs"]
    epsilon = {p["in_layer"]: p["epsilon"] for p in abl.values()}
    node_layers = [a for a, _ in edges] + [list(edges)[-1][1]]
    layers = cluster_cfg.layers or node_layers[:-1]
    graph = build_interaction_graph(edges, layers, edge_norm="log", epsilon=epsilon)
    model = None
    if model_cfg.kind == "modadd":
        model = tasks.build_model(
            model_cfg, io.read_weights(weights_path), node_layers, extract_dtype
        )
        bases = io.read_bases(basis_path)
    out = {"epsilon": epsilon, "n_graph_edges": graph.ecount(), "layers": layers, "resolutions": {}}
    for gamma in cfg.resolutions:
        modules = compute_modules(
            graph, resolution=gamma, seed=cluster_cfg.seed, n_iterations=cluster_cfg.n_iterations
        )
        labels = (
            label_modadd_clusters(model, bases, modules, model_cfg.train.modulus)
            if model is not None
            else [{}] * modules.n_clusters
        )
        out["resolutions"][f"{gamma:g}"] = {
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
                if sum(len(v) for v in f.values()) > 1
            ],
        }
    io.write_json(out_json, out)


MODULES_TITLE = "Leiden modules, log edge norm with ε from the edge-ablation threshold (lib_spec D)"


def make_report_figures(
    experiment: str,
    methods: list[str],
    node_paths: list[str],
    edge_abl_paths: list[str],
    modules_paths: list[str],
    edges_paths: list[str],
    out_json: str,
    node_png: str,
    edge_png: str,
    dist_png: str,
    modules_png: str,
) -> None:
    """evaluation.json (every number in the report's plots) and the evaluation figures."""
    from interaction_basis.plotting import (
        plot_edge_ablation,
        plot_edge_distributions,
        plot_interaction_graphs,
        plot_node_ablation,
    )

    nodes = {m: io.read_json(p) for m, p in zip(methods, node_paths, strict=True)}
    edge_abl = {m: io.read_json(p) for m, p in zip(methods, edge_abl_paths, strict=True)}
    modules = {m: io.read_json(p) for m, p in zip(methods, modules_paths, strict=True)}
    edges = {m: io.read_edges(p) for m, p in zip(methods, edges_paths, strict=True)}
    gamma = max(modules[methods[0]]["resolutions"], key=float)
    graph_modules = {
        m: {
            **modules[m]["resolutions"][gamma],
            "layers": modules[m]["layers"],
            "resolution": float(gamma),
        }
        for m in methods
    }
    io.write_json(
        out_json,
        {
            "experiment": experiment,
            "node_ablation": nodes,
            "edge_ablation": edge_abl,
            "modules": modules,
        },
    )
    for path, plot, args in (
        (node_png, plot_node_ablation, (nodes,)),
        (edge_png, plot_edge_ablation, (edge_abl,)),
        (dist_png, plot_edge_distributions, (edges,)),
        (modules_png, plot_interaction_graphs, (edges, graph_modules, MODULES_TITLE)),
    ):
        with io.atomic_figure_path(path) as tmp:
            plot(*args, tmp)
