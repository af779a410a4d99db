"""The explorer: one HTML page (Bokeh, its JavaScript inlined) and its card files per experiment.

The page draws the layered interaction graph of every basis method (a button switches), nodes
grouped by module (``graph.layout``) and coloured alike in every basis (``module_colours``),
sized by importance, edges by log weight, and a card per feature: its strongest incoming and
outgoing edges, activation summary, top examples and, where defined, its direct effect on the
outputs, its Fourier term and small SVG plots. Every card is rendered here as HTML, each
layer's cards compressed into one block (``pack_cards``) in a small script file beside the page
(``card_script``, ``cards/`` in the page's folder) that the page loads with a ``<script>`` tag
and inflates when one of them is first shown: a script tag loads from ``file://`` offline,
where ``fetch`` may not, and the page loads only the graph when it opens (``ExplorerPage``).
``explorer_assets/explorer.js`` swaps data sources, filters edges
(slider, focus, path and search modes) and keeps the view in the URL hash. Model names in the
page (``nodes``, ``edges``, ``card``, ``method``, ``mass``, ``search``, ``edge_note``) are its
interface for tests. The same inputs give the same bytes (``_stable_ids``)."""

import base64
import functools
import hashlib
import html
import json
import math
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from typing import NamedTuple

import numpy as np
import xarray as xr
from torch import Tensor

from interaction_basis.graph.layout import NO_MODULE, LayerLayout, layout_layers, module_order
from interaction_basis.lib.records import Basis

PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #bcbd22 #17becf #aec7e8 #ffbb78 "
    "#98df8a #ff9896 #c5b0d5 #c49c94 #f7b6d2 #dbdb8d #9edae5"
).split()
GREY = "#c8c8c8"
# A <script> or <link> element that loads from the network (Bokeh's inlined code mentions URLs
# in strings, for optional extras such as MathJax, which the page never triggers).
EXTERNAL = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)
N_CARD_EDGES = 10
SHOWN_SLOTS = 45  # node slots per layer in view when the page opens
PAGE_INDEX = "index.html"  # the page, in its folder
CARD_FOLDER = "cards"  # its card files, in the same folder
CARD_REGISTRY = "ibCardBlocks"  # the global object a card file registers its block in
# Pages whose card blocks together are at most this many characters load them all when they
# open (cards then show at once); a larger page loads a layer's file when it is first needed.
PRELOAD_CHARS = 1_000_000


class ExplorerPage(NamedTuple):
    """The page's HTML and its card files (path in the page's folder -> text)."""

    html: str
    side_files: dict[str, str]

    def files(self) -> dict[str, str]:
        """Every file of the page's folder, by its path there."""
        return {PAGE_INDEX: self.html, **self.side_files}


class MethodData(NamedTuple):
    """Everything the page shows for one basis method (``modules`` None: not clustered)."""

    bases: Mapping[str, Basis]
    edges: Mapping[tuple[str, str], Tensor]
    modules: Mapping | None
    features: xr.DataTree
    heads: Mapping | None = None  # heads.json's head roles and this method's feature writers


def head_roles_of(heads: Mapping, method: str) -> Mapping:
    """What the page needs of heads.json (attribute_heads) for one method."""
    return {
        "features": {
            (layer, f["feature"]): f
            for layer, entry in heads["methods"].get(method, {}).items()
            for f in entry["features"]
        },
        "roles": {h: "previous-token head" for h in heads["previous_token_heads"]}
        | {h: "induction head" for h in heads["induction_heads"]},
    }


def _writers(heads: Mapping | None, layer: str, i: int) -> tuple[str, str]:
    """The label suffix naming the role of the feature's main writer, and the card's line of
    writers, for a feature of a toy LM (empty where heads.json has no entry)."""
    f = heads["features"].get((layer, i)) if heads else None
    if heads is None or f is None:
        return "", ""
    roles = heads["roles"]
    role = roles.get(f["top_writer"])
    shares = ", ".join(
        f"{html.escape(name)} {100 * share:.0f}%" + (f" ({roles[name]})" if name in roles else "")
        for name, share in f["shares"].items()
    )
    card = f"<p><b>written by</b> (share of its variance): {shares}</p>"
    return (f" · {role} {f['top_writer']}" if role else ""), card


def check_features(features: xr.DataTree, bases: Mapping[str, Basis], basis_sha: str, path: str):
    """Refuse a features store that does not describe these bases."""
    made_from = features.attrs.get("basis_config_sha256")
    if made_from != basis_sha:
        raise ValueError(
            f"{path} was computed from another basis (config hash {made_from}, the basis has "
            f"{basis_sha}); rerun interpret_features (delete the store or run snakemake "
            "with --rerun-triggers mtime input)."
        )
    for layer, b in bases.items():
        n = features[layer].sizes.get("feature", 0) if layer in features.children else None
        if n != b.C.shape[1]:
            raise ValueError(
                f"{path}: layer {layer!r} has {n} features, its basis {b.C.shape[1]}; "
                "rerun interpret_features."
            )


def layer_arrays(g: xr.Dataset | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """A layer's evidence (its features.zarr group) as numpy arrays by name, coordinates
    included, each read once, when first used: the cards index these (one xarray lookup costs
    more than all of a card's numpy work, and a GPT-2 page has 10⁵ cards), and a store opened
    lazily (``storage.open_features``) is read one layer at a time. A mapping of arrays is
    returned as it is."""
    if not isinstance(g, xr.Dataset):  # a DataTree node's ``.ds`` is one too
        return g
    return _LayerArrays(g)


class _LayerArrays(Mapping):
    """:func:`layer_arrays` of a dataset: its variables' values, read on first use."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds
        self._read: dict[str, np.ndarray] = {}
        self._names = [str(name) for name in ds.variables]
        self._known = set(self._names)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._read:
            self._read[name] = np.asarray(self._ds.variables[name].values)  # KeyError if absent
        return self._read[name]

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


CARD_SEPARATOR = "\x1e"  # ASCII record separator: never in escaped HTML


def pack_cards(cards: list[str]) -> str:
    """A layer's cards as one base64 zlib blob (the page inflates it with the browser's
    DecompressionStream, offline): card HTML is repetitive, so this is a tenth of the text,
    and no card becomes a string in the page's memory before its layer is opened."""
    joined = CARD_SEPARATOR.join(cards).encode()
    return base64.b64encode(zlib.compress(joined, 9)).decode("ascii")


def card_script(key: str, blob: str) -> str:
    """A card file: a script that registers one layer's block (``pack_cards``) under ``key``
    (the page's name for that block, with the block's hash: a card file of another build of
    the page is told apart from a missing one)."""
    reg = f"window.{CARD_REGISTRY}"
    return f"({reg} = {reg} || {{}})[{json.dumps(key)}] = {json.dumps(blob)};\n"


_CARD_SCRIPT = re.compile(r'.*\] = "([A-Za-z0-9+/=]*)";\s*', re.S)


def unpack_cards(packed: str) -> list[str]:
    """The cards of a block of :func:`pack_cards`, or of a card file (:func:`card_script`)
    (tests, tools)."""
    found = _CARD_SCRIPT.fullmatch(packed)
    blob = found.group(1) if found else packed
    return zlib.decompress(base64.b64decode(blob)).decode().split(CARD_SEPARATOR)


def card_files(method: str, packed: Mapping[str, str]) -> tuple[dict[str, list], dict[str, str]]:
    """The card files of one method's layers (``packed``: layer -> block) and what the page
    needs to load each: per layer its file's path (relative to the page), its key and its
    size in characters."""
    refs, files = {}, {}
    for k, (layer, blob) in enumerate(packed.items()):
        # Layer names may hold any character: the index keeps file names unique.
        name = f"{CARD_FOLDER}/{method}_{k}_{re.sub(r'[^A-Za-z0-9._-]', '_', layer)}.js"
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        key = f"{method}|{layer}|{digest}"
        refs[layer] = [name, key, len(blob)]
        files[name] = card_script(key, blob)
    return refs, files


