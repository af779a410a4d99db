"""Interaction graphs and Leiden modules (method §D).

The graph has one node per feature of every chosen node layer and undirected, weighted edges
between consecutive chosen layers only. Modules are found with leidenalg's
``RBConfigurationVertexPartition`` (Newman modularity with a resolution γ), or with igraph's own
Leiden on the same objective, which is an order of magnitude faster on graphs of millions of edges
(a language model's); the reported ``Q`` is igraph's weighted modularity at γ = 1, whatever γ the
clustering used (method §D.3, F.15).
"""

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import igraph as ig
import leidenalg
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

EdgeNorm = Literal["log", "sqrt", "abs", "max", "node_log"]
EDGE_NORMS: tuple[str, ...] = get_args(EdgeNorm)
Implementation = Literal["leidenalg", "igraph"]
IMPLEMENTATIONS: tuple[str, ...] = get_args(Implementation)
NO_CONSTANT_LAYERS = frozenset({"output"})  # the logits carry no folded constant node

# Layers differ in size, so the dimensions of a Mapping's values are not bound (leading "_").
EdgeMatrix = Float[Tensor, "_out _in"] | Float[np.ndarray, "_out _in"]


def _as_array(e: EdgeMatrix, key: tuple[str, str]) -> np.ndarray:
    arr = e.detach().to("cpu", torch.float64).numpy() if isinstance(e, Tensor) else e
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"Edges {key} must be a 2-D (out, in) matrix, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"Edges {key} contain NaN/inf values; rebuild them in float64.")
    if (arr < 0).any():
        raise ValueError(
            f"Edges {key} contain negative entries (min {arr.min():.3g}); the graph expects "
            "the squared edge formula, whose entries are non-negative."
        )
    return arr


def _layer_epsilon(epsilon: Mapping[str, float] | float | None, layer: str, norm: str) -> float:
    if epsilon is None:
        raise ValueError(
            f"edge_norm={norm!r} needs epsilon: one float or a dict keyed by the input layer "
            "(e.g. the smallest edge kept by the edge ablation, method §D.2)."
        )
    if isinstance(epsilon, Mapping):
        if layer not in epsilon:
            raise ValueError(
                f"epsilon has no entry for input layer {layer!r}; it has {sorted(epsilon)}."
            )
        eps = float(epsilon[layer])
    else:
        eps = float(epsilon)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"epsilon for layer {layer!r} must be positive and finite, got {eps}.")
    return eps


def compute_edge_weights(
    e: Float[np.ndarray, "out in"],
    *,
    edge_norm: EdgeNorm,
    epsilon: float | None = None,
) -> Float[np.ndarray, "out in"]:
    """Graph weights from one edge matrix (method §D.2); zero means "no edge".

    Args:
        e: non-negative edges ``E`` (out × in) of one pair of layers.
        edge_norm: ``log``: ``max(0, log10(E/ε))`` (``ByLayerLogEdgeNorm``/``LogEdgeNorm``);
            ``sqrt``: ``√E``; ``abs``: ``E/ΣE``; ``max``: ``E/max E``; ``node_log``: the log
            norm times ``√E_ij / Σ_i √E_ij`` (normalised over the output nodes ``i`` of each
            input node ``j``, ``NodeNormalizedLogEdgeNorm``).
        epsilon: the precision floor ε of the log norms.

    Returns:
        The weights, same shape as ``e``.
    """
    if edge_norm in ("log", "node_log"):
        if epsilon is None or not epsilon > 0:
            raise ValueError(f"edge_norm={edge_norm!r} needs a positive epsilon, got {epsilon}.")
        with np.errstate(divide="ignore"):
            w = np.maximum(0.0, np.log10(e / epsilon))
        if edge_norm == "node_log":
            s = np.sqrt(e)
            col = s.sum(axis=0, keepdims=True)
            w = w * np.divide(s, col, out=np.zeros_like(s), where=col > 0)
        return w
    if edge_norm == "sqrt":
        return np.sqrt(e)
    if edge_norm in ("abs", "max"):
        scale = e.sum() if edge_norm == "abs" else e.max(initial=0.0)
        return e / scale if scale > 0 else np.zeros_like(e)
    raise ValueError(f"Unknown edge_norm {edge_norm!r}; use one of {', '.join(EDGE_NORMS)}.")


