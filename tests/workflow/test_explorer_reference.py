"""The explorer of the paper's seed-3 mod-add model (config/modadd_reference.yaml): the three
frequency modules (36, 38, 49) are contiguous blocks, and the cards of the top LIB features of
ln2.0 name the Fourier term of their module.

The workflow runs only that experiment, evaluation off (the explorer then says so), in a tmp
--directory; the page's data are read from the Bokeh document embedded in the HTML.
"""

import html as html_module
import json
import re
from pathlib import Path

import pytest
from smk_helpers import REPO, copy_workflow, load_yaml, pythonpath_env, snakemake, write_yaml

from interaction_basis.interpret.explorer import unpack_cards

pytestmark = pytest.mark.slow

KEY_FREQUENCIES = {36, 38, 49}


def page_sources(html: str) -> dict[str, dict]:
    """Column data of every named data source in an explorer page (plain lists only)."""
    found = re.search(
        r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', html, re.S
    )
    assert found, "no Bokeh document in the page"
    out = {}

    def walk(obj):
        if isinstance(obj, dict):
            attrs = obj.get("attributes", {})
            if obj.get("name") == "ColumnDataSource" and "name" in attrs:
                out[attrs["name"]] = dict(attrs["data"]["entries"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(json.loads(html_module.unescape(found.group(1))))  # Bokeh escapes the JSON for HTML
    return out


def page_cards(folder: Path, method: str) -> dict[str, list[str]]:
    """Per layer, the cards of ``method``, from the card files the page in ``folder`` names
    (``card_files``)."""
    html = (folder / "index.html").read_text()
    found = re.search(
        r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', html, re.S
    )
    assert found, "no Bokeh document in the page"

    def plain(obj):  # Bokeh serialises a dict as {"type": "map", "entries": [[key, value]]}
        if isinstance(obj, dict):
            if obj.get("type") == "map":
                return {k: plain(v) for k, v in obj.get("entries", [])}
            return {k: plain(v) for k, v in obj.items()}
        return [plain(v) for v in obj] if isinstance(obj, list) else obj

    def texts(obj):
        if isinstance(obj, dict):
            if isinstance(obj.get(method), dict) and "cards" in obj[method]:
                yield obj[method]["cards"]
            for v in obj.values():
                yield from texts(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from texts(v)

    refs = next(texts(plain(json.loads(html_module.unescape(found.group(1))))))
    return {
        layer: unpack_cards((folder / path).read_text()) for layer, (path, _, _) in refs.items()
    }


@pytest.fixture(scope="module")
def seed3(tmp_path_factory, reference_dir):
    cfg = load_yaml(REPO / "config" / "modadd_reference.yaml")
    exp = next(e for e in cfg["experiments"] if e["name"] == "modadd_seed3")
    exp["evaluate"] = {"enabled": False}
    cfg = {**cfg, "reference_dir": str(reference_dir), "experiments": [exp]}
    workdir = tmp_path_factory.mktemp("seed3")
    workflow = copy_workflow(tmp_path_factory.mktemp("workflow")).parent
    config = write_yaml(workdir / "seed3.yaml", cfg)
    snakemake(
        "--cores",
        "2",
        "--snakefile",
        str(workflow / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        cwd=workflow,
        env=pythonpath_env(workflow),
        timeout=3600,
    )
    results = workdir / "results" / "modadd_seed3"
    return results, (results / "explorer" / "index.html").read_text()


def test_frequency_modules_are_contiguous_blocks(seed3):
    results, html = seed3
    modules = json.loads((results / "lib" / "modules.json").read_text())
    freq = {c["id"]: c["frequency"]["frequency"] for c in modules["clusters"]}
    nodes = page_sources(html)["nodes_lib"]
    shown = {freq[m] for m in nodes["module"] if m >= 0}
    assert KEY_FREQUENCIES <= shown
    for layer in modules["layers"]:
        rows = sorted(
            (-y, m)
            for y, m, lay in zip(nodes["y"], nodes["module"], nodes["layer"])
            if lay == layer
        )
        column = [m for _, m in rows]
        for m in set(column) - {-1}:
            slots = [k for k, c in enumerate(column) if c == m]
            assert slots == list(range(slots[0], slots[0] + len(slots))), (layer, m)
    for f in KEY_FREQUENCIES:
        assert f"freq {f}" in html  # the legend names the module by its frequency


def test_top_ln2_features_name_their_module_frequency(seed3):
    results, html = seed3
    modules = json.loads((results / "lib" / "modules.json").read_text())
    freq = {c["id"]: c["frequency"]["frequency"] for c in modules["clusters"]}
    module = {(n["layer"], n["index"]): n["cluster"] for n in modules["nodes"]}
    cards = page_cards(results / "explorer", "lib")["ln2.0"]
    for i in range(1, 6):  # the top five non-constant LIB features (basis order = Λ order)
        card = cards[i]
        expected = freq[module[("ln2.0", i)]]
        got = re.search(r"frequency <b>(-?\d+)</b>", card)
        assert got and int(got.group(1)) == expected, (i, expected, card[:400])
        assert re.search(r"top \d+ examples", card) and "(a, b) = (" in card
        assert "top 10 incoming edges" in card and "top 10 outgoing edges" in card
    assert "ablations not evaluated" in html