def forwarding_page(experiment: str, folder: str) -> str:
    """A small page that opens ``folder``/index.html with the same view (the address's hash):
    links to the explorer's earlier single-file address keep working."""
    target = json.dumps(f"{folder}/{PAGE_INDEX}")
    shown = html.escape(f"{folder}/{PAGE_INDEX}")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>explorer: {html.escape(experiment)}</title>"
        f"<script>window.location.replace({target} + window.location.hash);</script></head>"
        f"<body><p>The explorer of {html.escape(experiment)} is the page <a href='{shown}'>"
        f"{shown}</a>, with its card files in <code>{html.escape(folder)}/{CARD_FOLDER}/</code>: "
        "keep the whole folder together.</p></body></html>\n"
    )


def edge_mass_prefix(weights: np.ndarray, fraction: float) -> int:
    """How many of the strongest edges together hold ``fraction`` of the total weight."""
    w = np.sort(weights)[::-1]
    if not w.size or w.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(w) / w.sum(), fraction - 1e-12) + 1)


def _asset(name: str) -> str:
    """A JavaScript or CSS file of the page (``explorer_assets/``, package data)."""
    return (resources.files(__package__) / "explorer_assets" / name).read_text(encoding="utf-8")


@contextmanager
def _stable_ids(experiment: str) -> Iterator[None]:
    """Bokeh's ids made a function of the page alone, so that the same inputs give the same
    bytes (issue 23.7). Bokeh numbers models from a process-wide counter (``p1000``, ...) and
    gives the document and its root elements random UUIDs; Bokeh 3 has no setting for either.
    Within this block the counter restarts at Bokeh's own start value (the page's models are
    all made here, in a new Document, so ids stay unique within the page) and the UUIDs come
    from a generator seeded by the experiment's name. Both are restored on leaving."""
    import random

    from bokeh.util import serialization

    rng = random.Random(f"explorer:{experiment}")

    class _SeededUUID:
        @staticmethod
        def uuid4() -> uuid.UUID:
            return uuid.UUID(int=rng.getrandbits(128), version=4)

    counter, module = serialization._simple_id, serialization.uuid
    serialization._simple_id = 999
    serialization.uuid = _SeededUUID  # type: ignore[assignment]
    try:
        yield
    finally:
        serialization._simple_id = max(counter, serialization._simple_id)
        serialization.uuid = module


def build_page(
    experiment: str,
    data: Mapping[str, MethodData],
    *,
    summary: Mapping | None,
    evaluation: Mapping | None,
    max_edges: int,
    page_examples: int,
    thumbnails: Mapping[int, str] | None = None,
    shown_slots: int = SHOWN_SLOTS,
    preload_chars: int = PRELOAD_CHARS,
) -> ExplorerPage:
    """The explorer's page and card files, the same bytes for the same inputs.
    ``shown_slots``: the node slots per layer in view when the page opens; a layer with more
    features opens in the module view. ``preload_chars``: a page whose card blocks are at
    most this long loads them all when it opens."""
    with _stable_ids(experiment):
        return _build_page(
            experiment,
            data,
            summary=summary,
            evaluation=evaluation,
            max_edges=max_edges,
            page_examples=page_examples,
            thumbnails=thumbnails,
            shown_slots=shown_slots,
            preload_chars=preload_chars,
        )


