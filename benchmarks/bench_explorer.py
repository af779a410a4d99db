"""How long the explorer stage (``build_explorer``) takes to build a GPT-2-small-shaped page.

    python benchmarks/bench_explorer.py --dir /tmp/bench_explorer --repeats 3
    python benchmarks/bench_explorer.py --dir /tmp/bench_explorer --baseline 222b54c --same

The first run writes a synthetic evidence store of ``config/gpt2.yaml``'s shape into ``--dir``
with the storage module's own writers (no model is run): for LIB and PCA, the 75 node layers of
GPT-2 small at their full widths (``resources.node_layer_width``: 769 to 1538 features, 152,000
cards over both methods), random orthonormal bases, edges between adjacent layers, a
clustering (``--modules`` modules of two or more nodes per method, a third of the nodes
singletons) and features.zarr from ``interpret.features.compute_activation_evidence`` on random
activations of the config's held-out split (10 chunks of ``n_ctx`` 32 tokens, the defaults'
top-20 examples, ±8-token windows, 7 quantiles), with token texts, direct effects for the
residual-stream layers and the config's ``page_examples``. Later runs reuse the store.

Each build runs the stage function in a fresh process (``--repeats`` times, interleaved with
the baseline's), and the script reports the median wall time of the builds and the largest
peak RSS of those processes. ``--baseline REV``: the same builds with the explorer's module and
stage (``interpret/explorer.py``, ``stages/explorer.py``) as they were at git revision REV;
``--same`` also checks that both write byte-identical explorer folders. ``--layers N``: only
the first N node layers (a smaller page; the smoke test uses a tiny ``--width``).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
METHODS = ("lib", "pca")
N_SAMPLES, N_CTX = 10, 32  # config/gpt2.yaml: n_eval_samples held-out chunks, n_ctx as in the test
VOCAB = 50257


def node_layers(n_layers: int | None, width: int | None) -> dict[str, int]:
    """GPT-2 small's 75 node layers and their widths (``width``: every layer that wide)."""
    from interaction_basis.resources import ModelShape, default_node_layers, node_layer_width

    shape = ModelShape(n_layers=12, d_model=768, d_mlp=3072, n_heads=12, vocab_size=VOCAB)
    names = default_node_layers(shape)[:n_layers]
    return {n: width or node_layer_width(n, shape) for n in names}


