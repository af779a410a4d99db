"""Scores against a planted answer: block purity of features and the ARI of the modules.

For the planted-module MLP (method §H) every coordinate of every node layer belongs to one of
two blocks that never interact. A feature's **purity** is the largest fraction of its
direction's squared weight on one block: 1 for a feature inside a block, 0.5 at worst. Its
direction is its row of ``C⁺`` (activations ≈ Σ_j f̂_j C⁺_j), without the folded constant
coordinate and, for the hidden variant, un-mixed into the planted coordinates. The constant
feature (the masked leading ones) has no block and is left aside.

The **ARI** compares two partitions of the features above an importance threshold of the
clustered layers: their dominant block, and their Leiden module (singletons count as modules).
"""

from collections.abc import Mapping

import numpy as np
from jaxtyping import Float, Int
from sklearn.metrics import adjusted_rand_score
from torch import Tensor

from interaction_basis.lib.records import Basis

#: Importance, relative to the layer's largest non-constant one, above which a feature enters
#: the ARI (the "important features" threshold of summary.json).
ARI_IMPORTANCE_THRESHOLD = 1e-4
#: Purity at or above which a feature counts as inside one block.
PURE = 0.99


def compute_block_weights(
    basis: Basis,
    layer: str,
    blocks: Int[np.ndarray, " width"],
    mixing: Float[np.ndarray, "width width"] | None = None,
    *,
    constant: bool = True,
) -> Float[np.ndarray, "feature 2"]:
    """Each feature's share of squared direction weight on block 0 and block 1; NaN rows for
    the constant feature(s)."""
    d = basis.C_pinv.to("cpu").double().numpy()
    if constant:  # the folded constant coordinate belongs to no block
        d = d[:, :-1]
    if d.shape[1] != len(blocks):
        raise ValueError(
            f"Layer {layer!r} has {d.shape[1]} coordinates besides the constant, but the "
            f"planted blocks cover {len(blocks)}: the basis is not of this network."
        )
    if mixing is not None:
        d = d @ np.asarray(mixing, dtype=np.float64).T  # mixed coordinates → planted ones
    sq = d**2
    total = sq.sum(axis=1)
    shares = np.stack([sq[:, blocks == b].sum(axis=1) for b in (0, 1)], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = shares / total[:, None]
    shares[: basis.n_masked] = np.nan
    return shares


def important_features(basis: Basis, threshold: float = ARI_IMPORTANCE_THRESHOLD) -> list[int]:
    """Non-constant features with importance above ``threshold`` times the largest of them."""
    imp = basis.importance.to("cpu").double().numpy()
    rest = imp[basis.n_masked :]
    if rest.size == 0:
        return []
    return [basis.n_masked + int(i) for i in np.flatnonzero(rest > threshold * rest.max())]


def compute_cross_block_share(
    edges: Mapping[tuple[str, str], Tensor],
    shares: Mapping[str, np.ndarray],
    layers: list[str],
) -> float:
    """The share of the non-constant edge weight between the clustered layers that joins
    features of different dominant blocks (0 when the blocks never interact in the basis)."""
    cross = total = 0.0
    for a, b in zip(layers, layers[1:], strict=False):
        e = edges[(a, b)].to("cpu").double().numpy()
        dom_in, dom_out = (np.nanargmax(np.nan_to_num(shares[x], nan=-1.0), 1) for x in (a, b))
        keep_in = ~np.isnan(shares[a][:, 0])
        keep_out = ~np.isnan(shares[b][:, 0])
        e = e[np.ix_(keep_out, keep_in)]
        total += e.sum()
        cross += e[dom_out[keep_out][:, None] != dom_in[keep_in][None, :]].sum()
    return cross / total if total > 0 else float("nan")


def score_method(
    bases: Mapping[str, Basis],
    edges: Mapping[tuple[str, str], Tensor],
    modules: Mapping,
    blocks: Int[np.ndarray, " width"],
    mixings: Mapping[str, np.ndarray | None],
    constant: Mapping[str, bool],
    threshold: float = ARI_IMPORTANCE_THRESHOLD,
) -> dict:
    """Purity per feature and layer, and the ARI of one method's modules (``modules.json``).

    Returns a JSON-ready dict: ``purity`` (per layer, one value per feature, ``None`` for the
    constant), ``layers`` (per layer: features scored, min/mean purity, how many are pure),
    and over the clustered layers: ``min_purity``, ``mean_purity``, ``fraction_pure``,
    ``cross_block_edge_share``, ``ari``, ``n_ari_features`` and
    ``modules_spanning_both_blocks``.
    """
    shares = {
        layer: compute_block_weights(b, layer, blocks, mixings.get(layer), constant=constant[layer])
        for layer, b in bases.items()
    }
    purity = {layer: s.max(axis=1) for layer, s in shares.items()}

    def stats(values: np.ndarray) -> dict:
        v = values[~np.isnan(values)]
        if v.size == 0:
            return {"n": 0, "min": None, "mean": None, "n_pure": 0}
        return {
            "n": int(v.size),
            "min": float(v.min()),
            "mean": float(v.mean()),
            "n_pure": int((v >= PURE).sum()),
        }

    clustered = list(modules["layers"])
    pooled = np.concatenate([purity[layer] for layer in clustered])
    overall = stats(pooled)

    cluster_of = {(n["layer"], n["index"]): n["cluster"] for n in modules["nodes"]}
    block_labels, module_labels = [], []
    for layer in clustered:
        dominant = np.nanargmax(np.nan_to_num(shares[layer], nan=-1.0), axis=1)
        for j in important_features(bases[layer], threshold):
            block_labels.append(int(dominant[j]))
            module_labels.append(cluster_of[(layer, j)])
    spanning = {
        m
        for m in set(module_labels)
        if len({b for b, mm in zip(block_labels, module_labels, strict=True) if mm == m}) > 1
    }
    return {
        "importance_threshold": threshold,
        "purity": {
            layer: [None if np.isnan(x) else float(x) for x in p] for layer, p in purity.items()
        },
        "layers": {layer: stats(p) for layer, p in purity.items()},
        "clustered_layers": clustered,
        "min_purity": overall["min"],
        "mean_purity": overall["mean"],
        "fraction_pure": overall["n_pure"] / overall["n"] if overall["n"] else None,
        "cross_block_edge_share": compute_cross_block_share(edges, shares, clustered),
        "ari": float(adjusted_rand_score(block_labels, module_labels)) if block_labels else None,
        "n_ari_features": len(block_labels),
        "n_ari_modules": len(set(module_labels)),
        "modules_spanning_both_blocks": len(spanning),
    }


def render_ground_truth(scores: Mapping[str, Mapping]) -> list[str]:
    """Markdown lines for summary.md: one row per method."""
    threshold = next(iter(scores.values()))["importance_threshold"]
    lines = [
        "## Ground truth: planted blocks",
        "",
        "Purity: a feature's largest share of squared direction weight on one planted block "
        f"(constant feature aside; pure: ≥ {PURE}), over the clustered layers. Cross-block "
        "edge weight: the share of the edge weight between them joining features of different "
        "(dominant) blocks. ARI: planted "
        "block (dominant) against Leiden module, for the features with importance above "
        f"{threshold:g} of their layer's largest.",
        "",
        "| method | min purity | mean purity | pure features | cross-block edge weight | ARI "
        "| features (modules) | modules spanning both blocks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, s in scores.items():
        n = sum(s["layers"][layer]["n"] for layer in s["clustered_layers"])
        n_pure = sum(s["layers"][layer]["n_pure"] for layer in s["clustered_layers"])
        ari = "-" if s["ari"] is None else f"{s['ari']:.3f}"
        lines.append(
            f"| {method} | {_fmt(s['min_purity'])} | {_fmt(s['mean_purity'])} | "
            f"{n_pure} / {n} | {s['cross_block_edge_share']:.2e} | {ari} | "
            f"{s['n_ari_features']} ({s['n_ari_modules']}) | "
            f"{s['modules_spanning_both_blocks']} |"
        )
    return [*lines, ""]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