def _build_page(
    experiment: str,
    data: Mapping[str, MethodData],
    *,
    summary: Mapping | None,
    evaluation: Mapping | None,
    max_edges: int,
    page_examples: int,
    thumbnails: Mapping[int, str] | None,
    shown_slots: int,
    preload_chars: int,
) -> ExplorerPage:
    from bokeh.document import Document
    from bokeh.embed import file_html
    from bokeh.events import DocumentReady
    from bokeh.layouts import column, row
    from bokeh.models import (
        ColumnDataSource,
        CustomJS,
        HoverTool,
        InlineStyleSheet,
        Range1d,
        TapTool,
    )

    # The widgets' own module: bokeh.models re-exports them by a computed __all__, which
    # type checkers cannot follow.
    from bokeh.models.widgets import Div, RadioButtonGroup, Slider, TextInput
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    if not data:
        raise ValueError("No basis method to show.")
    methods = list(data)
    colours = module_colours(data)
    views = {
        m: _method_view(m, d, colours[m], max_edges, page_examples, thumbnails or {}, shown_slots)
        for m, d in data.items()
    }
    first = views[methods[0]]
    # The shown sources start empty and are filled from the method's store when the page is
    # ready (and on every switch), so that no method's data are in the page twice.
    nodes = ColumnDataSource({k: [] for k in first.nodes}, name="nodes")
    edges = ColumnDataSource({k: [] for k in first.edges}, name="edges")
    stores = {}
    for m, v in views.items():
        stores[f"nodes_{m}"] = ColumnDataSource(dict(v.nodes), name=f"nodes_{m}")
        stores[f"edges_{m}"] = ColumnDataSource(dict(v.edges), name=f"edges_{m}")
        stores[f"mnodes_{m}"] = ColumnDataSource(dict(v.mnodes), name=f"mnodes_{m}")
        stores[f"medges_{m}"] = ColumnDataSource(dict(v.medges), name=f"medges_{m}")
    n_layers = max(len(v.layers) for v in views.values())
    fig = figure(
        name="graph",
        height=720,
        sizing_mode="stretch_width",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        x_range=Range1d(start=-0.5, end=n_layers - 0.5),
        # The top slots hold the modules and the most important features; pan or zoom out
        # (reset) for the rest.
        y_range=Range1d(
            start=-min(max(v.n_slots for v in views.values()), shown_slots) + 0.5, end=0.8
        ),
        toolbar_location="above",
    )
    fig.segment(
        "x0", "y0", "x1", "y1", source=edges, line_width="lw", line_alpha="alpha", color="#333"
    )
    glyph = fig.scatter(
        "x",
        "y",
        source=nodes,
        size="size",
        fill_color="color",
        line_color="#222",
        marker="marker",
        line_width=0.5,
        nonselection_fill_alpha=0.45,
        nonselection_line_alpha=0.45,
    )
    # Focus, path and search modes mark nodes in an overlay (explorer.js fills it) instead of
    # changing the nodes' data: that would rebuild the hit-test index between a hover and
    # the tap that follows it, and the tap would miss.
    focus = ColumnDataSource(
        {k: [] for k in ("x", "y", "size", "fill", "line", "fa", "lw")}, name="focus"
    )
    fig.scatter(
        "x",
        "y",
        source=focus,
        size="size",
        fill_color="fill",
        fill_alpha="fa",
        line_color="line",
        line_width="lw",
    )
    hover = HoverTool(renderers=[glyph], tooltips="@label")
    fig.add_tools(hover, TapTool(renderers=[glyph]))
    fig.xaxis.ticker = list(range(n_layers))
    fig.xaxis.major_label_overrides = {i: lay for i, lay in enumerate(first.layers)}
    fig.yaxis.visible = False
    fig.grid.visible = False

    card = Div(
        name="card",
        text="<i>Click a node to see its card.</i>",
        width=460,
        styles={"overflow-y": "auto", "max-height": "760px", "font-size": "12px"},
        stylesheets=[InlineStyleSheet(css=_asset("card.css") + _thumbnail_css(thumbnails or {}))],
    )
    legend = Div(name="legend", text=first.legend, sizing_mode="stretch_width")
    # A fixed height: the note changes on every hover, and a graph that moved under the
    # pointer between a hover and a click would miss the click.
    note = Div(
        name="edge_note",
        text="",
        sizing_mode="stretch_width",
        height=72,
        styles={"overflow-y": "auto"},
    )
    headline = Div(name="headline", text=first.headline, sizing_mode="stretch_width")
    method = RadioButtonGroup(name="method", labels=[m.upper() for m in methods], active=0)
    # The module view is the default where a layer has more features than the window shows:
    # there every module is one node, and none can lie below the window.
    crowded = any(v.n_slots > shown_slots and v.mnodes["x"] for v in views.values())
    view = RadioButtonGroup(name="view", labels=["features", "modules"], active=1 if crowded else 0)
    search = TextInput(
        name="search",
        placeholder="find: layer:index, module N, or label text (e.g. cos, induction, '7')",
        width=360,
    )
    mass = Slider(
        name="mass",
        title="edges holding this % of each layer pair's weight",
        start=50,
        end=100,
        step=0.5,
        value=90,
    )
    side_files: dict[str, str] = {}
    card_refs = {}
    for m, v in views.items():
        card_refs[m], files = card_files(m, v.cards)
        side_files |= files
    texts = {
        m: {
            "legend": v.legend,
            "headline": v.headline,
            "drawn": v.drawn_note,
            "pairs": v.pairs,
            "totals": v.totals,
            "hidden": v.hidden_note,
            "slots": v.n_slots,
            "cards": card_refs[m],
        }
        for m, v in views.items()
    }
    args = dict(
        nodes=nodes,
        focus=focus,
        edges=edges,
        card=card,
        legend=legend,
        note=note,
        method=method,
        view=view,
        yr=fig.y_range,
        shown_slots=shown_slots,
        mass=mass,
        headline=headline,
        axis=fig.xaxis[0],
        texts=texts,
        methods=methods,
        layers={m: v.layers for m, v in views.items()},
        preload_chars=preload_chars,
        **stores,
    )
    stores_js = ", ".join(f"{m}: [nodes_{m}, edges_{m}, mnodes_{m}, medges_{m}]" for m in methods)
    ready = CustomJS(args=args, code=f"const stores = {{{stores_js}}};\n" + _asset("explorer.js"))
    update = CustomJS(code="if (window.ib) window.ib.update();")
    method.js_on_change("active", update)
    view.js_on_change("active", update)
    mass.js_on_change("value", update)
    nodes.selected.js_on_change("indices", CustomJS(code="if (window.ib) window.ib.onSelect();"))
    search.js_on_change("value", CustomJS(code="if (window.ib) window.ib.search(cb_obj.value);"))
    hover.callback = CustomJS(
        code="if (window.ib) { const i = cb_data.index.indices; window.ib.onHover("
        "i.length ? i[0] : null); }"
    )
    title = Div(
        text=f"<h2>interaction-basis explorer: {html.escape(experiment)}</h2>"
        "<p>Layers left to right; nodes grouped by module within each layer (colour), sized by "
        "importance; the constant feature is a square on top. Edge width and opacity follow "
        "log10 of the edge weight relative to its layer pair's strongest. Hover or click a node: "
        "only its edges are drawn, its neighbours coloured by their share of its weight, and its "
        "card opens (partner rows are links); shift-click pins nodes and draws the paths between "
        "them. Selection and pins are in the address (share the link). The buttons switch the "
        "basis. "
        f"The feature view opens on the top {shown_slots} slots of each layer (zoom out or reset "
        "for all); the module view draws each module of each layer as one node (size: members) "
        "with the summed edges; click one for its members' cards, expanded in the graph.</p>",
        sizing_mode="stretch_width",
    )
    numbers = Div(
        name="experiment_numbers",
        text=headline_html(summary, evaluation),
        sizing_mode="stretch_width",
    )
    page = column(
        title,
        numbers,
        headline,
        row(method, view, mass, search, sizing_mode="stretch_width"),
        note,
        row(column(fig, legend, sizing_mode="stretch_width"), card, sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
    )
    document = Document()
    document.add_root(page)
    document.js_on_event(DocumentReady, ready)
    text = file_html(document, resources=INLINE, title=f"explorer: {experiment}")
    if EXTERNAL.search(text):
        raise RuntimeError("internal: the explorer page loads an external resource")
    return ExplorerPage(text, side_files)


class _View(NamedTuple):
    layers: list[str]
    nodes: dict
    edges: dict
    legend: str
    headline: str
    drawn_note: str
    n_slots: int
    pairs: list[str]  # the layer pairs' names, by the edges' ``pair`` column
    totals: list[float]  # each pair's non-constant weight
    mnodes: dict  # the module view: one node per module (and the singletons) per layer
    medges: dict  # ... and the summed edges between them
    hidden_note: str  # the modules the feature view's window does not show
    cards: dict[str, str]  # per layer, its cards' block (``pack_cards``)


def _method_view(
    method: str,
    d: MethodData,
    colour: Mapping[int, str],
    max_edges: int,
    page_examples: int,
    thumbnails,
    shown_slots: int = SHOWN_SLOTS,
) -> _View:
    all_layers = list(d.bases)
    layers = (
        list(d.modules["layers"])
        if d.modules
        else [lay for lay in all_layers if lay != "output"] or all_layers
    )
    ranked = module_order(d.modules)
    labels = module_labels(d)
    feats = d.features
    slot: dict[tuple[str, int], tuple[int, int]] = {}
    module_of: dict[tuple[str, int], int] = {}
    cols: dict[str, list] = {
        k: []
        for k in (
            "x",
            "y",
            "layer",
            "index",
            "importance",
            "module",
            "color",
            "size",
            "marker",
            "label",
            "key",
        )
    }
    row_of: dict[tuple[str, int], int] = {}
    empty = []
    imp_all = np.concatenate([d.bases[lay].importance.numpy() for lay in layers])
    imp_pos = imp_all[imp_all > 0]
    lo, hi = (np.log10(imp_pos.min()), np.log10(imp_pos.max())) if imp_pos.size else (0.0, 1.0)
    layouts = _layouts(d, layers)
    for x, layer in enumerate(layers):
        basis = d.bases[layer]
        n = basis.C.shape[1]
        if n == 0:
            empty.append(layer)
            continue
        g = layer_arrays(feats[layer].ds)
        constant = g["is_constant"]
        lay = layouts[layer]
        for k, i in enumerate(lay.order):
            slot[(layer, i)] = (x, -k)
            module_of[(layer, i)] = lay.module[i]
        for i in range(n):
            imp = float(basis.importance[i])
            c = lay.module[i]
            size = 5 + 13 * (np.log10(imp) - lo) / max(hi - lo, 1e-9) if imp > 0 else 4
            row_of[(layer, i)] = len(cols["x"])
            cols["key"].append(f"{layer}:{i}")
            cols["x"].append(x)
            cols["y"].append(slot[(layer, i)][1])
            cols["layer"].append(layer)
            cols["index"].append(i)
            cols["importance"].append(imp)
            cols["module"].append(int(c))
            cols["color"].append("#000000" if constant[i] else colour.get(c, GREY))
            cols["size"].append(10.0 if constant[i] else float(size))
            cols["marker"].append("square" if constant[i] else "circle")
            cols["label"].append(
                _short_label(method, layer, i, g, c, labels) + _writers(d.heads, layer, i)[0]
            )
    # Cards after all labels exist (they name the partners). Each layer's cards are one
    # compressed block (a card file, ``card_files``) that the page loads and inflates when a
    # card of that layer is first shown.
    label_of = {(lay, i): lab for lay, i, lab in zip(cols["layer"], cols["index"], cols["label"])}
    cards = {}
    for layer in layers:
        if layer in empty:
            continue
        cards[layer] = pack_cards(
            _layer_cards(
                method,
                layer,
                layer_arrays(feats[layer].ds),
                d,
                page_examples,
                thumbnails,
                all_layers,
                module_of=module_of,
                labels=labels,
                label_of=label_of,
            )
        )
    edges, drawn_note, pairs, totals = _edge_columns(d, layers, slot, row_of, max_edges)
    legend = _legend(ranked, colour, labels, d.modules, empty)
    headline = _headline_method(method, d)
    n_slots = max((d.bases[lay].C.shape[1] for lay in layers), default=1)
    groups = module_groups(d, layers, layouts)
    mnodes, medges = _module_columns(method, d, layers, groups, colour, labels, row_of)
    hidden = _hidden_note(layers, groups, slot, labels, shown_slots)
    return _View(
        layers,
        cols,
        edges,
        legend,
        headline,
        drawn_note,
        n_slots,
        pairs,
        totals,
        mnodes,
        medges,
        hidden,
        cards,
    )


def _layouts(d: MethodData, layers: list[str]) -> dict[str, LayerLayout]:
    """Where each feature of ``layers`` is drawn (``graph.layout``), the constant on top."""
    sizes = {}
    for layer in layers:
        n = d.bases[layer].C.shape[1]
        sizes[layer] = (n, bool(n and is_constant(d, layer, n)[0]))
    return layout_layers(d.modules, sizes)


def module_groups(
    d: MethodData, layers: list[str], layouts: Mapping[str, LayerLayout] | None = None
) -> dict[str, list[tuple[int, list[int]]]]:
    """Each layer's supernodes: its modules (of two or more nodes, largest first) with their
    non-constant members there, then ``NO_MODULE`` with the layer's other non-constant
    features (the singletons). The constant feature is in none (its edges are never drawn).
    ``layouts``: :func:`_layouts` of ``layers``, where already made."""
    ranked = module_order(d.modules)
    layouts = layouts or _layouts(d, layers)
    out: dict[str, list[tuple[int, list[int]]]] = {}
    for layer in layers:
        n = d.bases[layer].C.shape[1]
        const = is_constant(d, layer, n)
        lay = layouts[layer]
        by: dict[int, list[int]] = {}
        for i in range(n):
            if not const[i]:
                by.setdefault(lay.module[i], []).append(i)
        out[layer] = [(c, by[c]) for c in [*ranked, NO_MODULE] if c in by]
    return out


def module_edges(
    d: MethodData, layers: list[str], groups: Mapping[str, list[tuple[int, list[int]]]]
) -> dict[tuple[str, str], np.ndarray]:
    """Per adjacent layer pair ``(a, b)``: ``[r, c]``, the summed weight of all edges from the
    members of ``groups[a][c]`` to those of ``groups[b][r]`` (every edge, not only the page's
    drawn ones)."""
    out = {}
    for a, b in zip(layers, layers[1:]):
        if (a, b) not in d.edges:
            continue
        mat = d.edges[(a, b)].numpy().astype(np.float64)
        s = np.zeros((len(groups[b]), len(groups[a])))
        for r, (_, mb) in enumerate(groups[b]):
            for c, (_, ma) in enumerate(groups[a]):
                s[r, c] = mat[np.ix_(mb, ma)].sum()
        out[(a, b)] = s
    return out


def _module_columns(method, d, layers, groups, colour, labels, row_of) -> tuple[dict, dict]:
    """The module view's nodes and edges. A supernode's size follows its member count; its
    ``members`` are the rows of its features in the feature view's nodes (most important
    first), for its cards and its expansion."""
    names = ("x", "y", "layer", "index", "importance", "module", "color", "size", "marker")
    cols: dict[str, list] = {k: [] for k in (*names, "label", "key", "count", "members")}
    row: dict[tuple[str, int], int] = {}
    biggest = max((len(m) for g in groups.values() for _, m in g), default=1)
    for x, layer in enumerate(layers):
        imp = d.bases[layer].importance.numpy()
        for k, (c, members) in enumerate(groups[layer]):
            row[(layer, k)] = len(cols["x"])
            members = sorted(members, key=lambda i: (-float(imp[i]), i))
            total = float(imp[members].sum())
            name = f"module {c}" if c != NO_MODULE else "singletons"
            text = f"{method} {layer} · {name}"
            if c in labels:
                text += f" ({labels[c]})"
            cols["x"].append(x)
            cols["y"].append(-k)
            cols["layer"].append(layer)
            cols["index"].append(-1)
            cols["importance"].append(total)
            cols["module"].append(int(c))
            cols["color"].append(colour.get(c, GREY))
            cols["size"].append(8.0 + 26.0 * float(np.sqrt(len(members) / biggest)))
            cols["marker"].append("circle" if c != NO_MODULE else "diamond")
            cols["label"].append(f"{text}: {len(members)} features, Σ importance {_fmt(total)}")
            cols["key"].append(f"{layer}:{'m' + str(c) if c != NO_MODULE else 'singletons'}")
            cols["count"].append(len(members))
            cols["members"].append(",".join(str(row_of[(layer, i)]) for i in members))
    ecols: dict[str, list] = {k: [] for k in ("x0", "y0", "x1", "y1", "weight", "src", "dst")}
    ecols["pair"] = []
    for p, ((a, b), s) in enumerate(module_edges(d, layers, groups).items()):
        top = float(s.max()) if s.size else 0.0
        for r, c in zip(*np.nonzero(s > 0), strict=True):
            ecols["x0"].append(layers.index(a))
            ecols["y0"].append(-int(c))
            ecols["x1"].append(layers.index(b))
            ecols["y1"].append(-int(r))
            ecols["weight"].append(float(s[r, c]))
            ecols["src"].append(row[(a, int(c))])
            ecols["dst"].append(row[(b, int(r))])
            ecols["pair"].append(p)
            # Width and opacity by log weight relative to the pair's strongest sum.
            ecols.setdefault("rel", []).append(float(s[r, c]) / top)
    rel = np.array(ecols.pop("rel", []), dtype=float)
    t = np.clip(1 + np.log10(np.maximum(rel, 1e-300)) / 4, 0, 1) if rel.size else rel
    out = {name: np.array(v, dtype=float) for name, v in ecols.items()}
    for name in ("src", "dst", "pair"):
        out[name] = np.array(ecols[name], dtype=np.int32)
    out["lw"] = 0.5 + 7.5 * t
    out["alpha"] = 0.1 + 0.6 * t
    return cols, out


def _hidden_note(layers, groups, slot, labels, shown_slots: int) -> str:
    """The modules that the feature view's window of ``shown_slots`` slots per layer does not
    show at all in some layer, so that none is hidden silently."""
    items = []
    for layer in layers:
        for c, members in groups[layer]:
            first = min(-slot[(layer, i)][1] for i in members)
            if c != NO_MODULE and first >= shown_slots:
                items.append(f"module {c} in {layer} ({len(members)} features from slot {first})")
    if not items:
        return ""
    return (
        f"<b>Below the top-{shown_slots} window</b> (zoom out, or use the module view): "
        + html.escape("; ".join(items))
        + "."
    )


def is_constant(d: MethodData, layer: str, n: int) -> np.ndarray:
    """Which of a layer's ``n`` features are constant (features.zarr's ``is_constant``; none
    where the store does not describe the layer). Only these are left out of edge counts."""
    if layer in d.features.children and "is_constant" in d.features[layer].ds:
        return np.asarray(d.features[layer].ds["is_constant"].values, dtype=bool)[:n]
    return np.zeros(n, dtype=bool)


def _pair_weights(d: MethodData, a: str, b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges ``a → b`` (rows: features of ``b``), and the non-constant rows and columns."""
    mat = d.edges[(a, b)].numpy()
    return mat, ~is_constant(d, b, mat.shape[0]), ~is_constant(d, a, mat.shape[1])


def _members(d: MethodData) -> dict[int, list[tuple[str, int]]]:
    """The non-constant members of each module of two or more nodes."""
    ranked = set(module_order(d.modules))
    out: dict[int, list[tuple[str, int]]] = {}
    consts = {}
    for node in (d.modules or {}).get("nodes", []):
        layer, i, c = node["layer"], node["index"], node["cluster"]
        if c not in ranked or layer not in d.bases:
            continue
        if layer not in consts:
            consts[layer] = is_constant(d, layer, d.bases[layer].C.shape[1])
        if i < len(consts[layer]) and not consts[layer][i]:
            out.setdefault(c, []).append((layer, i))
    return out


def _member_frequencies(d: MethodData) -> dict[int, Counter] | None:
    """Mod-add: per module, how many members have each dominant Fourier frequency (features
    without one left out); None where features.zarr has no Fourier evidence."""
    if not any("dominant_frequency" in d.features[lay].ds for lay in d.features.children):
        return None
    out = {}
    arrays: dict[str, Mapping[str, np.ndarray]] = {}  # each layer's, read once
    for c, members in _members(d).items():
        count: Counter = Counter()
        for layer, i in members:
            if layer not in arrays:
                arrays[layer] = layer_arrays(d.features[layer].ds)
            g = arrays[layer]
            if "dominant_frequency" in g and int(g["dominant_frequency"][i]) > 0:
                count[int(g["dominant_frequency"][i])] += 1
        out[c] = count
    return out


def _ranked_items(count: Counter) -> list[tuple]:
    """A composition's items, most members first (ties in their natural order)."""
    return sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))


