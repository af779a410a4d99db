"""The tiny run's explorer page driven in headless Chromium (Debian's package, via Playwright).

Everything is asserted through the page's own state (Bokeh's document models named ``nodes``,
``edges``, ``card``, ``method``, ``mass``), with the network disabled. Where no browser is found
the tests skip, except in CI (``CI`` or ``IB_REQUIRE_BROWSER=1``), where they fail.
"""

import json
import re
import shutil
import warnings
from collections import Counter

import pytest
import xarray as xr
from explorer_pages import model_value, open_explorer

pytestmark = pytest.mark.slow

METHODS = ("lib", "pca")


@pytest.fixture(scope="module")
def page(browser, tiny_run):
    with open_explorer(browser, tiny_run.results() / "explorer" / "index.html") as pg:
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
    # Up to 8 top examples: tied values are shown once, with their count.
    assert re.search(r"top [1-8] examples", card) and "(a, b) = (" in card
    assert "activation</b> (held-out)" in card
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000


def _select(page, indices):
    """Select nodes as a tap does, the mouse hovering over none (hover focuses too)."""
    page.mouse.move(1, 1)  # off the graph
    page.evaluate("() => window.ib.onHover(null)")
    model_value(page, "nodes", f"(m.selected.indices = {list(indices)}, 0)")
    page.wait_for_timeout(100)


def _shown_edges(page) -> list[tuple[int, int]]:
    return [
        tuple(e) for e in model_value(page, "edges", "m.data.src.map((s, i) => [s, m.data.dst[i]])")
    ]


def test_focus_mode_draws_only_the_selected_nodes_edges(page):
    """A selected node keeps only its own edges; its neighbours take colours by share, the
    other nodes fade; the selection is in the address."""
    _select(page, [])
    i = model_value(page, "nodes", "m.data.index.findIndex(v => v > 0)")
    _select(page, [i])
    shown = _shown_edges(page)
    assert shown and all(i in e for e in shown)
    key = model_value(page, "nodes", f"m.data.key[{i}]")
    assert f"sel={key}" in page.evaluate("location.hash")
    # The overlay fills each neighbour with its share colour and rings the node itself.
    neighbours = {a if b == i else b for a, b in shown}
    marked = model_value(page, "focus", "m.data.x.length")
    assert marked == len(neighbours) + 1
    assert model_value(page, "focus", "m.data.fa.filter(a => a === 1).length") == len(neighbours)
    assert "Focus" in model_value(page, "edge_note", "m.text")
    _select(page, [])
    assert len(_shown_edges(page)) > len(shown)


def test_partner_rows_in_the_card_select_the_partner(page):
    _select(page, [])
    i = model_value(page, "nodes", "m.data.index.findIndex(v => v > 0)")
    _select(page, [i])
    link = page.locator("table.edges a").first
    target = link.get_attribute("href").split("=", 1)[1]
    link.click()
    page.wait_for_function(
        f"() => Bokeh.documents[0].get_model_by_name('nodes').data.key["
        f"Bokeh.documents[0].get_model_by_name('nodes').selected.indices[0]] === '{target}'"
    )
    assert f"sel={target}" in page.evaluate("location.hash")


def test_pins_live_in_the_url_and_draw_the_paths_between_them(browser, tiny_run):
    """A shared address with pins reopens in path mode: the drawn edges join nodes between
    the pinned ones (downstream of one pin and upstream of another)."""
    html = tiny_run.results() / "explorer" / "index.html"
    with open_explorer(browser, html) as first:
        keys = model_value(first, "nodes", "Array.from(m.data.key)")
        e = first.evaluate(
            "() => { const d = window.ib.store()[1].data; "
            "return Array.from(d.src).map((s, i) => [s, d.dst[i]]); }"
        )
        a, b = e[0]  # an edge the page holds: its two ends are joined by a path
        pins = f"{keys[a]},{keys[b]}"
    url = html.as_uri() + f"#m=lib&pins={pins}"
    with open_explorer(browser, html, url=url) as pg:
        assert sorted(model_value(pg, "nodes", "Array.from(m.selected.indices)")) == sorted([a, b])
        shown = _shown_edges(pg)
        assert (a, b) in shown
        assert "Path mode" in model_value(pg, "edge_note", "m.text")
        assert f"pins={pins}" in pg.evaluate("location.hash")


def test_search_by_key_module_and_label(page):
    _select(page, [])
    key = model_value(page, "nodes", "m.data.key[m.data.index.findIndex(v => v > 0)]")
    model_value(page, "search", f"(m.value = '{key}', 0)")
    page.wait_for_timeout(100)
    assert model_value(page, "nodes", "m.data.key[m.selected.indices[0]]") == key
    module = model_value(page, "nodes", "m.data.module.find(v => v >= 0)")
    model_value(page, "search", f"(m.value = 'module {module}', 0)")
    page.wait_for_timeout(100)
    n = model_value(page, "nodes", f"m.data.module.filter(v => v === {module}).length")
    assert f"<b>Search</b>: {n} match" in model_value(page, "edge_note", "m.text")
    model_value(page, "search", "(m.value = 'no such label anywhere', 0)")
    page.wait_for_timeout(100)
    assert "<b>Search</b>: 0 matches" in model_value(page, "edge_note", "m.text")
    model_value(page, "search", "(m.value = '', 0)")
    _select(page, [])


