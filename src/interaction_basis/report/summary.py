"""The LIB-vs-PCA comparison of one experiment: numbers for summary.json/summary.md."""

from collections.abc import Mapping, Sequence

from torch import Tensor

from interaction_basis.graph.edge_mass import MASS_FRACTIONS, compute_edge_mass_counts
from interaction_basis.lib.records import Basis

COUNT_THRESHOLDS = (1e-8, 1e-4)


def count_important(basis: Basis, threshold: float) -> int:
    """Non-masked features with importance above ``threshold`` times the largest of them."""
    rest = basis.importance[basis.n_masked :]
    if rest.numel() == 0:
        return 0
    return int((rest > threshold * rest.max()).sum())


def compute_summary(
    experiment: str,
    methods: Sequence[str],
    model_metrics: Mapping,
    bases: Mapping[str, Mapping[str, Basis]],
    edges: Mapping[str, Mapping[tuple[str, str], Tensor]],
    modules: Mapping[str, Mapping],
) -> dict:
    """Features kept, edge-mass concentration, modularity and module labels per method."""
    out: dict = {
        "experiment": experiment,
        "test_accuracy": model_metrics.get("test_accuracy"),
        "train_accuracy": model_metrics.get("train_accuracy"),
        "model_source": model_metrics.get("source"),
        "methods": {},
    }
    for method in methods:
        m_bases, m_edges, m_mod = bases[method], edges[method], modules[method]
        layers = list(m_bases)
        out["methods"][method] = {
            "features_kept": {layer: int(b.C.shape[1]) for layer, b in m_bases.items()},
            "original_dims": {layer: int(b.C.shape[0]) for layer, b in m_bases.items()},
            "important_features": {
                f"{t:g}": {layer: count_important(m_bases[layer], t) for layer in layers[:-1]}
                for t in COUNT_THRESHOLDS
            },
            "edges_for_mass": {
                f"{a}->{b}": {
                    f"{f:g}": n for f, n in compute_edge_mass_counts(e, MASS_FRACTIONS).items()
                }
                for (a, b), e in m_edges.items()
            },
            "edge_total": {f"{a}->{b}": float(e.sum()) for (a, b), e in m_edges.items()},
            "modularity": m_mod["modularity"],
            "resolution": m_mod["resolution"],
            "n_clusters": m_mod["n_clusters"],
            "n_non_singleton": m_mod["n_non_singleton"],
            "clusters": [
                {
                    "size": int(sum(len(v) for v in c["features"].values())),
                    "layer_spans": c["layer_spans"],
                    **({"frequency": c["frequency"]["frequency"]} if "frequency" in c else {}),
                }
                for c in m_mod["clusters"]
                if sum(len(v) for v in c["features"].values()) > 1
            ],
        }
    return out


def render_markdown(summary: Mapping) -> str:
    """A short human-readable comparison."""
    methods = list(summary["methods"])
    lines = [f"# {summary['experiment']}: LIB vs PCA", ""]
    acc = summary.get("test_accuracy")
    if acc is not None:
        lines += [
            f"Model: test accuracy {acc:.4%} (train {summary['train_accuracy']:.4%}), "
            f"source: {summary['model_source']}.",
            "",
        ]
    first = summary["methods"][methods[0]]
    layers = list(first["features_kept"])
    lines += [
        "## Features kept per layer (of the original dimension)",
        "",
        "| layer | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for layer in layers:
        cells = [
            f"{summary['methods'][m]['features_kept'][layer]} / "
            f"{summary['methods'][m]['original_dims'][layer]}"
            for m in methods
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Features with importance above 1e-4 of the largest (non-constant): "
        + "; ".join(
            f"{m}: {summary['methods'][m]['important_features']['0.0001']}" for m in methods
        ),
        "",
    ]
    lines += [
        "## Edges holding 90% / 99% of the non-constant edge weight",
        "",
        "| layer pair | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for pair in first["edges_for_mass"]:
        cells = [
            " / ".join(str(v) for v in summary["methods"][m]["edges_for_mass"][pair].values())
            for m in methods
        ]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    labelled = any("frequency" in c for m in methods for c in summary["methods"][m]["clusters"])
    lines += [
        "",
        "## Modules (Leiden)",
        "",
        "| method | γ | Q (γ=1) | modules (size > 1) | "
        "sizes |" + (" Fourier frequencies |" if labelled else ""),
        "|---|---|---|---|---|" + ("---|" if labelled else ""),
    ]
    for m in methods:
        s = summary["methods"][m]
        sizes = ", ".join(str(c["size"]) for c in s["clusters"])
        freqs = ", ".join(str(c.get("frequency", "-")) for c in s["clusters"])
        lines.append(
            f"| {m} | {s['resolution']:g} | {s['modularity']:.4f} | "
            f"{s['n_non_singleton']} | {sizes} |" + (f" {freqs} |" if labelled else "")
        )
    lines += [
        "",
        "Figures: `spectra.png` (importance spectra per layer), `graph.png` "
        "(interaction graphs, modules coloured).",
        "",
    ]
    return "\n".join(lines)