def module_labels(d: MethodData) -> dict[int, str]:
    """Each module's composition: its members' dominant Fourier frequencies for mod-add
    ("freq 53 ×9, 9 ×3, 18 ×2"), else its layers ("ln1.0 ×3, ln2.0 ×5"), never one name that
    fits only part of it."""
    freqs = _member_frequencies(d)
    out = {}
    for c, members in _members(d).items():
        if freqs is not None:
            items = _ranked_items(freqs[c])
            unlabelled = len(members) - sum(freqs[c].values())
            text = ", ".join(f"{f} ×{k}" for f, k in items[:4]) + (", …" if len(items) > 4 else "")
            text = f"freq {text}" if items else "no dominant frequency"
            out[c] = text + (f" (+{unlabelled} without)" if unlabelled and items else "")
        else:
            layers = Counter(layer for layer, _ in members)
            order = list(d.bases)
            out[c] = ", ".join(f"{lay} ×{layers[lay]}" for lay in sorted(layers, key=order.index))
    return out


def module_colours(data: Mapping[str, MethodData]) -> dict[str, dict[int, str]]:
    """A colour per module that means the same in every basis.

    Mod-add: the colour of a module's dominant Fourier frequency (most members; ties to the
    lower frequency), one colour per frequency over all methods (the most frequent first).
    Otherwise the first method's modules take colours by size, and each other method's module
    takes the colour of the first method's module it overlaps most (greedy, best pairs first;
    overlap: the summed squared cosines between the member features' directions ``C[:, i]``
    in each layer); the rest take unused colours.
    """
    freqs = {m: _member_frequencies(d) for m, d in data.items()}
    out: dict[str, dict[int, str]] = {}
    if any(f is not None for f in freqs.values()):
        key = {
            m: {c: (_ranked_items(n)[0][0] if n else None) for c, n in (f or {}).items()}
            for m, f in freqs.items()
        }
        total: Counter = Counter()
        for m, f in freqs.items():
            for c, n in (f or {}).items():
                if key[m][c] is not None:
                    total[key[m][c]] += sum(n.values())
        by_freq = {f: PALETTE[i % len(PALETTE)] for i, (f, _) in enumerate(_ranked_items(total))}
        spare = len(by_freq)
        for m, d in data.items():
            out[m] = {}
            for c in module_order(d.modules):
                f = key[m].get(c)
                if f is None:
                    out[m][c] = PALETTE[spare % len(PALETTE)]
                    spare += 1
                else:
                    out[m][c] = by_freq[f]
        return out
    methods = list(data)
    first = data[methods[0]]
    out[methods[0]] = {
        c: PALETTE[i % len(PALETTE)] for i, c in enumerate(module_order(first.modules))
    }
    for m in methods[1:]:
        d = data[m]
        mine, theirs = module_order(d.modules), module_order(first.modules)
        overlap = _module_overlap(d, first, mine, theirs)
        out[m] = {}
        taken = set()
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            r, t = divmod(int(flat), len(theirs))
            if overlap[r, t] <= 0:
                break
            if mine[r] in out[m] or theirs[t] in taken:
                continue
            out[m][mine[r]] = out[methods[0]][theirs[t]]
            taken.add(theirs[t])
        used = set(out[m].values())
        free = [p for p in PALETTE if p not in used] or PALETTE
        for k, c in enumerate(c for c in mine if c not in out[m]):
            out[m][c] = free[k % len(free)]
    return out


