"""Benchmark: peak memory and throughput of the LM stages as ``n_samples`` grows.

A small GPT-2-shaped model (``transformers.GPT2Config``: 2 layers, d_model 64, 4 heads, vocab
2048, random init with seed 0) is saved to a temporary folder, with random token chunks of 64
tokens (a ``tokens.zarr`` as ``tokenize_dataset`` writes it) for ``n_samples`` = N = 32 and
``--factor``·N = 128 (the smaller set is a prefix of the larger). For each size the three stage
functions the workflow runs are called as the rules call them, with the settings of
``config/tinystories_quick.yaml`` (the residual-stream node layers, float64, relative truncation
1e-10, ``rotate_final``, one stochastic source over positions) and a fixed batch size (8):

- extract: ``stages.extract.extract_activations`` (forward passes into the Zarr store, with the
  means and Grams summed on the way);
- basis: ``stages.basis.fit_basis`` with method ``lib``;
- edges: ``stages.edges.compute_edges``.

Every (stage, size, repetition) runs in a fresh subprocess with ``stages.common.set_threads``, so
its peak RSS (``ru_maxrss``: interpreter, torch, transformers and xarray included) belongs to that
stage alone; the RSS after those imports is reported beside it, and the peak above it. Wall time
covers the stage call only (model loading and store IO included, interpreter start-up and
imports not). The table shows medians over the repetitions, tokens/s (n_samples · n_ctx over the
median wall time) and, per stage, the ratio of the peak RSS at the larger size to the smaller:
flat when within 10% (every pass streams over batches, so memory should depend on the batch
size and the model only). Below the table: the marginal throughput, (extra tokens) / (extra
seconds) between the two sizes, which leaves out the per-process fixed costs (model loading, the
Jacobian cost model's probes); the ratio of the peak *above imports*, a more sensitive view of the
same question; and how much the whole activation store of the larger run would add if a stage
held it in memory, i.e. how sensitive the 10% criterion is at this size.

The 1-minute load average before and after the run is printed: on a 2-core machine any other
job makes the 2-thread timings (not the RSS) unreliable, by up to 10x.

Usage: ``python benchmarks/bench_lm_memory.py [--n-samples 32] [--factor 4] [--reps 3]
[--threads 2] [--json out.json]``.
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

from _common import lm_configs, peak_rss_mib, run_child

STAGES = ("extract", "basis", "edges")
FLAT_TOLERANCE = 0.10
N_EVAL = 8


def _node_layers(n_layer: int) -> list[str]:
    """The quick LM config's residual-stream set: resid_pre/resid_mid per block, last resid_post."""
    layers = [
        name for block in range(n_layer) for name in (f"resid_pre.{block}", f"resid_mid.{block}")
    ]
    return layers + [f"resid_post.{n_layer - 1}"]


def _configs(args: argparse.Namespace, n_samples: int):
    """ModelConfig, ExtractConfig, BasisConfig and EdgesConfig of one run."""
    return lm_configs(
        str(Path(args.workdir) / "model"),
        _node_layers(args.n_layer),
        n_ctx=args.n_ctx,
        n_samples=n_samples,
        batch_size=args.batch_size,
        n_pos=1,
        seed=args.seed,
        n_eval_samples=N_EVAL,
    )


def _paths(args: argparse.Namespace, n_samples: int) -> dict[str, str]:
    work = Path(args.workdir)
    return {
        "model": str(work / "model"),
        "tokens": str(work / f"tokens_{n_samples}.zarr"),
        "acts": str(work / f"activations_{n_samples}.zarr"),
        "basis": str(work / f"lib_basis_{n_samples}.zarr"),
        "edges": str(work / f"lib_edges_{n_samples}.zarr"),
    }


