"""The explorer page built from small synthetic inputs: its data, and its answers to bad input."""

import base64
import gzip
import html
import json
import re

import numpy as np
import pytest
import torch
import xarray as xr

from interaction_basis import storage
from interaction_basis.graph.layout import NO_MODULE
from interaction_basis.interpret.explorer import (
    EXTERNAL,
    MethodData,
    _asset,
    _window,
    build_page,
    check_features,
    distinct_examples,
    edge_mass_prefix,
    forwarding_page,
    head_roles_of,
    layer_arrays,
    module_colours,
    module_groups,
    unpack_cards,
)
from interaction_basis.interpret.features import compute_activation_evidence
from interaction_basis.lib.records import Basis

LAYERS = {"a": 4, "b": 3, "output": 2}


def _bases(counts=LAYERS):
    out = {}
    for layer, n in counts.items():
        c = torch.eye(5, dtype=torch.float64)[:, :n]
        out[layer] = Basis(c, c.T.clone(), torch.linspace(2.0, 0.5, n, dtype=torch.float64), 1)
    return out


def _features(tmp_path, bases, sha="abc", extra=None, constant=("a", "b")):
    """A features store; ``extra``: more variables per layer; ``constant``: the layers whose
    feature 0 is constant."""
    x = torch.randn(30, 2, 5, dtype=torch.float64)
    ev = compute_activation_evidence(
        lambda i: {layer: x[i] for layer in bases},
        torch.arange(30),
        bases,
        batch_size=8,
        top_k=5,
        n_quantile_rows=100,
        quantiles=[0.5],
    )
    for layer, b in bases.items():
        n = b.C.shape[1]
        ev[layer]["is_constant"] = (("feature",), (np.arange(n) == 0) & (layer in constant))
        ev[layer]["importance"] = (("feature",), b.importance.numpy())
        ev[layer] |= (extra or {}).get(layer, {})
    path = tmp_path / f"features-{sha}.zarr"
    storage.write_features(path, ev, {"basis_config_sha256": sha, "method": "lib"})
    return path


def _edges(bases):
    layers = list(bases)
    g = torch.Generator().manual_seed(0)
    return {
        (a, b): torch.rand(bases[b].C.shape[1], bases[a].C.shape[1], generator=g).double()
        for a, b in zip(layers, layers[1:])
    }


MODULES = {
    "layers": ["a", "b"],
    "modularity": 0.3,
    "resolution": 1.0,
    "n_non_singleton": 1,
    "nodes": [{"layer": "a", "index": i, "cluster": c} for i, c in enumerate([0, 1, 2, 1])]
    + [{"layer": "b", "index": i, "cluster": c} for i, c in enumerate([3, 1, 4])],
    "clusters": [{"id": 1, "frequency": {"frequency": 7}}],
}


def _doc(data, **kw) -> dict:
    """The page's Bokeh document (JSON)."""
    kw = {"max_edges": 5, **kw}
    text = build_page("x", data, summary=None, evaluation=None, page_examples=3, **kw).html
    doc = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', text, re.S)
    return json.loads(html.unescape(doc.group(1)))


def _sources(data, **kw) -> dict[str, dict]:
    """The columns of every named data source of the page, arrays decoded."""
    out = {}

    def value(v):
        if isinstance(v, dict) and v.get("type") == "ndarray":
            raw = v["array"]
            if isinstance(raw, dict) and raw.get("type") == "bytes":
                data = base64.b64decode(raw["data"])
                data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
                return np.frombuffer(data, dtype=v["dtype"]).tolist()
            return list(raw)
        return v

    def walk(obj):
        if isinstance(obj, dict):
            attrs = obj.get("attributes", {})
            if obj.get("name") == "ColumnDataSource" and "name" in attrs:
                out[attrs["name"]] = {k: value(v) for k, v in attrs["data"]["entries"]}
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(_doc(data, **kw))
    return out


def _cards(data, **kw) -> dict[tuple[str, str, int], str]:
    """Every card of the page, from its card files: ``(method, layer, index)`` -> HTML."""
    kw = {"max_edges": 5, **kw}
    page = build_page("x", data, summary=None, evaluation=None, page_examples=3, **kw)
    out = {}
    for method, refs in _card_refs(page.html).items():
        for layer, (path, _, _) in refs.items():
            for i, c in enumerate(unpack_cards(page.side_files[path])):
                out[(method, layer, i)] = c
    return out