def build_interaction_graph(
    edges: Mapping[tuple[str, str], EdgeMatrix],
    layers: Sequence[str],
    *,
    edge_norm: EdgeNorm,
    epsilon: Mapping[str, float] | float | None = None,
    exclude_constant: bool = True,
) -> ig.Graph:
    """The undirected, weighted interaction graph over the features of ``layers`` (method §D.1).

    Args:
        edges: ``E`` per ``(in_layer, out_layer)``, each of shape (out_features, in_features).
            Every pair of consecutive ``layers`` must be present; other pairs are ignored.
        layers: the node layers in forward order (e.g. ``["ln1.0", "ln2.0", "unembed"]``; the
            reference leaves ``output`` out).
        edge_norm: how ``E`` becomes a weight, see :func:`compute_edge_weights`.
        epsilon: ε of the log norms, one float or a dict keyed by the *input* layer of each pair.
        exclude_constant: drop the edges to and from feature 0 (the constant node) of every layer
            that has one (all but ``output``), so constant nodes become singletons.

    Returns:
        An ``igraph.Graph`` with one vertex per feature, vertex attributes ``layer``, ``index``
        and ``name`` (``"ln2.0:5"``), and edge attributes ``weight`` (> 0) and ``E`` (the raw
        edge value). Vertices are ordered layer by layer, features in basis order.
    """
    layers = list(layers)
    if len(layers) < 1:
        raise ValueError("Need at least one node layer to build a graph.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"Node layers must be distinct, got {layers}.")
    if edge_norm not in EDGE_NORMS:
        raise ValueError(f"Unknown edge_norm {edge_norm!r}; use one of {', '.join(EDGE_NORMS)}.")
    pairs = list(itertools.pairwise(layers))
    missing = [p for p in pairs if p not in edges]
    if missing:
        raise ValueError(
            f"No edges for consecutive layer pair(s) {missing}; edges has {sorted(edges)}. "
            "Pass the layers in forward order, as in the build."
        )
    mats = {p: _as_array(edges[p], p) for p in pairs}

    sizes: dict[str, int] = {}
    for (l_in, l_out), e in mats.items():
        for layer, n in ((l_in, e.shape[1]), (l_out, e.shape[0])):
            if sizes.setdefault(layer, n) != n:
                raise ValueError(
                    f"Layer {layer!r} has {sizes[layer]} features in one edge matrix and {n} in "
                    "another; the edges come from different bases."
                )
    if len(layers) == 1:
        # A single layer has no edges; without an edge matrix its size is unknown.
        cand = [e.shape[1] for (a, _), e in edges.items() if a == layers[0]]
        cand += [e.shape[0] for (_, b), e in edges.items() if b == layers[0]]
        if not cand:
            raise ValueError(f"No edge matrix mentions layer {layers[0]!r}; cannot size it.")
        sizes[layers[0]] = int(cand[0])

    offsets, start = {}, 0
    for layer in layers:
        offsets[layer] = start
        start += sizes[layer]

    src_all, dst_all, w_all, e_all = [], [], [], []
    for (l_in, l_out), e in mats.items():
        eps = _layer_epsilon(epsilon, l_in, edge_norm) if edge_norm in ("log", "node_log") else None
        w = compute_edge_weights(e, edge_norm=edge_norm, epsilon=eps)
        if exclude_constant:
            if l_out not in NO_CONSTANT_LAYERS:
                w[0, :] = 0.0
            if l_in not in NO_CONSTANT_LAYERS:
                w[:, 0] = 0.0
        rows, cols = np.nonzero(w > 0)
        src_all.append(cols + offsets[l_in])
        dst_all.append(rows + offsets[l_out])
        w_all.append(w[rows, cols])
        e_all.append(e[rows, cols])

    graph = ig.Graph(n=start, directed=False)
    graph.vs["layer"] = [layer for layer in layers for _ in range(sizes[layer])]
    graph.vs["index"] = [i for layer in layers for i in range(sizes[layer])]
    graph.vs["name"] = [f"{layer}:{i}" for layer in layers for i in range(sizes[layer])]
    if src_all:
        # Pairs of Python ints for one layer pair at a time: a list of every edge's tuple
        # would cost ~120 bytes an edge at the peak (a language model's graph has millions).
        graph.add_edges(
            itertools.chain.from_iterable(
                zip(s.tolist(), d.tolist(), strict=True)
                for s, d in zip(src_all, dst_all, strict=True)
            )
        )
        graph.es["weight"] = np.concatenate(w_all).tolist()
        graph.es["E"] = np.concatenate(e_all).tolist()
    return graph


@dataclass(frozen=True)
class Modules:
    """A partition of an interaction graph's vertices into modules.

    Attributes:
        membership: cluster id per vertex; clusters are numbered by decreasing size (ties: by
            smallest vertex id), so cluster 0 is the largest.
        clusters: vertex ids per cluster, ascending, in cluster order.
        modularity: weighted Newman modularity at γ = 1 of ``membership`` (igraph); NaN for a
            graph without edges.
        objective: the optimiser's quality, ``Σ_ij (w_ij − γ k_i k_j / 2m) δ(c_i, c_j)`` at the
            clustering resolution (not normalised; for diagnostics only).
        resolution: γ used by the clustering.
        seed: the Leiden seed.
        n_iterations: Leiden iterations (negative: until stable).
        implementation: ``leidenalg`` or ``igraph`` (see :func:`compute_modules`).
        n_clusters: number of clusters, singletons (e.g. constant nodes) included.
        n_non_singleton: clusters with more than one vertex.
        layers: the node layers, in graph order.
        cluster_features: per cluster, ``{layer: feature indices}`` for the layers it touches.
        layer_spans: per cluster, ``{layer: number of its features}`` for the layers it touches.
    """

    membership: list[int]
    clusters: list[list[int]]
    modularity: float
    objective: float
    resolution: float
    seed: int
    n_iterations: int
    implementation: str
    n_clusters: int
    n_non_singleton: int
    layers: list[str]
    cluster_features: list[dict[str, list[int]]]
    layer_spans: list[dict[str, int]]

    def non_singleton(self) -> list[int]:
        """Ids of the clusters with more than one vertex (they come first)."""
        return [c for c, members in enumerate(self.clusters) if len(members) > 1]


def _check_graph(graph: ig.Graph) -> None:
    if graph.vcount() == 0:
        raise ValueError("The interaction graph has no vertices; check the layers and edges.")
    if graph.is_directed():
        raise ValueError("Expected an undirected interaction graph (build_interaction_graph).")
    if graph.ecount() == 0:
        return
    if "weight" not in graph.es.attributes():
        raise ValueError("Graph edges need a 'weight' attribute (build_interaction_graph).")
    w = np.asarray(graph.es["weight"], dtype=np.float64)
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(
            "Edge weights must be finite and positive; drop zero-weight edges when building."
        )


def compute_modularity(graph: ig.Graph, membership: Sequence[int]) -> float:
    """Weighted Newman modularity at γ = 1 (method §D.3), NaN for a graph without edges."""
    _check_graph(graph)
    if len(membership) != graph.vcount():
        raise ValueError(f"membership has {len(membership)} entries for {graph.vcount()} vertices.")
    if graph.ecount() == 0:
        return float("nan")
    return float(graph.modularity(list(membership), weights="weight", resolution=1.0))


def _leiden(
    graph: ig.Graph, resolution: float, seed: int, n_iterations: int, implementation: str
) -> tuple[list[int], float]:
    """Raw Leiden membership and ``Σ_ij (w_ij − γ k_i k_j / 2m) δ(c_i, c_j)`` (both orders)."""
    if implementation == "leidenalg":
        part = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            weights="weight",
            resolution_parameter=resolution,
            seed=seed,
            n_iterations=n_iterations,
        )
        return list(part.membership), float(part.quality())
    # igraph draws from one generator set module-wide (Python's `random` by default): a seeded
    # one for this call, then the default back, so that the result depends on the seed only.
    ig.set_random_number_generator(random.Random(seed))
    try:
        found = graph.community_leiden(
            objective_function="modularity",
            weights="weight",
            resolution=resolution,
            n_iterations=n_iterations,
        )
    finally:
        ig.set_random_number_generator(random)
    two_m = 2 * float(np.sum(graph.es["weight"]))
    q = graph.modularity(found.membership, weights="weight", resolution=resolution)
    return list(found.membership), two_m * q


