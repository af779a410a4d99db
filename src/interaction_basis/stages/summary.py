"""Stage 6: the LIB-vs-PCA summary of each experiment."""

from interaction_basis import storage
from interaction_basis.evaluate.ground_truth import render_ground_truth
from interaction_basis.report.figures import plot_interaction_graphs, plot_spectra
from interaction_basis.report.summary import compute_summary, render_markdown


def summarize_experiment(
    experiment: str,
    methods: list[str],
    metrics: str | None,
    basis: list[str],
    edges: list[str],
    modules: list[str],
    md: str,
    json: str,
    spectra: str,
    graph: str,
    ground_truth: str | None = None,
) -> None:
    """The LIB-vs-PCA comparison: summary.md, summary.json and figures; with
    ``ground_truth`` (ground_truth.json), the scores against the planted modules too."""
    bases = {m: storage.read_bases(p) for m, p in zip(methods, basis, strict=True)}
    weights = {m: storage.read_edges(p) for m, p in zip(methods, edges, strict=True)}
    partitions = {m: storage.read_json(p) for m, p in zip(methods, modules, strict=True)}
    summary = compute_summary(
        experiment,
        methods,
        storage.read_json(metrics) if metrics else {},
        bases,
        weights,
        partitions,
    )
    markdown = render_markdown(summary)
    if ground_truth:
        summary["ground_truth"] = storage.read_json(ground_truth)
        markdown += "\n".join(["", *render_ground_truth(summary["ground_truth"])])
    storage.write_json(json, summary)
    storage.write_text(md, markdown)
    with storage.atomic_figure_path(spectra) as path:
        plot_spectra(bases, path)
    with storage.atomic_figure_path(graph) as path:
        title = "Leiden modules, log edge norm with ε from the edge mass"
        plot_interaction_graphs(weights, partitions, title, path)
