"""The HTML report of the tiny run: self-contained and holding every figure."""

import pytest

pytestmark = pytest.mark.slow

FIGURES = (
    "spectra.png",
    "graph.png",
    "node_ablation.png",
    "edge_ablation.png",
    "edge_distribution.png",
    "modules.png",
    "training.png",
    "explorer.html",
)


def test_report_contains_every_figure(tiny_run):
    report = tiny_run.workdir / "report.html"
    tiny_run.smk("--report", str(report))  # raises with the output tail on failure
    html = report.read_text(errors="replace")
    assert len(html) > 100_000  # figures are embedded, not linked
    for name in FIGURES:
        assert name in html, f"{name} missing from the report"
    for caption in (
        "Node ablation on held-out data",
        "Edge-weight distributions",
        "Importance spectra per node layer",
        "Training of the model analysed here",
        "The interactive explorer of experiment",
    ):
        assert caption in html


def test_evaluation_json_holds_the_plotted_numbers(tiny_run):
    import json

    data = json.loads((tiny_run.results() / "evaluation.json").read_text())
    for method in ("lib", "pca"):
        nodes = data["node_ablation"][method]
        assert set(nodes["layers"]) == {"ln1.0", "ln2.0", "unembed"}
        full = nodes["layers"]["ln2.0"]
        assert full["score"][-1] == pytest.approx(nodes["base_score"])  # all kept = unablated
        pairs = data["edge_ablation"][method]["pairs"]
        assert {p["in_layer"] for p in pairs.values()} == {"ln1.0", "ln2.0", "unembed"}
        assert "1" in data["modules"][method]["resolutions"]