def compute_modules(
    graph: ig.Graph,
    *,
    resolution: float,
    seed: int,
    n_iterations: int = 10,
    implementation: Implementation = "leidenalg",
) -> Modules:
    """Leiden modules of an interaction graph (method §D.3, with igraph + leidenalg).

    Args:
        graph: from :func:`build_interaction_graph` (``weight`` edge attribute; a ``layer`` and
            ``index`` vertex attribute for the per-layer summaries, else one layer ``""``).
        resolution: γ of the Newman modularity being maximised (0.5 and 1 in the paper).
        seed: the Leiden seed; the partition is deterministic given seed and graph.
        n_iterations: Leiden iterations (the reference runs 10; negative runs until stable).
        implementation: ``leidenalg`` (``RBConfigurationVertexPartition``, the method's) or
            ``igraph`` (``Graph.community_leiden`` on the modularity at the same γ, the same
            algorithm's C implementation: 10-17x faster on a GPT-2 graph of 12 million edges,
            docs/performance.md). The two give different partitions of similar quality.

    Returns:
        The partition, with clusters relabelled by decreasing size, and its weighted Q at γ = 1.
        A graph without edges gives all singletons and ``modularity`` NaN.
    """
    _check_graph(graph)
    if not (resolution > 0 and math.isfinite(resolution)):
        raise ValueError(f"resolution must be positive and finite, got {resolution}.")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown Leiden implementation {implementation!r}; use one of "
            f"{', '.join(IMPLEMENTATIONS)}."
        )
    n = graph.vcount()
    if graph.ecount() == 0:
        raw, objective = list(range(n)), 0.0
    else:
        raw, objective = _leiden(
            graph, float(resolution), int(seed), int(n_iterations), implementation
        )

    groups: dict[int, list[int]] = {}
    for v, c in enumerate(raw):
        groups.setdefault(c, []).append(v)
    clusters = sorted(groups.values(), key=lambda m: (-len(m), m[0]))
    membership = [0] * n
    for c, members in enumerate(clusters):
        for v in members:
            membership[v] = c

    attrs = graph.vs.attributes()
    layer_of = graph.vs["layer"] if "layer" in attrs else [""] * n
    index_of = graph.vs["index"] if "index" in attrs else list(range(n))
    layers = list(dict.fromkeys(layer_of))
    cluster_features = []
    for members in clusters:
        feats: dict[str, list[int]] = {}
        for v in members:
            feats.setdefault(layer_of[v], []).append(int(index_of[v]))
        cluster_features.append({lay: feats[lay] for lay in layers if lay in feats})
    return Modules(
        membership=membership,
        clusters=clusters,
        modularity=compute_modularity(graph, membership),
        objective=objective,
        resolution=float(resolution),
        seed=int(seed),
        n_iterations=int(n_iterations),
        implementation=implementation,
        n_clusters=len(clusters),
        n_non_singleton=sum(len(m) > 1 for m in clusters),
        layers=layers,
        cluster_features=cluster_features,
        layer_spans=[{lay: len(f) for lay, f in cf.items()} for cf in cluster_features],
    )