def test_mass_slider_keeps_the_share_of_every_layer_pair(page):
    """At 90% every layer pair draws edges holding at least 90% of its own weight."""
    _select(page, [])
    model_value(page, "mass", "(m.value = 90, 0)")
    note = model_value(page, "edge_note", "m.text")
    shares = [float(s) for s in re.findall(r"→[^:]+: \d+ \((\d+\.\d)%\)", note)]
    assert shares and all(s >= 90.0 for s in shares), note


def _rebuilt(tiny_run, folder, **kw):
    """The tiny run's page built again into ``folder`` with other page settings ``kw``; its
    inputs and the page's index.html."""
    from interaction_basis import storage
    from interaction_basis.interpret.explorer import MethodData, build_page

    results = tiny_run.results()
    data = {}
    for m in METHODS:
        data[m] = MethodData(
            storage.read_bases(results / m / "basis.zarr"),
            storage.read_edges(results / m / "edges.zarr"),
            storage.read_json(results / m / "modules.json"),
            storage.read_features(results / m / "features.zarr"),
        )
    page = build_page(
        "tiny", data, summary=None, evaluation=None, max_edges=5000, page_examples=4, **kw
    )
    storage.write_folder(folder, page.files())
    return data, folder / "index.html"


@pytest.fixture(scope="module")
def crowded_page(browser, tiny_run, tmp_path_factory):
    """The tiny run's page rebuilt with a two-slot window, so that its layers exceed it."""
    folder = tmp_path_factory.mktemp("crowded") / "explorer"
    data, html = _rebuilt(tiny_run, folder, shown_slots=2)
    with open_explorer(browser, html) as pg:
        yield pg, data


def test_module_view_is_the_default_and_expands_a_clicked_module(crowded_page):
    """A layer over the window opens in the module view: a supernode for every module of
    every layer, edges carrying the summed weights; a click lists the members' cards side by
    side and draws the members in the graph."""
    from interaction_basis.interpret.explorer import module_edges, module_groups

    page, data = crowded_page
    assert model_value(page, "view", "m.active") == 1
    assert "v=modules" in page.evaluate("location.hash")
    d = data["lib"]
    layers = list(d.modules["layers"])
    groups = module_groups(d, layers)
    keys = model_value(page, "nodes", "Array.from(m.data.key)")
    want = [
        f"{lay}:{'m' + str(c) if c >= 0 else 'singletons'}"
        for lay in layers
        for c, _ in groups[lay]
    ]
    assert keys == want
    # Every module of two or more nodes has a supernode (in each layer it has members).
    ranked = {n["cluster"] for n in d.modules["nodes"]} & {
        c for c, k in Counter(n["cluster"] for n in d.modules["nodes"]).items() if k > 1
    }
    assert ranked <= {model_value(page, "nodes", f"m.data.module[{k}]") for k in range(len(keys))}
    sums = module_edges(d, layers, groups)
    drawn = model_value(page, "edges", "Array.from(m.data.weight)")
    expected = sorted(float(w) for s in sums.values() for w in s.ravel() if w > 0)
    assert sorted(drawn) == pytest.approx(expected)
    # Click the biggest module's supernode in the first layer.
    i = model_value(page, "nodes", "m.data.module.findIndex(v => v >= 0)")
    members = len(groups[layers[0]][0][1])
    model_value(page, "nodes", f"(m.selected.indices = [{i}], 0)")
    page.wait_for_timeout(200)
    assert model_value(page, "nodes", "m.data.x.length") == len(keys) + members
    card = model_value(page, "card", "m.text")
    assert card.count("class='member'") == min(members, 12)
    assert f"{members} members" in card
    assert "expanded" in model_value(page, "edge_note", "m.text")
    assert f"open={keys[i]}" in page.evaluate("location.hash")
    # Back to the feature view: every feature again.
    page.get_by_role("button", name="features").click()
    page.wait_for_timeout(200)
    assert model_value(page, "nodes", "m.data.key.length") == sum(
        b.C.shape[1] for lay, b in d.bases.items() if lay in layers
    )


