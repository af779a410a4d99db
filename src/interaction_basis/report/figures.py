"""Figures of the summary and report stages."""

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from torch import Tensor  # noqa: E402

from interaction_basis.graph.layout import layout_layer, module_order  # noqa: E402
from interaction_basis.lib.records import Basis  # noqa: E402

# tab10 is a ListedColormap of RGB tuples (its stubs say only Colormap, colors only ArrayLike).
COLORS = cast(
    tuple[tuple[float, float, float], ...], cast(ListedColormap, plt.get_cmap("tab10")).colors
)


def _freq(label: object) -> object:
    return label["frequency"] if isinstance(label, Mapping) else label


def plot_spectra(bases: Mapping[str, Mapping[str, Basis]], path: Path) -> None:
    """Importance spectra (LIB Λ, PCA eigenvalues) per layer, normalised to the largest."""
    methods = list(bases)
    layers = list(bases[methods[0]])[:-1]
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for i, m in enumerate(methods):
            b = bases[m][layer]
            vals = b.importance[b.n_masked :].numpy()
            if vals.size:
                ax.semilogy(
                    np.arange(1, vals.size + 1),
                    vals / vals.max(),
                    ".-",
                    ms=3,
                    color=COLORS[i],
                    label=f"{m} ({vals.size})",
                )
        ax.set(title=layer, xlabel="feature (constant excluded)", ylabel="importance / max")
        ax.legend(fontsize=8)
    fig.suptitle("Spectra: LIB Λ vs PCA variance")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_interaction_graphs(
    edges: Mapping[str, Mapping[tuple[str, str], Tensor]],
    modules: Mapping[str, Mapping],
    title: str,
    path: Path,
    max_nodes: int = 40,
) -> None:
    """Layers left to right; each layer's top features by importance, grouped top-down into
    module blocks (``graph.layout``, the explorer's order); edge width by log weight, nodes
    coloured by module (grey: singletons), modules with a Fourier frequency labelled in the
    legend (below each panel, so that it hides no node)."""
    methods = list(edges)
    fig, axes = plt.subplots(1, len(methods), figsize=(6 * len(methods), 6), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        mod = modules[m]
        layers = mod["layers"]
        cluster: dict[tuple[str, int], int] = {
            (n["layer"], n["index"]): n["cluster"] for n in mod["nodes"]
        }
        sizes: dict[int, int] = {}
        for c in cluster.values():
            sizes[c] = sizes.get(c, 0) + 1
        big = module_order(mod)
        # Looked up with ``cluster.get``: None (a node not in the modules file) is grey.
        color: dict[int | None, tuple[float, float, float]] = {
            c: COLORS[i % len(COLORS)] for i, c in enumerate(big)
        }
        slot: dict[tuple[str, int], int] = {}
        for layer in layers:
            n = 1 + max(i for (lay, i) in cluster if lay == layer)
            shown = [i for i in layout_layer(mod, layer, n, True).order if 1 <= i < max_nodes]
            slot |= {(layer, i): k + 1 for k, i in enumerate(shown)}
        pairs = [(a, b) for (a, b) in edges[m] if a in layers and b in layers]
        all_e = [edges[m][p][1:max_nodes, 1:max_nodes].flatten() for p in pairs]
        top = max(float(e.max()) for e in all_e) if all_e else 1.0
        for a, b in pairs:
            e = edges[m][(a, b)].numpy()
            xa, xb = layers.index(a), layers.index(b)
            n_out, n_in = min(e.shape[0], max_nodes), min(e.shape[1], max_nodes)
            for i in range(1, n_out):
                for j in range(1, n_in):
                    w = np.log10(max(e[i, j] / top, 1e-12)) + 4  # four decades visible
                    if w > 0:
                        ax.plot(
                            [xa, xb],
                            [-slot[(a, j)], -slot[(b, i)]],
                            color="k",
                            alpha=0.15 + 0.2 * w / 4,
                            lw=0.3 + 1.2 * w / 4,
                            zorder=1,
                        )
        for x, layer in enumerate(layers):
            idx = [i for (lay, i) in slot if lay == layer]
            ys = np.array([slot[(layer, i)] for i in idx])
            cs = [color.get(cluster.get((layer, i)), (0.8, 0.8, 0.8)) for i in idx]
            ax.scatter(
                np.full(len(ys), x), -ys, c=cs, s=28, zorder=2, edgecolors="k", linewidths=0.3
            )
        freq = {c["id"]: c["frequency"] for c in mod.get("clusters", []) if "frequency" in c}
        for c in big:
            label = f"module {c}" + (f": freq {_freq(freq[c])}" if c in freq else "")
            ax.scatter([], [], color=color[c], label=f"{label} ({sizes[c]} nodes)")
        if big:
            ax.legend(
                fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, frameon=False
            )
        ax.set_xticks(range(len(layers)), layers)
        ax.set_yticks([])
        ax.set_title(
            f"{m}: Q = {mod['modularity']:.3f}, γ = {mod['resolution']:g}, {len(big)} modules"
        )
        ax.set_ylabel(f"top {max_nodes - 1} features by importance, in module blocks")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_node_ablation(results: Mapping[str, Mapping], path: Path, x_max: int = 30) -> None:
    """Score vs number of kept features, LIB vs PCA, one panel per layer (method §C.1.2)."""
    methods = list(results)
    layers = list(results[methods[0]]["layers"])
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for i, m in enumerate(methods):
            r = results[m]["layers"][layer]
            ax.plot(r["kept"], r["score"], ".-", color=COLORS[i], label=m)
        base = results[methods[0]]["base_score"]
        ax.axhline(base, color="k", lw=0.6, ls=":", label="unablated")
        ax.set(
            title=layer,
            xlabel="features kept (constant included)",
            ylabel=results[methods[0]]["metric"],
            xlim=(0, x_max),
        )
        ax.legend(fontsize=8)
    fig.suptitle("Node ablation: score vs number of remaining features")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_edge_ablation(results: Mapping[str, Mapping], path: Path) -> None:
    """Edges needed per layer pair (bisection) and edges holding 99% of the weight."""
    methods = list(results)
    pairs = list(results[methods[0]]["pairs"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / len(methods)
    x = np.arange(len(pairs))
    for i, m in enumerate(methods):
        r = results[m]["pairs"]
        axes[0].bar(
            x + i * width,
            [r[p]["n_edges_required"] for p in pairs],
            width,
            color=COLORS[i],
            label=m,
        )
        axes[1].bar(
            x + i * width,
            [r[p]["edges_for_mass"]["0.99"] for p in pairs],
            width,
            color=COLORS[i],
            label=m,
        )
    labels = [p.replace("__", "→") for p in pairs]
    delta = results[methods[0]]["delta"]
    axes[0].set(title=f"edges needed (score within {delta:g})", ylabel="non-constant edges")
    axes[1].set(title="edges holding 99% of the weight", ylabel="non-constant edges")
    for ax in axes:
        ax.set_xticks(x + width * (len(methods) - 1) / 2, labels, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_edge_distributions(
    edges: Mapping[str, Mapping[tuple[str, str], Tensor]], path: Path
) -> None:
    """Complementary CDF of the non-constant edge values per layer pair, floored at 1e-16 of
    the largest (below that the edges are numerically zero)."""
    methods = list(edges)
    pairs = list(edges[methods[0]])
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.4), squeeze=False)
    for ax, pair in zip(axes[0], pairs, strict=True):
        for i, m in enumerate(methods):
            vals = np.sort(edges[m][pair][:, 1:].flatten().numpy())[::-1]
            vals = vals[vals > 0]
            ax.loglog(np.arange(1, len(vals) + 1), vals / vals[0], color=COLORS[i], label=m)
        ax.set(title=f"{pair[0]} → {pair[1]}", xlabel="edge rank", ylabel="E / max E")
        ax.set_ylim(1e-16, 2.0)
        ax.legend(fontsize=8)
    fig.suptitle("Edge-weight distributions (non-constant inputs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