def compute_within_module_fraction(
    graph: ig.Graph, membership: Sequence[int], *, weighted: bool = True
) -> dict[tuple[str, str], float]:
    """Fraction of each layer pair's edges (or edge weight) that falls inside modules.

    The analogue of the reference's ``num_edges_kept`` (method §D.4). Pairs without edges give
    NaN.
    """
    _check_graph(graph)
    if len(membership) != graph.vcount():
        raise ValueError(f"membership has {len(membership)} entries for {graph.vcount()} vertices.")
    layer_of = graph.vs["layer"] if "layer" in graph.vs.attributes() else [""] * graph.vcount()
    order = list(dict.fromkeys(layer_of))
    total: dict[tuple[str, str], float] = {}
    inside: dict[tuple[str, str], float] = {}
    weights = graph.es["weight"] if graph.ecount() else []
    for edge, w in zip(graph.es, weights, strict=True):
        a, b = edge.tuple
        la, lb = layer_of[a], layer_of[b]
        key = (la, lb) if order.index(la) <= order.index(lb) else (lb, la)
        x = float(w) if weighted else 1.0
        total[key] = total.get(key, 0.0) + x
        if membership[a] == membership[b]:
            inside[key] = inside.get(key, 0.0) + x
    pairs = list(itertools.pairwise(order))
    return {
        p: (inside.get(p, 0.0) / total[p]) if total.get(p, 0.0) > 0 else float("nan") for p in pairs
    }