def _card_refs(text: str) -> dict[str, dict[str, list]]:
    """Per method and layer, the page's reference to its card file: [path, key, size]."""
    doc = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', text, re.S)

    def plain(obj):  # Bokeh serialises a dict as {"type": "map", "entries": [[key, value]]}
        if isinstance(obj, dict):
            if obj.get("type") == "map":
                return {k: plain(v) for k, v in obj["entries"]}
            return {k: plain(v) for k, v in obj.items()}
        return [plain(v) for v in obj] if isinstance(obj, list) else obj

    def find(obj):
        if isinstance(obj, dict):
            if obj and all(isinstance(v, dict) and "cards" in v for v in obj.values()):
                return {m: v["cards"] for m, v in obj.items()}
            obj = list(obj.values())
        for v in obj if isinstance(obj, list) else []:
            if (got := find(v)) is not None:
                return got
        return None

    return find(plain(json.loads(html.unescape(doc.group(1))))) or {}


def _page(data, **kw):
    """The page's text, its embedded Bokeh document decoded (it escapes non-ASCII and tags)."""
    page = build_page("x", data, summary=None, evaluation=None, max_edges=5, page_examples=3, **kw)
    text = page.html
    assert "<script" in text and not EXTERNAL.search(text)  # Bokeh inlined, nothing fetched
    doc = re.search(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', text, re.S)
    return json.dumps(json.loads(html.unescape(doc.group(1))), ensure_ascii=False)


def test_page_is_self_contained_and_holds_every_node(tmp_path):
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))
    # The store opens as a plain DataTree with named dims.
    tree = xr.open_datatree(tmp_path / "features-abc.zarr", engine="zarr", consolidated=False)
    assert tree["a"]["top_value"].dims == ("rank", "feature")
    html = _page({"lib": MethodData(bases, _edges(bases), MODULES, feats)})
    assert "module 1 · a ×2, b ×1 (3 nodes)" in html  # its composition, not one name
    # 4 + 3 drawn features: the 3 × 2 non-constant edges between a and b are capped at 5.
    assert "the page holds 5 of 6 non-constant edges" in html
    assert "a→b: 5 of 6 (" in html
    assert "ablations not evaluated" in html


def test_features_from_another_basis_are_refused(tmp_path):
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases, sha="old"))
    with pytest.raises(ValueError, match="computed from another basis"):
        check_features(feats, bases, "new", "features.zarr")
    fewer = _bases({"a": 3, "b": 3, "output": 2})
    with pytest.raises(ValueError, match="layer 'a' has 4 features, its basis 3"):
        check_features(feats, fewer, "old", "features.zarr")


def test_missing_modules_and_empty_layers_are_said_on_the_page(tmp_path):
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))
    html = _page({"lib": MethodData(bases, _edges(bases), None, feats)})
    assert "No modules" in html
    empty = {**bases, "b": Basis(torch.zeros(5, 0), torch.zeros(0, 5), torch.zeros(0), 0)}
    html = _page({"lib": MethodData(empty, {}, MODULES, feats)})
    assert "Layer(s) b kept no features" in html


def test_edge_mass_prefix():
    w = np.array([1.0, 6.0, 3.0])
    assert [edge_mass_prefix(w, f) for f in (0.5, 0.6, 0.9, 0.95, 1.0)] == [1, 1, 2, 3, 3]
    assert edge_mass_prefix(np.zeros(3), 0.9) == 0


