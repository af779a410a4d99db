"""Benchmark: the cluster stages on a language model's interaction graph, leidenalg against
igraph's Leiden: time and peak memory per graph edge.

The graph is built as ``cluster_resolutions`` builds it (``build_interaction_graph`` with the
log norm) from either

- ``--edges PATH``: a run's ``edges.zarr`` and its ``edge_ablation.json`` next to it (ε per
  layer from the ablation, as the stage takes it), the first ``--pairs`` layer pairs; or
- a synthetic graph (the default): ``--layers`` node layers of ``--width`` features, edges
  ``E`` log-normal with blocks of ``--block`` features per layer planted 10x stronger, and ε
  per layer at the ``--drop`` quantile of its edges.

Each implementation runs in a fresh child process, which builds the graph (timed once) and runs
``compute_modules`` at every ``--resolutions`` γ with ``--iterations`` Leiden iterations,
``--repeats`` times; the table gives the median per γ, the peak RSS, and the peak per graph
edge above the edges' own bytes (what ``resources.cluster_memory_bytes`` charges per edge).
The load average is recorded before and after (a shared machine: times are upper bounds).

Usage: ``python benchmarks/bench_clustering.py [--edges results/gpt2/lib/edges.zarr]
[--pairs 12] [--layers 13 --width 768] [--iterations 10] [--resolutions 0.5 1]
[--repeats 3] [--json out.json]``.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mib, run_child  # noqa: E402

IMPLEMENTATIONS = ("leidenalg", "igraph")


def _synthetic(layers: int, width: int, block: int, drop: float, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    groups = np.arange(width) // block
    strong = np.where(groups[:, None] == groups[None, :], 10.0, 1.0)
    names = [f"l{i}" for i in range(layers)]
    edges, epsilon = {}, {}
    for a, b in zip(names, names[1:], strict=False):
        e = strong * rng.lognormal(0.0, 2.0, size=(width, width))
        edges[(a, b)] = e
        epsilon[a] = float(np.quantile(e[1:, 1:], drop))
    return edges, epsilon, names


def _from_store(path: str, pairs: int):
    from interaction_basis import storage

    edges = storage.read_edges(path)
    ablation = json.loads((Path(path).parent / "edge_ablation.json").read_text())
    epsilon = {p["in_layer"]: p["epsilon"] for p in ablation["pairs"].values()}
    chosen = list(edges)[:pairs]
    names = [a for a, _ in chosen] + [chosen[-1][1]]
    return {p: edges[p].numpy() for p in chosen}, epsilon, names


def _child(args) -> None:
    from interaction_basis.graph.clustering import build_interaction_graph, compute_modules

    if args.edges:
        edges, epsilon, names = _from_store(args.edges, args.pairs)
    else:
        edges, epsilon, names = _synthetic(args.layers, args.width, args.block, args.drop)
    edge_bytes = sum(e.size * 8 for e in edges.values())
    start_mib = peak_rss_mib()
    t0 = time.perf_counter()
    graph = build_interaction_graph(edges, names, edge_norm="log", epsilon=epsilon)
    build_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {}
    q: dict[str, float] = {}
    for gamma in args.resolutions:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            found = compute_modules(
                graph,
                resolution=gamma,
                seed=0,
                n_iterations=args.iterations,
                implementation=args.child,
            )
            times.setdefault(f"{gamma:g}", []).append(time.perf_counter() - t0)
            q[f"{gamma:g}"] = found.modularity
    peak = peak_rss_mib()
    print(
        json.dumps(
            {
                "implementation": args.child,
                "vertices": graph.vcount(),
                "graph_edges": graph.ecount(),
                "edge_store_mib": edge_bytes / 2**20,
                "build_s": build_s,
                "leiden_s": {g: statistics.median(t) for g, t in times.items()},
                "modularity": q,
                "peak_mib": peak,
                "bytes_per_edge": (peak - start_mib) * 2**20 / max(1, graph.ecount()),
            }
        )
    )


def _table(rows: list[dict], load: tuple[str, str], args) -> str:
    source = args.edges or f"synthetic {args.layers} x {args.width}"
    lines = [
        f"Graph: {source}; {rows[0]['vertices']:,} vertices, {rows[0]['graph_edges']:,} edges; "
        f"{args.iterations} iterations, median of {args.repeats}; load {load[0]} before, "
        f"{load[1]} after.",
        "",
        "| implementation | build s | Leiden s per γ | Q at γ = 1 | peak RSS | bytes/edge |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = ", ".join(f"γ {g}: {s:.1f}" for g, s in r["leiden_s"].items())
        mod = ", ".join(f"{v:.3f}" for v in r["modularity"].values())
        lines.append(
            f"| {r['implementation']} | {r['build_s']:.1f} | {per} | {mod} | "
            f"{r['peak_mib'] / 1024:.2f} GiB | {r['bytes_per_edge']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", help="an edges.zarr with edge_ablation.json beside it")
    p.add_argument("--pairs", type=int, default=12, help="layer pairs of --edges")
    p.add_argument("--layers", type=int, default=13, help="synthetic: node layers")
    p.add_argument("--width", type=int, default=768, help="synthetic: features per layer")
    p.add_argument("--block", type=int, default=64, help="synthetic: planted block size")
    p.add_argument("--drop", type=float, default=0.6, help="synthetic: ε quantile")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--resolutions", type=float, nargs="+", default=[0.5, 1.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS))
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    load_before = f"{os.getloadavg()[0]:.1f}"
    rows = []
    for impl in args.implementations:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", impl]
        rows.append(run_child(cmd))
    text = _table(rows, (load_before, f"{os.getloadavg()[0]:.1f}"), args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