def _module_overlap(d: MethodData, other: MethodData, mine: list, theirs: list) -> np.ndarray:
    """``[i, j]``: Σ over layers and member pairs of cos²(C[:, a], C'[:, b]) between module
    ``mine[i]`` of ``d`` and ``theirs[j]`` of ``other``."""
    out = np.zeros((len(mine), len(theirs)))
    if not mine or not theirs:
        return out
    a_members, b_members = _members(d), _members(other)
    for layer in d.bases:
        if layer not in other.bases:
            continue
        a = [(r, i) for r, c in enumerate(mine) for lay, i in a_members.get(c, []) if lay == layer]
        b = [
            (t, j) for t, c in enumerate(theirs) for lay, j in b_members.get(c, []) if lay == layer
        ]
        if not a or not b:
            continue
        ca = d.bases[layer].C.numpy()[:, [i for _, i in a]]
        cb = other.bases[layer].C.numpy()[:, [j for _, j in b]]
        if ca.shape[0] != cb.shape[0]:
            continue
        ca = ca / np.maximum(np.linalg.norm(ca, axis=0), 1e-300)
        cb = cb / np.maximum(np.linalg.norm(cb, axis=0), 1e-300)
        cos2 = (ca.T @ cb) ** 2
        ra = np.zeros((len(a), len(mine)))
        ra[np.arange(len(a)), [r for r, _ in a]] = 1
        rb = np.zeros((len(b), len(theirs)))
        rb[np.arange(len(b)), [t for t, _ in b]] = 1
        out += ra.T @ cos2 @ rb
    return out


def _short_label(method, layer, i, g, module, labels) -> str:
    text = f"{method} {layer} #{i}"
    if bool(g["is_constant"][i]):
        return text + " (constant)"
    if module != NO_MODULE:
        text += f" · module {module}" + (f" ({labels[module]})" if module in labels else "")
    if "dominant_term" in g:
        text += f" · {g['dominant_term'][i]}"
    return text


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class _LayerCards(NamedTuple):
    """What every card of one layer shares, computed once for the layer: its evidence as
    numpy arrays, its importances, and its strongest partners in each adjacent layer."""

    method: str
    layer: str
    g: Mapping[str, np.ndarray]
    imp: np.ndarray
    imp_total: float
    edges: list  # per direction: (title, None) or (title, partner, weights, top, totals)
    linearised: bool


def _layer_cards(method, layer, g, d: MethodData, n_ex, thumbnails, all_layers, **shared):
    """Every card of one layer, in feature order."""
    imp = d.bases[layer].importance.numpy()
    ctx = _LayerCards(
        method,
        layer,
        g,
        imp,
        float(imp.sum()),
        _edge_partners(d, layer, all_layers),
        layer in d.features.attrs.get("direct_effect_linearised", []),
    )
    return [
        _card(ctx, i, d, n_ex=n_ex, thumbnails=thumbnails, **shared)
        for i in range(d.bases[layer].C.shape[1])
    ]


def _edge_partners(d: MethodData, layer, all_layers) -> list:
    """For the incoming and the outgoing pair: the weights of each feature of ``layer`` (a
    row each), each row's ``N_CARD_EDGES`` strongest partners and its summed weight."""
    out: list = []
    k = all_layers.index(layer)
    for title, pair, pick in (
        ("incoming", (all_layers[k - 1], layer) if k > 0 else None, "row"),
        ("outgoing", (layer, all_layers[k + 1]) if k + 1 < len(all_layers) else None, "col"),
    ):
        if pair is None or pair not in d.edges:
            out.append((title, None))
            continue
        mat = d.edges[pair].numpy()
        # Rows made contiguous: each row's sum is then the same number, bit for bit, as the
        # sum of that feature's weights alone.
        w = mat if pick == "row" else np.ascontiguousarray(mat.T)
        partner = pair[0] if pick == "row" else pair[1]
        out.append((title, partner, w, top_k_stable(w, N_CARD_EDGES), w.sum(axis=1)))
    return out


