"""Benchmark: keeping the activations (``extract.store_activations: true``) against recomputing
them (``false``) on GPT-2 small's shape, per 1024-token chunk: disk and time.

A random-weight GPT-2 small (``bench_lm_shapes``' model: 12 layers, d_model 768, 12 heads,
``gelu_new``, random biases and LayerNorm affines, seed 0) is saved with ``save_pretrained`` and
loaded as the stages load it (``network.load_model``, float64, the 75 default node layers of
``config/gpt2.yaml``). On ``--chunks`` random 1024-token chunks, one chunk a batch:

- **store**: what extraction adds per chunk when it keeps the activations: the forward pass
  (``SectionedModel.activations``, which extraction runs in both settings for the statistics)
  and the writing of every node layer's activations with the project's storage module
  (``storage.activation_writer``, ``append``; the store is sealed at the end, its time shared
  by the chunks), and the bytes on disk per chunk;
- **no store**: what the basis and edge stages pay instead. Each reads a layer's batches from
  ``lib.fit.batches_from_model``, whose ``_ForwardBatches`` runs the embedding and the sections
  up to that layer, once per layer and pass (LIB's M′: the 74 input layers; the edges: the same
  74, once per method). The sections are timed one by one in that order (``embed`` and
  ``sections[:depth]``, as ``_ForwardBatches`` runs them), and one pass's recomputation is
  ``Σ_l (embed + Σ_{s<l} section_s)`` over the 74 layers; the deepest layer is also timed
  through ``batches_from_model`` itself, as a check of the sum.

Both are set against the Jacobian work per chunk of ``config/gpt2.yaml`` (LIB's M′ and the
edges of LIB and PCA; bases as wide as the layers), whose FLOP come from
``resources.stage_flops_per_sample`` (the closed forms' matrix products, checked against
``bench_lm_shapes.py``'s counts) at ``resources.CPU_FLOPS_PER_THREAD`` (the rate
``bench_lm_shapes.py`` measured on one thread). Every time is the median over ``--repeats``;
the load average is recorded before and after (a shared machine: times are upper bounds).
``--vocab`` shrinks the vocabulary (only the embedding depends on it here: the node layers
stop at ``unembed``). Output: a markdown table (``docs/performance.md``) and ``--json``.

Usage: ``python benchmarks/bench_store.py [--chunks 2] [--repeats 3] [--threads 1]
[--vocab V] [--json out.json]``.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
N_CTX = 1024


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _store(net, tokens, path: Path) -> dict:
    """One storing pass: per chunk the forward and the append; the seal; bytes on disk."""
    import torch

    from interaction_basis import storage

    forward, write = [], []
    t_open = time.perf_counter()
    with storage.activation_writer(path, {"bench": "store"}, chunk_samples=1) as store:
        opened = time.perf_counter() - t_open
        for i in range(len(tokens)):
            t0 = time.perf_counter()
            with torch.no_grad():
                acts = net.activations(tokens[i : i + 1])
            t1 = time.perf_counter()
            store.append({layer: x.cpu() for layer, x in acts.items()})
            forward.append(t1 - t0)
            write.append(time.perf_counter() - t1)
            del acts
        t_seal = time.perf_counter()
    sealed = time.perf_counter() - t_seal + opened
    return dict(forward=forward, write=write, seal=sealed, bytes=_folder_bytes(path))


def _sections(net, tokens) -> list[list[float]]:
    """Per chunk: the embedding's and every section's forward time, in forward order."""
    import torch

    out = []
    for i in range(len(tokens)):
        with torch.no_grad():
            t0 = time.perf_counter()
            x = net.embed(tokens[i : i + 1])
            times = [time.perf_counter() - t0]
            for section in net.sections:
                t0 = time.perf_counter()
                x = section(x)
                times.append(time.perf_counter() - t0)
        out.append(times)
    return out


def _deepest(net, tokens) -> list[float]:
    """``batches_from_model`` for the deepest input layer, per chunk (the check of the sum)."""
    from interaction_basis.lib.fit import batches_from_model

    layer = net.node_layers[-2]
    out = []
    for i in range(len(tokens)):
        t0 = time.perf_counter()
        for _ in batches_from_model(net, tokens, 1, i, i + 1)(layer):
            pass
        out.append(time.perf_counter() - t0)
    return out


def _jacobian_flops(shape) -> dict:
    """FLOP per chunk of config/gpt2.yaml's M′ (LIB) and edges (per method)."""
    import yaml

    from interaction_basis import resources as r
    from interaction_basis.config import validate_config

    exp = validate_config(yaml.safe_load((REPO / "config" / "gpt2.yaml").read_text()))
    e = exp.experiments[0]
    plan = r.Plan(
        shape=shape, node_layers=tuple(e.extract.node_layers or r.default_node_layers(shape)),
        dtype=e.extract.dtype, batch_size=e.extract.batch_size, n_ctx=e.model.text.n_ctx,
        n_samples=e.model.text.n_samples, n_stats_samples=e.model.text.n_stats_samples,
        n_shards=1, store_activations=True, lib="lib" in e.basis.methods,
        n_methods=len(e.basis.methods), m_dash_pos=e.basis.sources.n_pos,
        m_dash_hidden=e.basis.sources.n_hidden, edges_pos=e.edges.n_sources_pos,
    )  # fmt: skip
    return dict(
        m_dash=r.stage_flops_per_sample(plan, "m_dash"),
        edges=r.stage_flops_per_sample(plan, "edges"),
        n_methods=plan.n_methods,
        forward=r.stage_flops_per_sample(plan, "extract"),
        rate=r.CPU_FLOPS_PER_THREAD,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2, help="1024-token chunks (2-3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vocab", type=int, help="a smaller vocabulary (quick checks)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_lm_shapes

    from interaction_basis import resources as r
    from interaction_basis.config import ModelConfig
    from interaction_basis.kinds import network

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        hf = bench_lm_shapes._random_model("gpt2", args.vocab)
        hf.save_pretrained(work / "model")
        shape = r.shape_from_config(hf.config.to_dict())
        del hf
        cfg = ModelConfig.model_validate({"kind": "hf", "hub": {"source": str(work / "model")}})
        net = network.load_model(cfg, str(work / "model"), None, "float64")
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, shape.vocab_size, (args.chunks, N_CTX), generator=gen)
        stores, sections, deepest = [], [], []
        for rep in range(args.repeats):
            path = work / f"acts{rep}.zarr"
            stores.append(_store(net, tokens, path))
            shutil.rmtree(path)
            sections.append(_sections(net, tokens))
            deepest.append(_deepest(net, tokens))
            print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]

    med = statistics.median
    n = args.chunks
    forward = med(t for s in stores for t in s["forward"])
    write = med(t for s in stores for t in s["write"]) + med(s["seal"] for s in stores) / n
    disk = med(s["bytes"] for s in stores) / n
    # per section: the median over repeats and chunks
    per_section = [
        med(rep[c][j] for rep in sections for c in range(n)) for j in range(len(sections[0][0]))
    ]
    embed, steps = per_section[0], per_section[1:]
    n_layers = len(net.node_layers) - 1  # input layers of the pairs: M′ and edges read these
    reach = [embed + sum(steps[:depth]) for depth in range(n_layers)]
    one_pass = sum(reach)
    full = embed + sum(steps)
    check = med(t for rep in deepest for t in rep)
    jac = _jacobian_flops(shape)
    passes = 1 + jac["n_methods"]  # LIB's M′, then the edges of every method
    jac_flops = jac["m_dash"] + jac["n_methods"] * jac["edges"]
    jac_seconds = jac_flops / jac["rate"]
    result = dict(
        chunks=n, repeats=args.repeats, threads=args.threads, vocab=shape.vocab_size,
        n_node_layers=len(net.node_layers), forward_seconds=forward, write_seconds=write,
        disk_bytes_per_chunk=disk, section_seconds=per_section, forward_sum_seconds=full,
        deepest_layer_seconds=check, recompute_pass_seconds=one_pass, passes=passes,
        recompute_seconds=passes * one_pass, jacobian=jac, jacobian_seconds=jac_seconds,
        load_average_before=load_before, load_average_after=load_after,
    )  # fmt: skip
    store_total = write  # the forward runs in both settings (the statistics)
    nostore_total = passes * one_pass
    print(
        f"\nGPT-2 small shape, random weights, float64, {N_CTX} tokens a chunk, one chunk a "
        f"batch, {args.threads} thread(s), vocabulary {shape.vocab_size}, median of "
        f"{args.repeats} × {n} chunks; load average {load_before:.2f} before, "
        f"{load_after:.2f} after\n"
    )
    print("| per 1024-token chunk | seconds | disk | share of the Jacobian work |")
    print("|---|---|---|---|")
    print(f"| extraction's forward pass (both settings) | {forward:.1f} | – | "
          f"{forward / jac_seconds:.1%} |")  # fmt: skip
    print(f"| store: writing the {len(net.node_layers)} layers' activations | {write:.1f} | "
          f"{disk / 1e9:.3f} GB | {store_total / jac_seconds:.1%} |")  # fmt: skip
    print(f"| no store: one pass's recomputation (74 layers, Σ forward to each) | "
          f"{one_pass:.0f} | 0 | {one_pass / jac_seconds:.1%} |")  # fmt: skip
    print(f"| no store: the {passes} passes (LIB's M′, edges of LIB and PCA) | "
          f"{nostore_total:.0f} | 0 | {nostore_total / jac_seconds:.1%} |")  # fmt: skip
    print(f"| Jacobian work (M′ {jac['m_dash'] / 1e12:.1f} + {jac['n_methods']} × edges "
          f"{jac['edges'] / 1e12:.1f} TFLOP at {jac['rate'] / 1e9:.0f} GFLOP/s) | "
          f"{jac_seconds:.0f} | – | 100% |")  # fmt: skip
    print(f"\nCheck: the forward up to the deepest layer through batches_from_model took "
          f"{check:.1f} s, the sum of the sections {full - steps[-1]:.1f} s.")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
