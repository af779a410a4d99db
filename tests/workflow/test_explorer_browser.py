"""The tiny run's explorer.html driven in headless Chromium (Debian's package, via Playwright).

Everything is asserted through the page's own state (Bokeh's document models named ``nodes``,
``edges``, ``card``, ``method``, ``mass``), with the network disabled. Where no browser is found
the tests skip, except in CI (``CI`` or ``IB_REQUIRE_BROWSER=1``), where they fail.
"""

import json
import os
import shutil
import warnings
from collections import Counter

import pytest
import xarray as xr

pytestmark = pytest.mark.slow

METHODS = ("lib", "pca")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _find_chromium() -> str | None:
    explicit = os.environ.get("IB_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _missing(reason: str):
    if os.environ.get("CI") or os.environ.get("IB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; CI needs it (.ci/run installs chromium with apt).")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -r requirements.txt)")
    path = _find_chromium()
    if path is None:
        _missing("no Chromium found (apt-get install chromium, or set IB_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, tiny_run):
    html = tiny_run.results() / "explorer.html"
    assert html.is_file(), "the default target did not make explorer.html"
    context = browser.new_context(offline=True, viewport={"width": 1500, "height": 1000})
    requests = []
    context.on("request", lambda r: requests.append(r.url))
    errors = []
    pg = context.new_page()
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(html.as_uri())
    pg.wait_for_function(
        "() => window.Bokeh && Bokeh.documents.length"
        " && Bokeh.documents[0].get_model_by_name('nodes')"
        " && Bokeh.documents[0].get_model_by_name('nodes').data.layer.length > 0",
        timeout=60_000,
    )
    pg.wait_for_timeout(300)
    yield pg
    assert not errors, f"JavaScript errors: {errors}"
    assert all(u.startswith(("file:", "data:", "blob:")) for u in requests), requests
    context.close()


def _model(page, name: str, expr: str):
    return page.evaluate(
        f"() => {{ const m = Bokeh.documents[0].get_model_by_name('{name}'); return {expr}; }}"
    )


def _layer_counts(page) -> Counter:
    return Counter(_model(page, "nodes", "Array.from(m.data.layer)"))


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
    assert _model(page, "method", "m.active") == 0


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
        return _model(page, "edges", "m.data.x0.length")

    _model(page, "mass", "(m.value = 99.5, 0)")
    many = n_edges()
    _model(page, "mass", "(m.value = 50, 0)")
    few = n_edges()
    assert 0 < few < many
    _model(page, "mass", "(m.value = 90, 0)")


def test_clicking_a_node_opens_its_card(page, tmp_path):
    # Click a real node on screen: the glyph's screen position from Bokeh's view of it.
    index = _model(page, "nodes", "m.data.index.findIndex(v => v > 0)")
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
    card = _model(page, "card", "m.text")
    assert _model(page, "nodes", "m.selected.indices[0]") == index
    layer = _model(page, "nodes", "m.data.layer[m.selected.indices[0]]")
    assert f"· {layer} · feature" in card
    assert "outgoing edges" in card or "incoming edges" in card
    assert "top 8 examples" in card and "(a, b) = (" in card
    assert "activation</b> (held-out)" in card
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