def top_k_stable(m: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``m``, ``np.argsort(-row, kind="stable")[:k]`` (the ``k`` largest, ties in
    index order), for every row at once and without sorting whole rows."""
    k = min(k, m.shape[1])
    neg = -m
    if k == 0 or k == m.shape[1] or np.isnan(m).any():
        return np.argsort(neg, axis=1, kind="stable")[:, :k]
    part = np.argpartition(neg, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(neg, part, 1).max(axis=1)
    # A row with more than k values up to its k-th (ties at the cut) is sorted whole: which
    # of the tied ones come first is the index order.
    simple = (neg <= kth[:, None]).sum(axis=1) == k
    out = np.empty((m.shape[0], k), dtype=np.intp)
    idx = np.sort(part[simple], axis=1)
    order = np.argsort(np.take_along_axis(neg[simple], idx, 1), axis=1, kind="stable")
    out[simple] = np.take_along_axis(idx, order, 1)
    for r in np.flatnonzero(~simple):
        out[r] = np.argsort(neg[r], kind="stable")[:k]
    return out


@functools.lru_cache(maxsize=1 << 16)
def _escape(text: str) -> str:
    """``html.escape``, remembered: a page escapes the same few thousand tokens 10⁷ times."""
    return html.escape(text)


def _card(ctx: _LayerCards, i, d, *, module_of, labels, label_of, n_ex, thumbnails) -> str:
    e = html.escape
    method, layer, g = ctx.method, ctx.layer, ctx.g
    imp_name = "Λ" if method == "lib" else ("eigenvalue" if method == "pca" else "importance")
    module = module_of.get((layer, i), NO_MODULE)
    parts = [f"<h3>{e(method.upper())} · {e(layer)} · feature {i}</h3>"]
    if bool(g["is_constant"][i]):
        parts.append("<p><b>constant feature</b> (the folded bias direction)</p>")
    mod_text = (
        "none (singleton)"
        if module == NO_MODULE
        else (f"{module}" + (f" — {labels[module]}" if module in labels else ""))
    )
    imp = ctx.imp
    share = 100 * float(imp[i]) / ctx.imp_total if ctx.imp_total > 0 else 0.0
    parts.append(
        f"<p>{imp_name} = {_fmt(float(imp[i]))} ({share:.2g}% of the layer's {imp_name}); "
        f"module: {e(mod_text)}</p>"
    )
    if "dominant_term" in g:
        parts.append(
            f"<p>Fourier: dominant term <b>{e(str(g['dominant_term'][i]))}</b> "
            f"({100 * float(g['dominant_term_share'][i]):.0f}% of the power), frequency "
            f"<b>{int(g['dominant_frequency'][i])}</b> "
            f"({100 * float(g['dominant_share'][i]):.0f}%)</p>"
        )
    parts.append(_modadd_plots(g, i))
    q = ", ".join(
        f"q{100 * float(lev):g}={_fmt(float(v))}"
        for lev, v in zip(g["quantile"], g["quantile_value"][:, i], strict=True)
    )
    parts.append(
        "<p><b>activation</b> (held-out): mean "
        f"{_fmt(float(g['mean'][i]))}, std {_fmt(float(g['std'][i]))}, "
        f"min {_fmt(float(g['min'][i]))}, max {_fmt(float(g['max'][i]))}<br>"
        f"{q}</p>"
    )
    parts.append(_histogram(g, i))
    parts.append(_writers(d.heads, layer, i)[1])
    parts.append(_edge_table(ctx.edges, i, label_of))
    if "promoted_output" in g:
        parts.append(_direct_effect(g, i, ctx.linearised))
    parts.append(_examples(g, i, n_ex, thumbnails))
    return "".join(parts)


def _edge_table(partners: list, i, label_of) -> str:
    rows = []
    for title, *found in partners:
        if found[0] is None:
            rows.append(f"<p><b>{title}</b>: none (no adjacent layer)</p>")
            continue
        partner, weights, tops, totals = found
        w, top, total = weights[i], tops[i], float(totals[i])
        # Each partner row links to the partner (explorer.js selects it from the hash); the
        # weight is also given as its share of this node's incoming or outgoing weight.
        items = "".join(
            f"<tr><td><a href='#sel={html.escape(partner)}:{int(j)}'>"
            f"{html.escape(label_of.get((partner, int(j)), f'{partner} #{j}'))}</a></td>"
            f"<td style='text-align:right'>{_fmt(float(w[j]))}</td>"
            f"<td style='text-align:right'>{100 * float(w[j]) / total if total > 0 else 0:.1f}%"
            "</td></tr>"
            for j in top
        )
        rows.append(
            f"<p><b>top {len(top)} {title} edges</b> ({html.escape(partner)}; weight, share of "
            f"this feature's {title} weight)</p><table class='edges'>{items}</table>"
        )
    return "".join(rows)


def _direct_effect(g, i, linearised: bool = False) -> str:
    """The outputs the feature's direction raises (positive effect) and lowers (negative), each
    list only of its own sign; ``linearised``: a residual-stream layer, read through the final
    LayerNorm frozen at the feature's top example (``compute_readout_direct_effects``)."""

    def items(key, sign):
        name = f"{key}_label" if f"{key}_label" in g else f"{key}_output"
        quoted = f"{key}_label" in g
        out = [
            f"{html.escape(repr(str(lab)) if quoted else str(lab))} ({_fmt(float(v))})"
            for lab, v in zip(g[name][:, i], g[f"{key}_value"][:, i], strict=True)
            if sign * float(v) > 0
        ]
        return ", ".join(out) or "none"

    how = "the feature's direction through the unembedding"
    if linearised:
        var = float(g["direct_variance"][i]) if "direct_variance" in g else float("nan")
        how = (
            "a stated linearisation: a unit of the feature, its direction C⁺ added to the final "
            "residual (skipping the later blocks), through the final LayerNorm with its scale "
            f"frozen at the top example's own (variance {_fmt(var)}) and the unembedding"
        )
    return (
        f"<p><b>direct effect on the outputs</b> ({how}): <span class='up'>promotes "
        f"{items('promoted', 1)}</span>; <span class='down'>suppresses "
        f"{items('suppressed', -1)}</span></p>"
    )


def distinct_examples(values: np.ndarray, n: int, seen: list[float] | None = None):
    """The first ``n`` examples of distinct value, as ``(index, copies)``: ``copies`` counts the
    examples (among ``values``) tied with it. Values tie when equal to 1e-9 of the largest
    |value|; ``seen`` (updated): values already shown elsewhere on the card, left out."""
    seen = [] if seen is None else seen
    # Python floats: a card tests a few dozen values, where numpy's per-call cost dominates.
    vals = np.asarray(values, dtype=np.float64).tolist()
    finite = [abs(v) for v in vals if math.isfinite(v)]
    tol = 1e-9 * max(max(finite) if finite else 0.0, 1e-300)
    picked: list[list[int]] = []
    for k, v in enumerate(vals):
        if not math.isfinite(v):
            continue
        tied = [p for p in picked if abs(vals[p[0]] - v) <= tol]
        if tied:
            tied[0][1] += 1
        elif not any(abs(x - v) <= tol for x in seen) and len(picked) < n:
            picked.append([k, 1])
    seen.extend(vals[k] for k, _ in picked)
    return [(k, c) for k, c in picked]


def _examples(g, i, n, thumbnails) -> str:
    """Top and bottom examples (ties shown once, with their count) and one example at each
    quantile level not already shown."""
    out = []
    seen: list[float] = []
    groups = [("top", f"top {n} examples", "rank"), ("bottom", f"bottom {n} examples", "rank")]
    if "quantile_example_value" in g:
        groups.append(("quantile_example", "examples across the quantiles", "quantile"))
    for key, title, _ in groups:
        vals = g[f"{key}_value"][:, i]
        limit = n if key != "quantile_example" else len(vals)
        picked = distinct_examples(vals, limit, seen)
        items = []
        for r, copies in picked:
            v, s, p = vals[r], g[f"{key}_sample"][r, i], g[f"{key}_position"][r, i]
            tie = f" <span class='tie'>×{copies} tied</span>" if copies > 1 else ""
            level = f"q{100 * float(g['quantile'][r]):g}: " if key == "quantile_example" else ""
            if f"{key}_a" in g:
                a, b = int(g[f"{key}_a"][r, i]), int(g[f"{key}_b"][r, i])
                items.append(
                    f"<li>{level}(a, b) = ({a}, {b}), position {p}: {_fmt(float(v))}{tie}</li>"
                )
            elif f"{key}_window_text" in g:
                items.append(
                    f"<li>{level}{_window(g, key, r, i)} <i>{_fmt(float(v))}</i>{tie}"
                    f"{_earlier(g, key, r, i)}</li>"
                )
            elif int(s) in thumbnails:
                # The image itself is in the card's style sheet, once per input.
                items.append(
                    f"<li style='display:inline-block;margin:2px'><span class='thumb im{s}' "
                    f"title='input {s}: {_fmt(float(v))}'></span><br>{level}{_fmt(float(v))}"
                    f"{tie}</li>"
                )
            else:
                items.append(f"<li>{level}input {s}, position {p}: {_fmt(float(v))}{tie}</li>")
        head = title if key == "quantile_example" else f"{key} {len(items)} examples"
        out.append(
            f"<p><b>{head}</b>{' (ties shown once)' if key != 'quantile_example' else ''}</p>"
            f"<ul class='examples'>{''.join(items)}</ul>"
        )
    return "".join(out)


def _window(g, key, r, i) -> str:
    """Tokens of an example's window, each shaded by the feature's activation there (where
    known: the quantile examples have only their own token's value); the current token is
    underlined, and the earlier occurrence of the current token boxed where it is in the
    window, the token after it (the one an induction head copies) dotted."""
    g = layer_arrays(g)
    # Python values: a page draws 10⁷ of these spans, and numpy's cost per scalar dominates.
    texts = [str(t) for t in g[f"{key}_window_text"][r, i].tolist()]
    known = f"{key}_window_value" in g
    centre = len(texts) // 2
    if known:
        vals = np.asarray(g[f"{key}_window_value"][r, i], dtype=np.float64).tolist()
    else:
        vals = [math.nan] * len(texts)
        vals[centre] = float(g[f"{key}_value"][r, i])
    # The largest |value| that is not NaN (inf counts), as np.nanmax would give it.
    big = [abs(v) for v in vals if v == v]
    scale = max(max(big) if any(map(math.isfinite, vals)) else 0.0, 1e-300)
    prev = -1
    if f"{key}_previous_position" in g:
        pp = int(g[f"{key}_previous_position"][r, i])
        if pp >= 0:
            prev = centre - (int(g[f"{key}_position"][r, i]) - pp)
    spans = []
    for j, (t, v) in enumerate(zip(texts, vals, strict=True)):
        finite = math.isfinite(v)
        if (not finite) if known else t == "":
            continue  # beyond the sequence ends (NaN value, or token -1 without values)
        # A page has thousands of these spans: one class (sign, tenth of the window's largest
        # |value|, c for the centre; see explorer_assets/card.css) and unquoted attributes.
        if finite:
            level = round(10 * min(1.0, abs(v) / scale))
            cls = f"w{'p' if v >= 0 else 'n'}{level}{'c' if j == centre else ''}"
            # Two digits: the shade already says how large; thousands of these per page.
            title = f" title={v:.2g}"
        else:
            cls, title = "wx", ""
        if j == prev:
            cls += " prev"
        elif prev >= 0 and j == prev + 1:
            cls += " copy"
        attr = f"'{cls}'" if " " in cls else cls
        spans.append(f"<span class={attr}{title}>{_escape(t)}</span>")
    return "<span class='window'>" + "".join(spans) + "</span>"


def _earlier(g, key, r, i) -> str:
    """The earlier occurrence of the example's current token when it lies outside the window:
    two tokens before it to three after, the occurrence boxed, the next token dotted."""
    if f"{key}_previous_position" not in g:
        return ""
    pp = int(g[f"{key}_previous_position"][r, i])
    pos = int(g[f"{key}_position"][r, i])
    half = g[f"{key}_window_text"].shape[-1] // 2
    if pp < 0 or pos - pp <= half:
        return "" if pp >= 0 else " <span class='noprev'>(first occurrence)</span>"
    texts = [str(t) for t in g[f"{key}_previous_window_text"][r, i].tolist()]
    spans = []
    for j, t in enumerate(texts):
        if j == 2:
            spans.append(f"<span class=prev>{_escape(t)}</span>")
        elif j == 3:
            spans.append(f"<span class=copy>{_escape(t)}</span>")
        elif t:
            spans.append(f"<span>{_escape(t)}</span>")
    return (
        f"<br><span class='earlier'>earlier, position {pp}: <span class='window'>"
        + "".join(spans)
        + "</span></span>"
    )


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (
        f"<svg class='plot' width={width} height={height} viewBox='0 0 {width} {height}' "
        f"role=img><title>{html.escape(title)}</title>{body}</svg>"
    )


def _histogram(g, i) -> str:
    """The activation histogram (the quantile subsample's rows in equal bins from the minimum
    to the maximum), zero marked."""
    if "histogram_count" not in g:
        return ""
    counts = g["histogram_count"][i].astype(np.float64)
    lo, hi = float(g["min"][i]), float(g["max"][i])
    w, h, n = 240, 48, len(counts)
    top = max(float(counts.max()), 1.0)
    bar = w / n
    # Heights on a square-root scale: a single spike would flatten the rest.
    rects = "".join(
        f"<rect x={k * bar:.0f} y={h - 12 - (h - 14) * np.sqrt(c / top):.0f} "
        f"width={bar - 1:.0f} height={(h - 14) * np.sqrt(c / top):.0f} fill='#4a7ebb'/>"
        for k, c in enumerate(counts)
        if c > 0
    )
    zero = ""
    if lo < 0 < hi:
        x = w * (0 - lo) / (hi - lo)
        zero = f"<line x1={x:.1f} x2={x:.1f} y1=0 y2={h - 12} stroke='#c00'/>"
    labels = (
        f"<text x=0 y={h - 1} font-size=9>{_fmt(lo)}</text>"
        f"<text x={w} y={h - 1} font-size=9 text-anchor=end>{_fmt(hi)}</text>"
    )
    return (
        "<p class='plotrow'>histogram (held-out, √count; red: 0)<br>"
        + _svg(w, h, rects + zero + labels, "activation histogram")
        + "</p>"
    )


def _modadd_plots(g, i) -> str:
    """Mod-add: the mean activation against (a + b) mod p, and the Fourier power per
    frequency (dominant frequency in red)."""
    out = []
    if "sum_profile" in g:
        curves = [
            (g[key][i], colour)
            for key, colour in (("a_profile", "#4a7ebb"), ("b_profile", "#e08a00"))
            if key in g
        ] + [(g["sum_profile"][i], "#2a6")]
        w, h = 240, 56
        lo = min(float(y.min()) for y, _ in curves)
        hi = max(float(y.max()) for y, _ in curves)
        span = hi - lo if hi > lo else 1.0
        body = ""
        if lo < 0 < hi:
            z = 2 + (h - 14) * hi / span
            body += f"<line x1=0 x2={w} y1={z:.1f} y2={z:.1f} stroke='#bbb'/>"
        for y, colour in curves:
            pts = " ".join(
                f"{w * k / (len(y) - 1):.1f},{2 + (h - 14) * (hi - v) / span:.0f}"
                for k, v in enumerate(y)
            )
            body += f"<polyline points='{pts}' fill=none stroke='{colour}' stroke-width='1.1'/>"
        n = len(curves[0][0])
        body += (
            f"<text x=0 y={h - 1} font-size=9>0</text>"
            f"<text x={w} y={h - 1} font-size=9 text-anchor=end>{n - 1}</text>"
        )
        parts = "<span style='color:#2a6'>(a + b) mod " + f"{n}</span>"
        if len(curves) == 3:
            parts = (
                "<span style='color:#4a7ebb'>a</span> (mean over b), "
                "<span style='color:#e08a00'>b</span> (mean over a), " + parts
            )
        out.append(
            f"<p class='plotrow'>mean activation against {parts} (range {_fmt(lo)} to "
            f"{_fmt(hi)})<br>"
            + _svg(w, h, body, "activation against a, b and (a+b) mod p")
            + "</p>"
        )
    if "frequency_power" in g:
        power = g["frequency_power"][i].astype(np.float64)
        total = float(power.sum())
        dom = int(g["dominant_frequency"][i]) if "dominant_frequency" in g else -1
        w, h, n = 240, 40, len(power)
        top = max(float(power.max()), 1e-300)
        bar = w / n
        rects = "".join(
            f"<rect x={k * bar:.1f} y={h - 10 - (h - 12) * p / top:.0f} "
            f"width={max(bar - 0.5, 0.5):.1f} height={(h - 12) * p / top:.0f} "
            f"fill='{'#c00' if k == dom else '#888'}'/>"
            for k, p in enumerate(power)
            if p > 0
        )
        body = rects + (
            f"<text x=0 y={h - 1} font-size=9>0</text>"
            f"<text x={w} y={h - 1} font-size=9 text-anchor=end>{n - 1}</text>"
        )
        mixed = float(g["mixed_power"][i]) if "mixed_power" in g else 0.0
        share = f"; mixed terms {100 * mixed / (total + mixed):.0f}%" if total + mixed > 0 else ""
        out.append(
            f"<p class='plotrow'>Fourier power per frequency (red: dominant{share})<br>"
            + _svg(w, h, body, "Fourier power per frequency")
            + "</p>"
        )
    return "".join(out)


def _edge_columns(
    d: MethodData, layers, slot, row_of, max_edges: int
) -> tuple[dict, str, list[str], list[float]]:
    """The edges between drawn, non-constant nodes, strongest first within each layer pair.

    ``before`` is the share of its pair's weight held by the pair's stronger edges, so the mass
    slider keeps the same share of every pair (one pair's large weights cannot crowd out
    another's). Past ``max_edges`` the edges are kept in order of ``before`` over all pairs, so
    the cap cuts every pair at the same share; the note says what that share is."""
    per_pair = []
    # Which features have a slot, per layer: a GPT-2 pair has 10⁶ edges to check.
    drawn: dict[str, np.ndarray] = {}
    for layer, i in slot:
        drawn.setdefault(layer, np.zeros(d.bases[layer].C.shape[1], dtype=bool))[i] = True
    for a, b in zip(layers, layers[1:]):
        if (a, b) not in d.edges:
            continue
        mat, rows_ok, cols_ok = _pair_weights(d, a, b)
        out_i, in_i = np.nonzero((mat > 0) & rows_ok[:, None] & cols_ok[None, :])
        keep = drawn.get(a, np.zeros(mat.shape[1], dtype=bool))[in_i]
        keep &= drawn.get(b, np.zeros(mat.shape[0], dtype=bool))[out_i]
        out_i, in_i = out_i[keep], in_i[keep]
        w = mat[out_i, in_i].astype(np.float64)
        order = np.argsort(-w, kind="stable")
        out_i, in_i, w = out_i[order], in_i[order], w[order]
        total = float(w.sum())
        before = (np.cumsum(w) - w) / total if total > 0 else np.zeros(len(w))
        per_pair.append((a, b, out_i, in_i, w, before, total))
    before_all = np.concatenate([x[5] for x in per_pair]) if per_pair else np.zeros(0)
    n_all = len(before_all)
    # Over the cap, keep edges by their pair's share before them: every pair reaches the same
    # level (ties by pair, then strength).
    keep_all = np.argsort(before_all, kind="stable")[:max_edges]
    kept_mask = np.zeros(n_all, dtype=bool)
    kept_mask[keep_all] = True
    names = ("x0", "y0", "x1", "y1", "weight", "before", "pair", "src", "dst")
    cols: dict[str, list] = {k: [] for k in names}
    pairs, start, held = [], 0, []
    for a, b, out_i, in_i, w, before, total in per_pair:
        mask = kept_mask[start : start + len(w)]
        start += len(w)
        pairs.append(f"{a}→{b}")
        held.append(
            (
                f"{a}→{b}",
                int(mask.sum()),
                len(w),
                100 * float(w[mask].sum()) / total if total > 0 else 100.0,
            )
        )
        for o, n, wt, bf in zip(out_i[mask], in_i[mask], w[mask], before[mask], strict=True):
            x0, y0 = slot[(a, int(n))]
            x1, y1 = slot[(b, int(o))]
            cols["x0"].append(x0)
            cols["y0"].append(y0)
            cols["x1"].append(x1)
            cols["y1"].append(y1)
            cols["weight"].append(float(wt))
            cols["before"].append(float(bf))
            cols["pair"].append(len(pairs) - 1)
            cols["src"].append(row_of[(a, int(n))])
            cols["dst"].append(row_of[(b, int(o))])
    w = np.array(cols["weight"])
    # Width and opacity by the edge's log weight relative to its pair's strongest edge.
    top = np.array([per_pair[k][4][0] if len(per_pair[k][4]) else 1.0 for k in cols["pair"]])
    logw = np.log10(np.maximum(w, 1e-300)) - np.log10(np.maximum(top, 1e-300))
    t = np.clip(1 + logw / 6, 0, 1) if len(w) else np.zeros(0)
    out = {k: np.array(v, dtype=float) for k, v in cols.items()}
    for k in ("pair", "src", "dst"):
        out[k] = np.array(cols[k], dtype=np.int32)
    out["lw"] = 0.3 + 2.7 * t
    out["alpha"] = 0.08 + 0.72 * t
    if len(keep_all) < n_all:
        level = min(h for *_, h in held)
        lines = "; ".join(f"{name}: {k} of {n} ({h:.1f}% of its weight)" for name, k, n, h in held)
        note = (
            f"<b>Capped</b> at interpret.max_edges = {max_edges}: the page holds {len(keep_all)} "
            f"of {n_all} non-constant edges, the strongest of each layer pair up to the same "
            f"share of its weight ({lines}). Above {level:.1f}% the slider draws no more edges "
            "in the pairs that reach the cap."
        )
    else:
        note = f"All {n_all} non-constant edges with positive weight are on the page."
    return out, note, pairs, [x[6] for x in per_pair]


def _legend(ranked, colour, labels, modules, empty) -> str:
    if modules is None:
        text = "<p><b>No modules</b> for this method: nodes are ordered by importance only.</p>"
    elif not ranked:
        text = "<p>No module of two or more nodes: every node is a singleton (grey).</p>"
    else:
        sizes: dict[int, int] = {}
        for node in modules["nodes"]:
            sizes[node["cluster"]] = sizes.get(node["cluster"], 0) + 1
        items = "".join(
            f"<span style='margin-right:12px;white-space:nowrap'>"
            f"<span style='display:inline-block;width:11px;height:11px;background:{colour[c]}'>"
            f"</span> module {c}{' · ' + labels[c] if c in labels else ''} ({sizes[c]} nodes)"
            "</span> "
            for c in ranked
        )
        text = f"<p><b>modules</b> (grey: singletons): {items}</p>"
    if empty:
        text += (
            f"<p style='color:#a00'><b>Layer(s) {html.escape(', '.join(empty))} kept no "
            "features</b>: nothing to draw there.</p>"
        )
    return text


def _headline_method(method: str, d: MethodData) -> str:
    kept = ", ".join(f"{lay}: {b.C.shape[1]}" for lay, b in d.bases.items())
    pairs = []
    for a, b in d.edges:
        mat, rows_ok, cols_ok = _pair_weights(d, a, b)
        w = mat[rows_ok][:, cols_ok].ravel()
        pairs.append(f"{a}→{b}: {edge_mass_prefix(w, 0.9)} / {edge_mass_prefix(w, 0.99)}")
    mod = (
        f"modularity Q = {d.modules['modularity']:.3f} (weighted Newman modularity at γ = 1) of "
        "the modules drawn here: modules.json (rule cluster_graph, Leiden at "
        f"γ = {d.modules['resolution']:g}, {d.modules.get('edge_norm', 'log')} edge norm, ε from "
        "the cluster settings), "
        f"{d.modules['n_non_singleton']} modules of two or more nodes. The modules per resolution "
        "(modules_by_resolution.json, ε from the edge ablation, as in the paper) are another "
        "clustering with its own Q."
        if d.modules
        else "no modules"
    )
    direct = list(d.features.attrs.get("direct_effect_layers", []))
    direct_text = (
        f"direct effect on the outputs (cards) for the layers feeding the logits linearly: "
        f"{', '.join(direct)}"
        if direct
        else "no layer feeds the logits linearly: no direct effects"
    )
    return (
        f"<p><b>{method.upper()}</b>: features kept (constant included) {html.escape(kept)}<br>"
        "non-constant edges (constant features left out) holding 90% / 99% of each layer "
        f"pair's weight: {html.escape('; '.join(pairs))}<br>"
        f"{html.escape(mod)}<br>{html.escape(direct_text)}</p>"
    )


def headline_html(summary: Mapping | None, evaluation: Mapping | None) -> str:
    """Experiment-wide numbers: accuracy and the ablation results where evaluated."""
    parts = []
    if summary and summary.get("test_accuracy") is not None:
        parts.append(f"model test accuracy {summary['test_accuracy']:.4f}")
    if not evaluation:
        parts.append("ablations not evaluated (evaluate.enabled is false)")
        return "<p>" + "; ".join(parts) + "</p>"
    for m, r in evaluation.get("edge_ablation", {}).items():
        need = ", ".join(
            f"{p.replace('__', '→')}: {v['n_edges_required']}" for p, v in r["pairs"].items()
        )
        parts.append(f"{m.upper()} edges needed (score within {r['delta']:g}): {need}")
    for m, r in evaluation.get("node_ablation", {}).items():
        parts.append(f"{m.upper()} unablated {r['metric']} {r['base_score']:.4f}")
    return "<p>" + "<br>".join(html.escape(p) for p in parts) + "</p>"


def _thumbnail_css(thumbnails: Mapping[int, str]) -> str:
    """One CSS class per input image, so that cards sharing an example share its bytes."""
    return "".join(f".im{s}{{background-image:url({uri})}}\n" for s, uri in thumbnails.items())