def test_mod_add_card_plots_render(page):
    """The selected feature's card draws its histogram, Fourier power bars and activation
    profiles as inline SVG with visible size, in the card's shadow root."""
    index = model_value(page, "nodes", "m.data.key[m.data.index.findIndex(v => v > 0)]")
    page.evaluate(f"() => {{ window.location.hash = 'm=lib&sel={index}'; }}")
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('card').text.includes('feature')"
    )
    card = model_value(page, "card", "m.text")
    assert "histogram (held-out" in card and "Fourier power per frequency" in card
    assert "(a + b) mod" in card and "examples across the quantiles" in card
    page.wait_for_timeout(300)
    boxes = page.evaluate(
        """() => {
          const out = [];
          const visit = (root) => {
            for (const el of root.querySelectorAll('*')) {
              if (el.shadowRoot) visit(el.shadowRoot);
              if (el.tagName === 'svg' && el.classList.contains('plot')) {
                const r = el.getBoundingClientRect();
                // Drawn marks are the svg's own children: an unclosed element would swallow the
                // next one, which is then not drawn.
                const all = el.querySelectorAll('rect,polyline').length;
                const own = el.querySelectorAll(':scope > rect, :scope > polyline').length;
                out.push([r.width, r.height, all === own ? own : -1]);
              }
            }
          };
          visit(document);
          return out;
        }"""
    )
    assert len(boxes) == 3 and all(w > 100 and h > 20 and n > 0 for w, h, n in boxes), boxes


def test_cards_are_inflated_on_demand_from_file(page):
    """From file://, a layer's cards are inflated only when one of its cards is first shown
    (the card says so meanwhile), then drawn; later cards of the layer come at once. (The tiny
    page's card files were loaded when it opened: it is small.)"""
    out = page.evaluate(
        """async () => {
          const ib = window.ib;
          const nd = ib.store()[0].data;
          const row = nd.index.findIndex((v) => v > 0);
          ib.cards.clear();
          const card = Bokeh.documents[0].get_model_by_name('card');
          ib.sel = row; ib.pins = []; ib.render();
          const first = card.text;
          await ib.layerCards(ib.method, nd.layer[row]);
          await new Promise((r) => setTimeout(r, 50));
          const key = ib.method + '|' + nd.layer[row];
          return [first, card.text, ib.cards.size, Array.isArray(ib.cards.get(key))];
        }"""
    )
    first, later, n_layers, ready = out
    assert "loading" in first and "feature" in later and "loading" not in later
    assert n_layers == 1 and ready
    page.evaluate("() => { window.location.hash = ''; window.ib.sel = null; window.ib.render(); }")


_SCRIPTS = "() => Array.from(document.querySelectorAll('script[src]'), (s) => s.src)"


def _show(page, key):
    """Select node ``key`` (layer:index) of LIB through the address, as a shared link does."""
    page.evaluate(f"() => {{ window.location.hash = 'm=lib&sel={key}'; }}")


def test_a_card_of_a_layer_not_loaded_yet_comes_from_its_card_file(browser, tiny_run, tmp_path):
    """A page over its preload size loads no card file when it opens; showing a card of a
    layer loads that layer's file (a script tag, from file://) and draws the card."""
    _, html = _rebuilt(tiny_run, tmp_path / "explorer", preload_chars=0)
    with open_explorer(browser, html) as pg:
        assert pg.evaluate(_SCRIPTS) == []
        assert pg.evaluate("() => window.ib.cards.size") == 0
        keys = model_value(pg, "nodes", "Array.from(m.data.key)")
        key = next(k for k in keys if k.endswith(":1") and not k.startswith(keys[0].split(":")[0]))
        layer = key.split(":")[0]
        _show(pg, key)
        pg.wait_for_function(
            "(l) => Bokeh.documents[0].get_model_by_name('card').text.includes("
            "'· ' + l + ' · feature 1')",
            arg=layer,
            timeout=10_000,
        )
        loaded = pg.evaluate(_SCRIPTS)
        assert len(loaded) == 1 and loaded[0].endswith(f"_{layer}.js"), loaded
        assert (html.parent / "cards" / loaded[0].rsplit("/", 1)[1]).is_file()


def test_a_page_without_its_card_files_says_which_folder_to_keep(browser, tiny_run, tmp_path):
    """The page copied without its folder (index.html alone): the card says that its cards
    were not found and names the folder to keep beside the page, instead of staying blank."""
    alone = tmp_path / "copied"
    alone.mkdir()
    shutil.copy(tiny_run.results() / "explorer" / "index.html", alone / "index.html")
    with open_explorer(browser, alone / "index.html") as pg:
        key = model_value(pg, "nodes", "m.data.key[m.data.index.findIndex(v => v > 0)]")
        _show(pg, key)
        pg.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('card').text.includes('cannot be shown')",
            timeout=10_000,
        )
        card = model_value(pg, "card", "m.text")
    assert "was not found beside this page" in card
    assert "in the folder cards/ next to it" in card and "Keep that folder beside the page" in card


def test_the_earlier_address_opens_the_page_with_the_same_view(browser, tiny_run):
    """explorer.html beside the folder forwards to explorer/index.html, keeping the view in the
    address: links to the single-file page of earlier versions keep working."""
    link = tiny_run.results() / "explorer.html"
    key = "ln2.0:1"
    with open_explorer(browser, link, url=link.as_uri() + f"#m=pca&sel={key}") as pg:
        assert pg.url.endswith(f"/explorer/index.html#m=pca&sel={key}"), pg.url
        assert model_value(pg, "method", "m.active") == 1
        pg.wait_for_function(
            "() => Bokeh.documents[0].get_model_by_name('card').text"
            ".includes('· ln2.0 · feature 1')"
        )