def _prepare(args: argparse.Namespace, sizes: list[int]) -> None:
    """The model folder and one token store per size (each a prefix of the largest)."""
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from interaction_basis import storage

    torch.manual_seed(args.seed)
    cfg = GPT2Config(
        vocab_size=args.vocab,
        n_positions=args.n_ctx,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(cfg).save_pretrained(_paths(args, sizes[0])["model"])
    rng = np.random.default_rng(args.seed)
    fit = rng.integers(0, args.vocab, size=(max(sizes), args.n_ctx + 1), dtype=np.int64)
    held_out = rng.integers(0, args.vocab, size=(N_EVAL, args.n_ctx + 1), dtype=np.int64)
    for n in sizes:
        storage.write_token_chunks(
            _paths(args, n)["tokens"], {"fit": fit[:n], "eval": held_out}, {"source": "random"}
        )


def _child(args: argparse.Namespace) -> dict:
    """One stage at one size, timed; the process's peak RSS at the end."""
    import torch._dynamo  # noqa: F401  (torch.func imports it on first use: count it as start-up)

    import interaction_basis.models.hf  # noqa: F401  (transformers)
    from interaction_basis.stages import basis, common, edges, extract

    common.set_threads(args.threads)
    n = args.n_samples
    model_cfg, extract_cfg, basis_cfg, edges_cfg = _configs(args, n)
    p = _paths(args, n)
    rss_imports = peak_rss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    if args.child == "extract":
        extract.extract_activations(model_cfg, extract_cfg, p["model"], p["acts"], p["tokens"])
    elif args.child == "basis":
        basis.fit_basis(model_cfg, extract_cfg, basis_cfg, "lib", p["model"], p["acts"], p["basis"])
    else:
        edges.compute_edges(
            model_cfg, extract_cfg, edges_cfg, p["model"], p["acts"], p["basis"], p["edges"]
        )
    return dict(
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        peak_rss_mib=peak_rss_mib(),
        rss_after_imports_mib=rss_imports,
        threads=torch.get_num_threads(),
    )


def _run_child(args: argparse.Namespace, stage: str, n_samples: int) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--n-samples", str(n_samples)]
    for flag in ("workdir", "n_ctx", "batch_size", "threads", "seed", "n_layer"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return run_child(cmd)


def _store_mib(path: str) -> float:
    """Uncompressed size of every layer's activations in a store."""
    import xarray as xr

    tree = xr.open_datatree(path, engine="zarr", consolidated=False)
    return sum(tree[layer]["activations"].nbytes for layer in tree.attrs["node_layers"]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=32, help="smaller n_samples (N)")
    parser.add_argument("--factor", type=int, default=4, help="larger n_samples = factor · N")
    parser.add_argument("--n-ctx", type=int, default=64, help="tokens per chunk")
    parser.add_argument("--batch-size", type=int, default=8, help="extract.batch_size (fixed)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (≥ 3 for a median)")
    parser.add_argument("--threads", type=int, default=2, help="stages.common.set_threads")
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0, help="model init, tokens and sources")
    parser.add_argument("--workdir", help="keep the model and stores here (default: a temp dir)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(_child(args)))
        return
    sizes = [args.n_samples, args.factor * args.n_samples]
    load_before = os.getloadavg()[0]
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench_lm_memory_")
        args.workdir = tmp
    try:
        _prepare(args, sizes)
        runs: dict[tuple[str, int], list[dict]] = {(s, n): [] for s in STAGES for n in sizes}
        for rep in range(args.reps):
            # Alternate which size goes first, so that drift on a shared machine hits both.
            for n in sizes if rep % 2 == 0 else sizes[::-1]:
                for stage in STAGES:
                    r = _run_child(args, stage, n)
                    runs[(stage, n)].append(r)
                    print(
                        f"rep {rep + 1}/{args.reps} n={n} {stage}: {r['seconds']:.2f}s, "
                        f"peak RSS {r['peak_rss_mib']:.0f} MiB",
                        file=sys.stderr,
                    )
        store_mib = {n: _store_mib(_paths(args, n)["acts"]) for n in sizes}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    summary: dict[str, dict] = {}
    for (stage, n), rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        summary[f"{stage}/{n}"] = dict(
            stage=stage,
            n_samples=n,
            tokens=n * args.n_ctx,
            median_seconds=seconds,
            median_cpu_seconds=statistics.median(r["cpu_seconds"] for r in rs),
            tokens_per_second=n * args.n_ctx / seconds,
            peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in rs),
            rss_after_imports_mib=statistics.median(r["rss_after_imports_mib"] for r in rs),
            peak_rss_all=[r["peak_rss_mib"] for r in rs],
            seconds_all=[r["seconds"] for r in rs],
        )
    small, large = sizes
    ratios = {
        s: summary[f"{s}/{large}"]["peak_rss_mib"] / summary[f"{s}/{small}"]["peak_rss_mib"]
        for s in STAGES
    }
    flat = {s: abs(r - 1) <= FLAT_TOLERANCE for s, r in ratios.items()}
    above = {k: r["peak_rss_mib"] - r["rss_after_imports_mib"] for k, r in summary.items()}
    above_ratios = {s: above[f"{s}/{large}"] / above[f"{s}/{small}"] for s in STAGES}
    marginal = {}
    for s in STAGES:
        extra = (
            summary[f"{s}/{large}"]["median_seconds"] - summary[f"{s}/{small}"]["median_seconds"]
        )
        marginal[s] = (large - small) * args.n_ctx / extra if extra > 0 else None

    print(
        f"\nGPT-2 shape: {args.n_layer} layers, d_model {args.n_embd}, {args.n_head} heads, "
        f"vocab {args.vocab}; n_ctx {args.n_ctx}, batch {args.batch_size}, float64, "
        f"threads {args.threads}; node layers {', '.join(_node_layers(args.n_layer))}; "
        f"median of {args.reps} runs; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    head = (
        f"{'stage':<8}{'n_samples':>10}{'tokens':>8}{'wall s':>9}{'tokens/s':>10}"
        f"{'peak RSS MiB':>14}{'above imports':>15}{'RSS 4N/N':>10}  flat"
    ).replace("4N", f"{args.factor}N")
    print(head)
    for stage in STAGES:
        for n in sizes:
            row = summary[f"{stage}/{n}"]
            ratio = (
                f"{ratios[stage]:>10.3f}  {'yes' if flat[stage] else 'NO'}" if n == large else ""
            )
            print(
                f"{stage:<8}{n:>10}{row['tokens']:>8}{row['median_seconds']:>9.2f}"
                f"{row['tokens_per_second']:>10.0f}{row['peak_rss_mib']:>14.0f}"
                f"{above[f'{stage}/{n}']:>15.0f}" + ratio
            )
    print(
        "marginal tokens/s (fixed costs excluded): "
        + ", ".join(f"{s} {'n/a' if v is None else f'{v:.0f}'}" for s, v in marginal.items())
    )
    print(
        f"peak above imports, n={large} / n={small}: "
        + ", ".join(f"{s} {r:.3f}" for s, r in above_ratios.items())
    )
    base = min(summary[f"{s}/{small}"]["peak_rss_mib"] for s in STAGES)
    print(
        f"activation store (uncompressed): {store_mib[small]:.1f} MiB at n={small}, "
        f"{store_mib[large]:.1f} MiB at n={large}: holding all of it would add "
        f"{100 * (store_mib[large] - store_mib[small]) / base:.0f}% to the smallest peak"
    )
    print(
        f"peak RSS flat (within {100 * FLAT_TOLERANCE:.0f}%) from n={small} to n={large}: "
        + ", ".join(f"{s} {'yes' if flat[s] else 'NO'}" for s in STAGES)
    )
    if args.json:
        out = dict(
            results=summary,
            rss_ratio=ratios,
            above_imports_ratio=above_ratios,
            marginal_tokens_per_second=marginal,
            load_average_before=load_before,
            flat=flat,
            activation_store_mib=store_mib,
            args={k: v for k, v in vars(args).items() if k not in ("child", "json", "workdir")},
        )
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
