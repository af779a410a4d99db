"""How fast an explorer page opens and shows a card, and how much it loads, in headless Chromium.

    python benchmarks/bench_explorer_page.py results/induction_lm/explorer/index.html [more ...]
    python benchmarks/bench_explorer_page.py --synthetic gpt2 /tmp/gpt2_shaped

For each page, ``--repeats`` fresh loads (a new browser context each, the network off): the
median time from navigation to the graph's nodes drawn and the page's script ready ("open"),
the bytes the page loads when it opens (every file:// response until the page's script says
its cards are ready: the page, and the card files a small page loads at once), the median
time to show the card of a feature in a layer not opened before (its layer's card file loaded
and inflated, the card drawn and painted), and the JavaScript heap after that card (after a
garbage collection, through the DevTools protocol). ``--synthetic gpt2 FOLDER`` first writes
a page of GPT-2-small's shape (12 residual layers × 768 features, LIB and PCA, random bases,
edges, modules and feature evidence in the formats the explorer stage reads, a 50257-token
vocabulary) with ``build_page``; the pipeline itself is not run (``induction``: the shape of
``config/induction_lm.yaml``); the page and its card files are written to FOLDER/explorer/.
Chromium: ``IB_CHROMIUM`` or
the first of chromium, chromium-browser, google-chrome on the PATH.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

READY = (
    "() => window.Bokeh && Bokeh.documents.length && window.ib"
    " && Bokeh.documents[0].get_model_by_name('nodes').data.layer.length > 0"
)
# What the page loads at open includes the card files a small page loads right away.
CARDS_READY = "() => !('cardsReady' in window.ib) || window.ib.cardsReady"
SHOW_CARD = """async (k) => {
  const nd = window.ib.store()[0].data;
  const layers = [...new Set(nd.layer)];
  const layer = layers[Math.min(k, layers.length - 1)];
  const row = nd.layer.findIndex((l, i) => l === layer && nd.index[i] === 1);
  const card = Bokeh.documents[0].get_model_by_name('card');
  const t0 = performance.now();
  // Pages before the per-layer cards (issue 25) had every card ready in the page.
  if (window.ib.layerCards) await window.ib.layerCards(window.ib.method, layer);
  window.location.hash = 'm=' + window.ib.method + '&sel=' + nd.key[row];
  window.ib.readHash();
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const ok = card.text.includes('feature 1');
  return [performance.now() - t0, ok, layer];
}"""


def chromium() -> str:
    path = os.environ.get("IB_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    if path is None:
        sys.exit("no Chromium found: install it (apt-get install chromium) or set IB_CHROMIUM")
    return path


def measure(browser, page_path: Path, repeats: int) -> dict:
    opens, cards, loaded, heap, n_files = [], [], [], [], []
    for k in range(repeats):
        context = browser.new_context(offline=True, viewport={"width": 1500, "height": 1000})
        urls: list[str] = []
        page = context.new_page()
        page.on("response", lambda r, urls=urls: urls.append(r.url))
        t0 = time.perf_counter()
        page.goto(page_path.resolve().as_uri())
        page.wait_for_function(READY, timeout=120_000)
        opens.append(time.perf_counter() - t0)
        page.wait_for_function(CARDS_READY, timeout=120_000)
        # Only file:// can answer offline; Chromium drops large bodies from its inspector
        # cache, so the sizes are read from the files.
        loaded.append(sum(Path(unquote(urlparse(u).path)).stat().st_size for u in set(urls)))
        n_files.append(len(set(urls)))
        ms, ok, _ = page.evaluate(SHOW_CARD, 1 + k)
        if not ok:
            raise RuntimeError(f"{page_path}: the card did not show")
        cards.append(ms / 1000)
        cdp = context.new_cdp_session(page)
        cdp.send("HeapProfiler.collectGarbage")
        heap.append(cdp.send("Runtime.getHeapUsage")["usedSize"])
        context.close()
    side = [p for p in page_path.parent.rglob("*.js")]
    return {
        "page": str(page_path),
        "page_mb": page_path.stat().st_size / 1e6,
        "card_files_mb": sum(p.stat().st_size for p in side) / 1e6,
        "loaded_at_open_mb": max(loaded) / 1e6,
        "files_at_open": max(n_files),
        "open_s_median": statistics.median(opens),
        "open_s_all": [round(x, 3) for x in opens],
        "card_s_median": statistics.median(cards),
        "card_s_all": [round(x, 3) for x in cards],
        "heap_mb_max": max(heap) / 1e6,
    }


SHAPES = {
    # GPT-2 small: 12 residual layers of 768 (and the constant), 50257 tokens, a few samples.
    "gpt2": dict(n_layers=12, n_features=768, vocab=50257, n_samples=16, n_pos=64),
    # config/induction_lm.yaml: 5 residual node layers of 128 (and the constant), 256 words,
    # 32 held-out chunks of 48 tokens.
    "induction": dict(n_layers=5, n_features=129, vocab=256, n_samples=32, n_pos=48),
}


def synthetic_page(
    folder: Path,
    name: str,
    n_layers: int,
    n_features: int,
    vocab: int,
    n_samples: int,
    n_pos: int,
) -> Path:
    """A language-model page of the given shape from random inputs in the explorer's
    formats (bases, edges, modules, features.zarr with LM token windows and direct effects)."""
    import numpy as np
    import torch

    from interaction_basis import storage
    from interaction_basis.interpret.explorer import PAGE_INDEX, MethodData, build_page
    from interaction_basis.interpret.features import compute_activation_evidence
    from interaction_basis.lib.records import Basis

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    layers = [f"resid_pre.{k}" for k in range(n_layers)]
    d = n_features + 1
    data = {}
    for method in ("lib", "pca"):
        bases = {}
        for layer in layers:
            c = torch.linalg.qr(torch.randn(d, n_features, dtype=torch.float64))[0]
            imp = torch.sort(torch.rand(n_features, dtype=torch.float64), descending=True)[0]
            bases[layer] = Basis(c, c.T.clone(), imp, 1)
        x = torch.randn(n_samples, n_pos, d, dtype=torch.float64)
        tokens = torch.randint(0, vocab, (n_samples, n_pos))
        at = [0]  # batches come in order: the activations of the next len(batch) samples

        def acts(batch, x=x, names=tuple(bases), at=at):
            got = x[at[0] : at[0] + len(batch)]
            at[0] += len(batch)
            return dict.fromkeys(names, got)

        ev = compute_activation_evidence(
            acts,
            tokens,
            bases,
            batch_size=8,
            top_k=20,
            n_quantile_rows=1024,
            quantiles=[0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99],
            window=8,
        )
        words = np.array([f"tok{t}" for t in range(vocab)] + [""])
        for layer, b in bases.items():
            v = ev[layer]
            v["is_constant"] = (("feature",), np.arange(n_features) == 0)
            v["importance"] = (("feature",), b.importance.numpy())
            for key in list(v):
                if key.endswith("window_token"):
                    dims, ids = v[key]
                    v[key.replace("token", "text")] = (dims, words[ids])
            dims = ("direct_rank", "feature")
            for key in ("promoted", "suppressed"):
                sign = 1 if key == "promoted" else -1
                v[f"{key}_value"] = (dims, sign * np.sort(rng.random((10, n_features)), 0)[::-1])
                ids = rng.integers(0, vocab, (10, n_features))
                v[f"{key}_output"] = (dims, ids)
                v[f"{key}_label"] = (dims, words[ids])
            v["direct_variance"] = (("feature",), rng.random(n_features) + 0.5)
        path = folder / f"{method}_features.zarr"
        storage.write_features(
            path,
            ev,
            {
                "basis_config_sha256": "x",
                "method": method,
                "direct_effect_layers": layers,
                "direct_effect_linearised": layers,
            },
        )
        feats = storage.read_features(path)
        edges = {
            (a, b): torch.from_numpy(rng.random((n_features, n_features)) ** 8)
            for a, b in zip(layers, layers[1:])
        }
        nodes = [
            {"layer": layer, "index": i, "cluster": int(rng.integers(0, 40))}
            for layer in layers
            for i in range(n_features)
        ]
        modules = {
            "layers": layers,
            "modularity": 0.1,
            "resolution": 1.0,
            "n_non_singleton": 40,
            "nodes": nodes,
            "clusters": [{"id": c} for c in range(40)],
        }
        data[method] = MethodData(bases, edges, modules, feats)
    t0 = time.perf_counter()
    page = build_page(
        f"{name}_shaped", data, summary=None, evaluation=None, max_edges=5000, page_examples=8
    )
    print(f"build_page: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    storage.write_folder(folder / "explorer", page.files())
    return folder / "explorer" / PAGE_INDEX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path)
    parser.add_argument(
        "--synthetic",
        nargs=2,
        action="append",
        default=[],
        metavar=("SHAPE", "FOLDER"),
        help=f"build a random page of a shape ({', '.join(SHAPES)}) in FOLDER, then measure it",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pages = list(args.pages)
    for shape, folder in args.synthetic:
        pages.append(synthetic_page(Path(folder), shape, **SHAPES[shape]))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        for page in pages:
            print(json.dumps(measure(browser, page, args.repeats)))
        browser.close()


if __name__ == "__main__":
    main()