def make_stores(folder: Path, widths: dict[str, int], n_modules: int) -> dict[str, list[str]]:
    """The explorer stage's inputs for LIB and PCA, written once (``done.json`` marks a
    complete set; the modules are redone when ``n_modules`` changes), and the stage's path
    arguments."""
    paths = {
        "basis": [str(folder / m / "basis.zarr") for m in METHODS],
        "edges": [str(folder / m / "edges.zarr") for m in METHODS],
        "modules": [str(folder / m / "modules.json") for m in METHODS],
        "features": [str(folder / m / "features.zarr") for m in METHODS],
    }
    done = folder / "done.json"
    if done.exists() and json.loads(done.read_text()).get("widths") == widths:
        make_modules(folder, widths, n_modules)
        return paths
    import numpy as np
    import torch

    from interaction_basis import storage
    from interaction_basis.interpret.features import compute_activation_evidence
    from interaction_basis.lib.records import Basis

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    layers = list(widths)
    # Token texts like a BPE vocabulary's: short words, most with a leading space.
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(
        [
            (" " if rng.random() < 0.7 else "") + "".join(rng.choice(letters, rng.integers(1, 9)))
            for _ in range(VOCAB)
        ]
        + [""]
    )
    tokens = torch.randint(0, VOCAB, (N_SAMPLES, N_CTX))
    # Residual-stream layers get direct effects through the final LayerNorm; the unembedding's
    # input feeds the logits linearly.
    residual = [n for n in layers if n.split(".")[0] in ("ln1", "ln2", "ln_final")]
    exact = [n for n in layers if n == "unembed"]
    for k, method in enumerate(METHODS):
        t0 = time.perf_counter()
        (folder / method).mkdir(parents=True, exist_ok=True)
        bases = {}
        for layer, n in widths.items():
            c = torch.linalg.qr(torch.randn(n + 1, n, dtype=torch.float64))[0]
            imp = torch.sort(torch.rand(n, dtype=torch.float64), descending=True)[0]
            bases[layer] = Basis(c, c.T.clone(), imp, 1)
        storage.write_bases(paths["basis"][k], bases, {}, method, {"config_sha256": method})
        edges = {
            (a, b): torch.from_numpy(rng.random((widths[b], widths[a])) ** 8)
            for a, b in zip(layers, layers[1:])
        }
        storage.write_edges(paths["edges"][k], edges, {})
        del edges
        x = {
            layer: torch.randn(N_SAMPLES, N_CTX, n + 1, dtype=torch.float64)
            for layer, n in widths.items()
        }
        ev = compute_activation_evidence(
            lambda batch, x=x: x,  # one batch: all held-out samples
            tokens,
            bases,
            batch_size=N_SAMPLES,
            top_k=20,
            n_quantile_rows=20000,
            quantiles=[0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99],
            window=8,
        )
        del x
        for layer, b in bases.items():
            v = ev[layer]
            n = b.C.shape[1]
            v["importance"] = (("feature",), b.importance.numpy())
            v["is_constant"] = (("feature",), np.arange(n) == 0)
            for key in list(v):
                if key.endswith("window_token"):
                    dims, ids = v[key]
                    v[key.replace("token", "text")] = (dims, words[ids])
            if layer in residual or layer in exact:
                dims = ("direct_rank", "feature")
                for key, sign in (("promoted", 1), ("suppressed", -1)):
                    v[f"{key}_value"] = (dims, sign * np.sort(rng.random((10, n)), 0)[::-1])
                    ids = rng.integers(0, VOCAB, (10, n))
                    v[f"{key}_output"] = (dims, ids)
                    v[f"{key}_label"] = (dims, words[ids])
            if layer in residual:
                v["direct_variance"] = (("feature",), rng.random(n) + 0.5)
        storage.write_features(
            paths["features"][k],
            ev,
            {
                "basis_config_sha256": method,
                "method": method,
                "direct_effect_layers": exact + residual,
                "direct_effect_linearised": residual,
            },
        )
        print(f"{method} stores: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    make_modules(folder, widths, n_modules)
    done.write_text(json.dumps({"widths": widths}))
    return paths


def make_modules(folder: Path, widths: dict[str, int], n_modules: int) -> None:
    """Each method's modules.json: ``n_modules`` modules, each over a run of 2-8 adjacent
    layers (as the induction LM's and GPT-2's are local), a third of the nodes singletons."""
    import numpy as np

    from interaction_basis import storage

    done = folder / "modules_done.json"
    if done.exists() and json.loads(done.read_text()) == n_modules:
        return
    rng = np.random.default_rng(1)
    layers = list(widths)
    for method in METHODS:
        start = rng.integers(-4, len(layers), n_modules)
        stop = start + rng.integers(2, 9, n_modules)
        nodes, next_id = [], n_modules
        for k, (layer, n) in enumerate(widths.items()):
            here = np.flatnonzero((start <= k) & (k < stop))
            for i in range(n):
                if rng.random() < 1 / 3 or not here.size:  # a singleton: a cluster of its own
                    c, next_id = next_id, next_id + 1
                else:
                    c = int(rng.choice(here))
                nodes.append({"layer": layer, "index": i, "cluster": c})
        sizes = np.bincount([node["cluster"] for node in nodes])
        storage.write_json(
            folder / method / "modules.json",
            {
                "layers": layers,
                "modularity": 0.1,
                "resolution": 1.0,
                "n_non_singleton": int((sizes > 1).sum()),
                "nodes": nodes,
                "clusters": [{"id": c} for c in range(next_id)],
            },
        )
    done.write_text(json.dumps(n_modules))


def use_revision(rev: str) -> None:
    """Import the explorer's module and stage as they were at git revision ``rev``."""
    import interaction_basis.interpret
    import interaction_basis.stages  # noqa: F401  (the packages the modules go into)

    for name, rel in (
        ("interaction_basis.interpret.explorer", "src/interaction_basis/interpret/explorer.py"),
        ("interaction_basis.stages.explorer", "src/interaction_basis/stages/explorer.py"),
    ):
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{rel}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        module = types.ModuleType(name)
        module.__file__ = str(REPO / rel)
        module.__package__ = name.rpartition(".")[0]
        sys.modules[name] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)