def test_toy_lm_features_name_the_heads_that_write_them(tmp_path):
    """heads.json (attribute_heads) marks the features a previous-token or induction head
    writes most of, in their labels and cards; the others get their writers only."""
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))

    def feature(i, writer, share):
        return {"feature": i, "top_writer": writer, "shares": {writer: share, "embed": 0.1}}

    heads = {
        "previous_token_heads": ["L0.H1"],
        "induction_heads": ["L1.H0"],
        "methods": {
            "lib": {
                "a": {"features": [feature(1, "L0.H1", 0.8), feature(2, "L0.mlp", 0.6)]},
                "b": {"features": [feature(1, "L1.H0", 0.7)]},
            }
        },
    }
    data = MethodData(bases, _edges(bases), MODULES, feats, head_roles_of(heads, "lib"))
    page = _page({"lib": data})
    cards = "".join(_cards({"lib": data}).values())
    assert "lib a #1 · module 1 (a ×2, b ×1) · previous-token head L0.H1" in page
    assert "lib b #1 · module 1 (a ×2, b ×1) · induction head L1.H0" in page
    assert "L0.H1 80% (previous-token head), embed 10%" in cards
    assert "L0.mlp 60%, embed 10%" in cards  # not a head with a role: no mark
    assert "lib a #2" in page and not re.search(r'lib a #2[^"]*head', page)


def test_example_windows_shade_each_token_by_a_class_the_card_styles():
    """A token's class is its sign and tenth of the window's largest |value|; the centre token
    is underlined, text is escaped, missing values are left out, and the card's stylesheet
    defines every class used."""
    dims = ("rank", "feature", "position")
    g = xr.Dataset(
        {
            "top_window_text": (dims, np.array([[["a", "<b>", "c", "d"]]], dtype=object)),
            "top_window_value": (dims, np.array([[[-4.0, 2.0, np.nan, 0.35]]])),
        }
    )
    out = _window(g, "top", 0, 0)
    assert out == (
        "<span class='window'>"
        "<span class=wn10 title=-4>a</span>"
        "<span class=wp5 title=2>&lt;b&gt;</span>"  # position 2 (NaN) is the centre
        "<span class=wp1 title=0.35>d</span></span>"
    )
    g["top_window_value"][0, 0, 2] = 1.0
    centred = _window(g, "top", 0, 0)
    assert "<span class=wp2c title=1>c</span>" in centred
    css = _asset("card.css")
    for cls in set(re.findall(r"class=(w[pn]\d+c?)", out + centred)):
        assert re.search(rf"\.{cls}[,{{]", css), cls
    assert re.search(r"\.wp2c[^{]*\{border-bottom", css)


def test_rebuilding_the_page_gives_the_same_bytes(tmp_path):
    """Identical inputs give a byte-identical page: Bokeh's element ids (random UUIDs) and
    model ids (a process-wide counter) are fixed per page, so a second build in the same
    process, after other Bokeh models were made, changes nothing."""
    from bokeh.plotting import figure

    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))
    data = {"lib": MethodData(bases, _edges(bases), MODULES, feats)}

    def build():
        page = build_page("x", data, summary=None, evaluation=None, max_edges=5, page_examples=3)
        return {name: text.encode() for name, text in page.files().items()}

    first = build()
    figure()  # other models in between move Bokeh's id counter
    assert build() == first


def _modadd_method(tmp_path, name, freqs, clusters):
    """A method whose features have dominant Fourier frequencies ``freqs`` per layer and whose
    modules are ``clusters`` per layer."""
    bases = _bases({"a": 4, "b": 3})
    extra = {lay: {"dominant_frequency": (("feature",), np.array(f))} for lay, f in freqs.items()}
    feats = storage.read_features(_features(tmp_path, bases, sha=name, extra=extra))
    modules = {
        **MODULES,
        "nodes": [
            {"layer": lay, "index": i, "cluster": c}
            for lay, cs in clusters.items()
            for i, c in enumerate(cs)
        ],
    }
    return MethodData(bases, _edges(bases), modules, feats)


def test_module_colours_follow_the_dominant_frequency_in_both_bases(tmp_path):
    """The module of frequency 38 is LIB's largest and PCA's second: it has one colour in both
    (colours by rank gave it two), and modules are labelled by their members' frequencies."""
    lib = _modadd_method(
        tmp_path, "lib", {"a": [0, 38, 5, 38], "b": [0, 38, 5]}, {"a": [0, 1, 2, 1], "b": [3, 1, 2]}
    )
    pca = _modadd_method(
        tmp_path, "pca", {"a": [0, 5, 5, 38], "b": [0, 5, 38]}, {"a": [0, 4, 4, 6], "b": [3, 4, 6]}
    )
    src = _sources({"lib": lib, "pca": pca})

    freqs_of = {
        "lib": {"a": [0, 38, 5, 38], "b": [0, 38, 5]},
        "pca": {"a": [0, 5, 5, 38], "b": [0, 5, 38]},
    }

    def colour(method, freq):
        nodes = src[f"nodes_{method}"]
        (found,) = {
            c
            for c, lay, i in zip(nodes["color"], nodes["layer"], nodes["index"], strict=True)
            if i > 0 and freqs_of[method][lay][i] == freq
        }
        return found

    assert colour("lib", 38) == colour("pca", 38) != colour("lib", 5) == colour("pca", 5)
    page = json.dumps(_doc({"lib": lib, "pca": pca}), ensure_ascii=False)
    assert "module 1 · freq 38 ×3 (3 nodes)" in page
    assert "module 4 · freq 5 ×3 (3 nodes)" in page


