"""The tiny run's explorer.html driven in headless Chromium (Debian's package, via Playwright).

Everything is asserted through the page's own state (Bokeh's document models named ``nodes``,
``edges``, ``card``, ``method``, ``mass``), with the network disabled. Where no browser is found
the tests skip, except in CI (``CI`` or ``IB_REQUIRE_BROWSER=1``), where they fail.
"""

import json
import warnings
from collections import Counter

import pytest
import xarray as xr
from explorer_pages import model_value, open_explorer

pytestmark = pytest.mark.slow

METHODS = ("lib", "pca")


@pytest.fixture(scope="module")
def page(browser, tiny_run):
    with open_explorer(browser, tiny_run.results() / "explorer.html") as pg:
        yield pg


def _layer_counts(page) -> Counter:
    return Counter(model_value(page, "nodes", "Array.from(m.data.layer)"))


def _expected_counts(tiny_run, method) -> Counter:
    results = tiny_run.results()
    modules = json.loads((results / method / "modules.json").read_text())
    with warnings.catch_warnings():
        # Snakemake's .snakemake_timestamp inside directory() outputs is not a Zarr node.
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
        basis = xr.open_datatree(results / method / "basis.zarr", engine="zarr", consolidated=False)
    return Counter({lay: basis[lay].sizes["feature"] for lay in modules["layers"]})


def test_graph_shows_every_kept_feature_per_layer(page, tiny_run):
    assert _layer_counts(page) == _expected_counts(tiny_run, "lib")
    assert model_value(page, "method", "m.active") == 0


def test_switching_to_pca_swaps_the_graph(page, tiny_run):
    lib = _layer_counts(page)
    page.get_by_role("button", name="PCA").click()
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('method').active === 1")
    pca = _layer_counts(page)
    assert pca == _expected_counts(tiny_run, "pca")
    assert pca != lib  # the tiny run keeps different feature counts for the two bases
    page.get_by_role("button", name="LIB").click()
    page.wait_for_function("() => Bokeh.documents[0].get_model_by_name('method').active === 0")
    assert _layer_counts(page) == lib


def test_mass_slider_filters_edges(page):
    def n_edges():
        return model_value(page, "edges", "m.data.x0.length")

    model_value(page, "mass", "(m.value = 99.5, 0)")
    many = n_edges()
    model_value(page, "mass", "(m.value = 50, 0)")
    few = n_edges()
    assert 0 < few < many
    model_value(page, "mass", "(m.value = 90, 0)")


def test_clicking_a_node_opens_its_card(page, tmp_path):
    # Click a real node on screen: the glyph's screen position from Bokeh's view of it.
    index = model_value(page, "nodes", "m.data.index.findIndex(v => v > 0)")
    point = page.evaluate(
        """(i) => {
        const doc = Bokeh.documents[0];
        const plot = doc.get_model_by_name('graph');
        const find = (v) => {
            if (v.model === plot) return v;
            for (const c of (v.child_views ?? [])) { const r = find(c); if (r) return r; }
            return null;
        };
        const view = [...Bokeh.index.roots].map(find).find(v => v);
        const nodes = doc.get_model_by_name('nodes');
        const x = view.frame.x_scale.compute(nodes.data.x[i]);
        const y = view.frame.y_scale.compute(nodes.data.y[i]);
        const box = view.canvas_view.el.getBoundingClientRect();
        return {x: box.left + x, y: box.top + y};
    }""",
        index,
    )
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('nodes').selected.indices.length > 0"
    )
    card = model_value(page, "card", "m.text")
    assert model_value(page, "nodes", "m.selected.indices[0]") == index
    layer = model_value(page, "nodes", "m.data.layer[m.selected.indices[0]]")
    assert f"· {layer} · feature" in card
    assert "outgoing edges" in card or "incoming edges" in card
    assert "top 8 examples" in card and "(a, b) = (" in card
    assert "activation</b> (held-out)" in card
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