def child(args) -> None:
    """One build in this process: its time and this process's peak RSS, as JSON on stdout."""
    if args.impl != "current":
        use_revision(args.impl)
    from interaction_basis.config import InterpretConfig, ModelConfig
    from interaction_basis.stages.explorer import build_explorer

    paths = json.loads(args.paths)
    model = ModelConfig.model_validate(
        {"kind": "hf", "hub": {"source": "openai-community/gpt2"}, "text": {"source": "x"}}
    )
    t0 = time.perf_counter()
    build_explorer(
        experiment="gpt2_shaped",
        model=model,
        interpret=InterpretConfig.model_validate({}),  # the config's: defaults
        methods=list(METHODS),
        summary=None,
        evaluation=None,
        heads=None,
        explorer=args.out + "/explorer",
        link=args.out + "/explorer.html",
        **paths,
    )
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    files = sorted(p for p in Path(args.out, "explorer").rglob("*") if p.is_file())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mib": peak,
                "n_files": len(files),
                "mb": sum(p.stat().st_size for p in files) / 1e6,
            }
        )
    )


def build_once(impl: str, paths: dict, out: Path, profile: str | None) -> dict:
    cmd = [sys.executable, str(HERE), "--child", impl, "--paths", json.dumps(paths)]
    cmd += ["--out", str(out)]
    if profile:
        cmd = ["py-spy", "record", "-r", "50", "-o", profile, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{impl} build failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_folders(a: Path, b: Path) -> list[str]:
    """The files that differ between two explorer folders (missing on one side included)."""
    fa = {p.relative_to(a): p for p in a.rglob("*") if p.is_file()}
    fb = {p.relative_to(b): p for p in b.rglob("*") if p.is_file()}
    return sorted(
        str(k)
        for k in fa.keys() | fb.keys()
        if k not in fa or k not in fb or fa[k].read_bytes() != fb[k].read_bytes()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir(), "bench_explorer"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", help="a git revision to time beside the current code")
    parser.add_argument("--baseline-repeats", type=int, help="default: --repeats")
    parser.add_argument("--same", action="store_true", help="check both write the same files")
    parser.add_argument("--layers", type=int, help="only the first N node layers")
    parser.add_argument("--width", type=int, help="every layer this wide (smoke tests)")
    parser.add_argument("--modules", type=int, default=300, help="modules per method")
    parser.add_argument("--profile", help="py-spy flame graph of the first current build")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.impl = args.child
        child(args)
        return
    widths = node_layers(args.layers, args.width)
    paths = make_stores(args.dir, widths, args.modules)
    impls = ["current"] + ([args.baseline] if args.baseline else [])
    runs: dict[str, list[dict]] = {impl: [] for impl in impls}
    load = {"before": os.getloadavg()}
    n_base = args.baseline_repeats if args.baseline_repeats is not None else args.repeats
    for k in range(max(args.repeats, n_base)):
        for impl in impls:
            if k >= (args.repeats if impl == "current" else n_base):
                continue
            out = args.dir / "out" / impl.replace("/", "_")
            profile = args.profile if impl == "current" and k == 0 else None
            runs[impl].append(build_once(impl, paths, out, profile))
            print(impl, json.dumps(runs[impl][-1]), file=sys.stderr)
    load["after"] = os.getloadavg()
    result = {
        "layers": len(widths),
        "cards": 2 * sum(widths.values()),
        "load_average": load,
        "results": {
            impl: {
                "median_s": statistics.median(r["seconds"] for r in rs),
                "all_s": [round(r["seconds"], 2) for r in rs],
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
                "files": rs[0]["n_files"],
                "mb": rs[0]["mb"],
            }
            for impl, rs in runs.items()
            if rs
        },
    }
    if args.same and args.baseline:
        out = args.dir / "out"
        result["differing_files"] = same_folders(
            out / "current" / "explorer", out / args.baseline.replace("/", "_") / "explorer"
        )
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
