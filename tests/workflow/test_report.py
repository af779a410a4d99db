"""The report of the tiny run (zipped: it carries the explorer's folder): every figure, and the
explorer, which opens from the unzipped report with its cards."""

from zipfile import ZipFile

import pytest
from explorer_pages import model_value, open_explorer

pytestmark = pytest.mark.slow

FIGURES = (
    "spectra.png",
    "graph.png",
    "node_ablation.png",
    "edge_ablation.png",
    "edge_distribution.png",
    "modules.png",
    "training.png",
)


def test_report_contains_every_figure_and_the_explorer(tiny_run, browser, tmp_path):
    report = tmp_path / "report.zip"
    tiny_run.smk("--report", str(report))  # raises with the output tail on failure
    with ZipFile(report) as z:
        names = z.namelist()
        z.extractall(tmp_path)
    html = (tmp_path / "report" / "report.html").read_text(errors="replace")
    for name in FIGURES:
        assert any(n.endswith("/" + name) for n in names), f"{name} missing from the report"
    for caption in (
        "Node ablation on held-out data",
        "Edge-weight distributions",
        "Importance spectra per node layer",
        "Training of the model analysed here",
        "The interactive explorer of experiment",
    ):
        assert caption in html
    # The explorer's page with its card files beside it, as in results/tiny/explorer/.
    (page,) = [n for n in names if n.endswith("/index.html")]
    folder = page.rsplit("/", 1)[0]
    built = sorted(p.name for p in (tiny_run.results() / "explorer" / "cards").iterdir())
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith(folder + "/cards/")) == built
    assert "explorer.html" in html  # the report's name for it
    with open_explorer(browser, tmp_path / page) as pg:
        key = model_value(pg, "nodes", "m.data.key[m.data.index.findIndex(v => v > 0)]")
        pg.evaluate(f"() => {{ window.location.hash = 'm=lib&sel={key}'; }}")
        pg.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('card').text.includes('feature')"
            " && Bokeh.documents[0].get_model_by_name('card').text.includes('edges')"
        )


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