def test_module_colours_without_frequencies_follow_the_best_overlap(tmp_path):
    """Without Fourier labels a PCA module takes the colour of the LIB module whose member
    directions it overlaps most, whatever its rank."""
    lib = _modadd_method(tmp_path, "l", {}, {"a": [0, 1, 1, 2], "b": [3, 1, 2]})
    # PCA's largest module (with the two constants) has the directions of LIB's module 2, its
    # second those of LIB's module 1 (the bases here share their directions).
    pca = _modadd_method(tmp_path, "p", {}, {"a": [5, 6, 6, 5], "b": [5, 6, 5]})
    colours = module_colours({"lib": lib, "pca": pca})
    assert colours["pca"][6] == colours["lib"][1]
    assert colours["pca"][5] == colours["lib"][2]


def test_output_feature_0_counts_in_the_output_pair_headline(tmp_path):
    """Digits: output feature 0 is class '0', not a constant; only ``is_constant`` features
    are left out of the edge counts (the old headline dropped row 0 of every pair)."""
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))  # output: no constant
    edges = _edges(bases)
    edges[("b", "output")] = torch.tensor([[0.0, 10.0, 5.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    page = _page({"lib": MethodData(bases, edges, MODULES, feats)})
    # Weights 10, 5, 1, 1 (column 0 is b's constant): 90% needs 3 edges, 99% all 4.
    assert "b→output: 3 / 4" in page
    assert "modules.json (rule cluster_graph" in page  # which clustering Q is of


def test_promoted_and_suppressed_outputs_are_split_by_sign(tmp_path):
    """A feature that raises every output suppresses none: the lowest of its positive effects
    are not listed as suppressed."""
    bases = _bases()
    dims = ("direct_rank", "feature")
    extra = {
        "b": {
            "promoted_value": (dims, np.array([[2.0, 2.0, 1.0], [0.5, -1.0, -2.0]])),
            "promoted_output": (dims, np.array([[0, 0, 1], [1, 1, 0]])),
            "suppressed_value": (dims, np.array([[0.5, -3.0, -2.0], [2.0, 2.0, 1.0]])),
            "suppressed_output": (dims, np.array([[1, 1, 0], [0, 0, 1]])),
        }
    }
    feats = storage.read_features(_features(tmp_path, bases, extra=extra))
    cards = _cards({"lib": MethodData(bases, _edges(bases), MODULES, feats)})
    card = {(lay, i): c for (_, lay, i), c in cards.items()}
    assert "promotes 0 (2), 1 (0.5)</span>; <span class='down'>suppresses none" in card[("b", 0)]
    assert "promotes 0 (2)</span>; <span class='down'>suppresses 1 (-3)" in card[("b", 1)]


def test_mass_slider_share_is_per_layer_pair(tmp_path):
    """Each pair's edges carry the share of *that pair's* weight held by its stronger edges:
    one pair's large weights cannot hide another's (PCA's ln1.0→ln2.0 drew 0 edges at 90%)."""
    bases = _bases({"a": 4, "b": 3, "c": 3})
    feats = storage.read_features(_features(tmp_path, bases, constant=("a", "b", "c")))
    edges = _edges(bases)
    edges[("a", "b")] *= 1e6  # a pair far stronger than the other
    modules = {**MODULES, "layers": ["a", "b", "c"]}
    data = {"lib": MethodData(bases, edges, modules, feats)}
    e = _sources(data, max_edges=1000)["edges_lib"]
    for p, (a, b) in enumerate([("a", "b"), ("b", "c")]):
        w = edges[(a, b)].numpy()[1:, 1:].ravel()  # the constants left out
        mine = [k for k, q in enumerate(e["pair"]) if q == p]
        assert len(mine) == len(w)
        kept = [e["weight"][k] for k in mine if e["before"][k] < 0.9]
        assert len(kept) == edge_mass_prefix(w, 0.9) > 0
        assert sum(kept) >= 0.9 * w.sum()


def _named(doc, name: str) -> dict:
    """The attributes of the document's model named ``name``."""
    found = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("attributes", {}).get("name") == name:
                found.append(obj["attributes"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(doc)
    return found[0]


def test_module_view_sums_the_edges_between_modules(tmp_path):
    """One supernode per module per layer (and the layer's singletons), sized by members; an
    edge between two supernodes carries the sum of all edges between their members (constant
    features left out), not only the page's drawn ones."""
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))
    edges = _edges(bases)
    data = {"lib": MethodData(bases, edges, MODULES, feats)}
    groups = module_groups(data["lib"], ["a", "b"])
    # Module 1 (a1, a3, b1) is the only one of two or more nodes; feature 0 is constant.
    assert groups == {"a": [(1, [1, 3]), (NO_MODULE, [2])], "b": [(1, [1]), (NO_MODULE, [2])]}
    src = _sources(data, max_edges=1)  # the cap leaves one feature edge; the sums hold all
    n, e = src["mnodes_lib"], src["medges_lib"]
    assert n["key"] == ["a:m1", "a:singletons", "b:m1", "b:singletons"]
    assert n["count"] == [2, 1, 1, 1]
    assert n["size"][0] > n["size"][1]
    mat = edges[("a", "b")].numpy()
    got = {(n["key"][s], n["key"][t]): w for s, t, w in zip(e["src"], e["dst"], e["weight"])}
    assert got == pytest.approx(
        {
            ("a:m1", "b:m1"): mat[1, [1, 3]].sum(),
            ("a:m1", "b:singletons"): mat[2, [1, 3]].sum(),
            ("a:singletons", "b:m1"): mat[1, 2],
            ("a:singletons", "b:singletons"): mat[2, 2],
        }
    )
    # Members are the feature view's rows, so a supernode's cards are its features' cards.
    f = src["nodes_lib"]
    assert sorted(f["key"][int(r)] for r in n["members"][0].split(",")) == ["a:1", "a:3"]


def test_module_view_is_the_default_when_a_layer_exceeds_the_window(tmp_path):
    """A layer with more features than the window opens in the module view, and the feature
    view's note names every module that lies wholly below the window."""
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))
    data = {"lib": MethodData(bases, _edges(bases), MODULES, feats)}
    assert _named(_doc(data), "view")["active"] == 0  # 4 features fit 45 slots
    doc = _doc(data, shown_slots=1)
    assert _named(doc, "view")["active"] == 1
    # Slot 0 is the constant: module 1 lies below a one-slot window in both layers.
    assert "module 1 in a (2 features from slot 1)" in html.unescape(json.dumps(doc))


def test_distinct_examples_show_ties_once_with_their_count():
    vals = np.array([5.0, 5.0, 5.0 + 1e-12, 5.0, 4.0, 4.0, 3.0, np.nan, 2.0])
    assert distinct_examples(vals, 2) == [(0, 4), (4, 2)]  # ties after the n-th still counted
    seen = [4.0]
    assert distinct_examples(vals, 5, seen) == [(0, 4), (6, 1), (8, 1)]  # 4 shown elsewhere
    assert seen == [4.0, 5.0, 3.0, 2.0]


def test_cards_plot_the_histogram_fourier_power_and_sum_profile_and_drop_tied_examples(
    tmp_path,
):
    """A mod-add-like card: its activation histogram, Fourier power bars (dominant frequency
    in red) and activation against (a + b) mod p are inline SVG; eight tied top examples are
    one line with their count; the quantile examples are shown; Λ is given as a share of its
    layer and edge weights as a share of the feature's weight."""
    bases = _bases({"a": 4, "b": 3})
    p, n = 7, 4
    power = np.zeros((n, p // 2 + 1))
    power[:, 2] = 0.9
    ties = np.array([[9.0] * n] * 5)
    extra = {
        "a": {
            "frequency_power": (("feature", "frequency"), power),
            "mixed_power": (("feature",), np.full(n, 0.1)),
            "dominant_frequency": (("feature",), np.full(n, 2)),
            "sum_profile": (("feature", "residue"), np.cos(np.arange(p))[None].repeat(n, 0)),
            "top_value": (("rank", "feature"), ties),
        }
    }
    feats = storage.read_features(_features(tmp_path, bases, extra=extra))
    cards = _cards({"lib": MethodData(bases, _edges(bases), MODULES, feats)})
    card = cards[("lib", "a", 1)]
    assert card.count("<svg class='plot'") == 3
    assert "histogram (held-out" in card and "<rect" in card
    assert "fill='#c00'" in card  # the dominant frequency's bar
    assert "(a + b) mod 7</span>" in card and "<polyline" in card
    assert re.search(r"<b>top 1 examples</b>.*?×5 tied", card)
    assert "examples across the quantiles" in card
    imp = bases["a"].importance.numpy()
    assert f"({100 * imp[1] / imp.sum():.2g}% of the layer's Λ)" in card
    assert re.search(r"<td style='text-align:right'>\d+\.\d%</td>", card)


def test_cards_are_in_card_files_beside_the_page(tmp_path):
    """The page holds no card: each layer's cards are one card file in cards/, a script that
    registers its block under the key the page names for it (with the block's hash); the
    forwarding page opens the folder's page with the same view."""
    bases = _bases()
    feats = storage.read_features(_features(tmp_path, bases))
    page = build_page(
        "x",
        {"lib": MethodData(bases, _edges(bases), MODULES, feats)},
        summary=None,
        evaluation=None,
        max_edges=5,
        page_examples=3,
    )
    refs = _card_refs(page.html)["lib"]
    assert set(refs) == {"a", "b"}  # the graph's layers ("output" is not drawn)
    assert set(page.side_files) == {path for path, _, _ in refs.values()}
    assert set(page.files()) == {"index.html", *page.side_files}
    for layer, (path, key, size) in refs.items():
        text = page.side_files[path]
        assert path.startswith("cards/lib_") and path.endswith(f"_{layer}.js")
        assert key.startswith(f"lib|{layer}|") and json.dumps(key) in text
        assert text.startswith("(window.ibCardBlocks = window.ibCardBlocks || {})[")
        cards = unpack_cards(text)
        assert len(cards) == bases[layer].C.shape[1] and size < len(text)
        assert f"· {layer} · feature 1" in cards[1]
    assert "activation</b> (held-out)" not in page.html
    link = forwarding_page("x", "explorer")
    assert 'window.location.replace("explorer/index.html" + window.location.hash)' in link


def test_top_k_stable_is_a_stable_argsort_of_every_row():
    """The cards' strongest partners, taken for a whole layer at once, are exactly
    ``np.argsort(-row, kind="stable")[:k]`` per row: ties at the cut in index order."""
    from interaction_basis.interpret.explorer import top_k_stable

    rng = np.random.default_rng(0)
    m = rng.integers(0, 6, (50, 40)).astype(np.float64)  # many ties
    m[3] = 1.0  # a row of one value
    m[7, 5] = np.nan
    for k in (0, 1, 10, 39, 40, 60):
        want = np.argsort(-m, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k_stable(m, k), want)
    nan_free = rng.random((30, 200))
    np.testing.assert_array_equal(
        top_k_stable(nan_free, 10), np.argsort(-nan_free, axis=1, kind="stable")[:, :10]
    )


def test_features_opened_for_the_explorer_are_read_per_use_and_not_kept(tmp_path):
    """storage.open_features reads an array when it is used and keeps nothing in the tree: a
    GPT-2 store (about 4 GB per method) is then held one layer at a time, not whole."""
    bases = _bases()
    path = _features(tmp_path, bases)
    tree = storage.open_features(path)
    arrays = layer_arrays(tree["a"].ds)
    np.testing.assert_array_equal(
        arrays["top_value"], storage.read_features(path)["a"].ds["top_value"].values
    )
    assert not any(v._in_memory for v in tree["a"].ds.variables.values() if v.ndim > 1)
