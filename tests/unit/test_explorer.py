"""The explorer page built from small synthetic inputs: its data, and its answers to bad input."""

import html
import json
import re

import numpy as np
import pytest
import torch
import xarray as xr

from interaction_basis import storage
from interaction_basis.interpret.explorer import (
    EXTERNAL,
    MethodData,
    _asset,
    _window,
    build_page,
    check_features,
    edge_mass_prefix,
    head_roles_of,
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


def _features(tmp_path, bases, sha="abc"):
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
        ev[layer]["is_constant"] = (("feature",), np.arange(n) == 0)
        ev[layer]["importance"] = (("feature",), b.importance.numpy())
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


def _page(data, **kw):
    """The page's text, its embedded Bokeh document decoded (it escapes non-ASCII and tags)."""
    text = build_page("x", data, summary=None, evaluation=None, max_edges=5, page_examples=3, **kw)
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
    assert "module 1 · freq 7 (3 nodes)" in html
    # 4 + 3 drawn features: the 12 + 6 non-constant edges among a, b are capped at 5.
    assert "only the 5 strongest of 6 non-constant edges" in html
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
    assert "lib a #1 · module 1 (freq 7) · previous-token head L0.H1" in page
    assert "lib b #1 · module 1 (freq 7) · induction head L1.H0" in page
    assert "L0.H1 80% (previous-token head), embed 10%" in page
    assert "L0.mlp 60%, embed 10%" in page  # not a head with a role: no mark
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
        return build_page(
            "x", data, summary=None, evaluation=None, max_edges=5, page_examples=3
        ).encode()

    first = build()
    figure()  # other models in between move Bokeh's id counter
    assert build() == first
