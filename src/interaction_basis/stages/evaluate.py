"""Stage 7 (evaluation): node and edge ablations on held-out data (method §E)."""

import logging

from interaction_basis import storage
from interaction_basis.config import Device, EdgeAblationConfig, ModelConfig, NodeAblationConfig
from interaction_basis.evaluate import ablation
from interaction_basis.graph.edge_mass import MASS_FRACTIONS, compute_edge_mass_counts
from interaction_basis.kinds import data, network
from interaction_basis.progress import progress
from interaction_basis.stages.common import log_device_peak, resolve_device, return_freed_memory

log = logging.getLogger(__name__)


def _eval_set(model_cfg: ModelConfig, cfg: NodeAblationConfig | EdgeAblationConfig, tokens):
    task = data.get(model_cfg.kind).load_data(model_cfg, tokens)
    n = cfg.max_samples or len(task.test_labels)
    return task.test_inputs[:n], task.test_labels[:n]


def _setup(
    model_cfg: ModelConfig,
    cfg: NodeAblationConfig | EdgeAblationConfig,
    weights_path: str,
    basis_path: str,
    tokens: str | None,
    device: Device,
):
    """The network (on the device of ``extract.device``), its bases, the evaluation inputs and
    labels, and the unablated score."""
    bases = storage.read_bases(basis_path)
    # Scores need the logits: continue past a rotated final node layer (LMs end at unembed).
    layers = list(bases) if "output" in bases else [*bases, "output"]
    on = resolve_device(device, model_cfg.kind)
    net = network.load_model(model_cfg, weights_path, layers, cfg.dtype, on)
    inputs, labels = _eval_set(model_cfg, cfg, tokens)
    base = ablation.compute_unablated_score(
        net, inputs, labels, metric=cfg.metric, batch_size=cfg.batch_size
    )
    return net, bases, inputs, labels, base


def ablate_nodes(
    model: ModelConfig,
    evaluate: NodeAblationConfig,
    weights: str,
    basis: str,
    node_ablation: str,
    tokens: str | None = None,
    device: Device = "auto",
) -> None:
    """Score with the k most important features kept, per node layer (method §E); ``device``
    is ``extract.device``."""
    cfg = evaluate
    net, bases, inputs, labels, base = _setup(model, cfg, weights, basis, tokens, device)
    layers = {}
    for layer in progress(net.node_layers[:-1], "node ablation", unit="layer"):
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
            net,
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
    log_device_peak(net.device)
    storage.write_json(
        node_ablation,
        {"metric": cfg.metric, "base_score": base, "n_samples": len(labels), "layers": layers},
    )


def ablate_edges(
    model: ModelConfig,
    evaluate: EdgeAblationConfig,
    weights: str,
    basis: str,
    edges: str,
    edge_ablation: str,
    tokens: str | None = None,
    device: Device = "auto",
) -> None:
    """Fewest edges per layer pair that keep the score within ``edge_delta`` (method §E);
    ``device`` is ``extract.device``."""
    return_freed_memory()  # a stable peak: see docs/performance.md, edge ablation memory
    cfg = evaluate
    net, bases, inputs, labels, base = _setup(model, cfg, weights, basis, tokens, device)
    pair_edges = storage.read_edges(edges)
    results = ablation.compute_all_edges_required(
        net,
        bases,
        pair_edges,
        inputs,
        labels,
        metric=cfg.metric,
        delta=cfg.edge_delta,
        scaling=cfg.edge_scaling,
        batch_size=cfg.batch_size,
        base_score=base,
    )
    log_device_peak(net.device)
    pairs = {}
    for (a, b), r in results.items():
        mass = compute_edge_mass_counts(pair_edges[(a, b)], (*MASS_FRACTIONS, 0.999))
        pairs[f"{a}__{b}"] = {
            "in_layer": a,
            "out_layer": b,
            "n_edges_required": r.n_edges_required,
            "score": r.score,
            "base_score": r.base_score,
            "epsilon": r.epsilon,
            "epsilon_last": r.epsilon_last,
            "search_space": r.total,
            "n_non_constant_edges": int(pair_edges[(a, b)][:, 1:].numel()),
            "edges_for_mass": {f"{f:g}": n for f, n in mass.items()},
            "bisect": {str(k): v for k, v in dict(r.scores).items()},
        }
        log.info("edge ablation %s->%s: %d edges (eps %.4g)", a, b, r.n_edges_required, r.epsilon)
    storage.write_json(
        edge_ablation,
        {
            "metric": cfg.metric,
            "delta": cfg.edge_delta,
            "scaling": cfg.edge_scaling,
            "pairs": pairs,
        },
    )
