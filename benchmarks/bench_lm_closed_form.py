"""Benchmark: LIB basis and edges of a GPT-2-shaped model, closed forms against autograd.

The LM sections (LayerNorm in/out, MLP block, causal attention, unembedding) contract M′ and
the edges in closed form (``lib/closed_form/``); the previous implementation sent every
section through the generic autograd path (``jacobians.py``). This script times both on the
same model and activations, interleaved (closed, generic, closed, …) so that drift on a shared
machine hits both, each run in a fresh subprocess (its peak RSS its own):

- basis: ``stages.basis.fit_basis`` with method ``lib``;
- edges: ``stages.edges.compute_edges`` (on the closed-form run's basis, for both).

The generic runs monkeypatch ``jacobians._closed_form`` to return ``None`` in their process,
which is exactly the old dispatch. The model is ``transformers.GPT2Config`` with random init
(seed 0) and random biases/LayerNorm affines (``tests/lm_fixtures.randomise_lm``), the node
layers the paper's LayerNorm-split set (``hf_node_layers(kind="ln")``), float64, relative
truncation 1e-10, ``rotate_final``; sources exact (``--sources exact``, the default) or one
stochastic source over positions (``--sources pos``, the LM configs' setting). The extraction
runs once, untimed. After the timings, the closed-form and generic bases and edges are compared
(largest relative difference over layers: they must agree to 1e-10).

``--bound`` counts the matmul FLOPs of the closed-form basis and edges
(``torch.utils.flop_counter``) and measures this machine's float64 GEMM rate, as
``bench_modadd_build.py --bound`` does: FLOPs / rate is the time the contraction would take at
the GEMM bound.

``--per-section`` instead times M′ (``jacobians.compute_m_dash_sum``) of every section on
``--n-samples`` chunks in this process, closed form and generic interleaved, with a random
full-rank ``C_out`` (the stage's ``C_out`` is truncated, so this is an upper bound on the
work): for sizes where the generic stage would take hours. With ``--generic-columns K`` the
generic path is timed on K output features and scaled to all (an estimate, marked as such).

Usage: ``python benchmarks/bench_lm_closed_form.py [--n-embd 64] [--n-layer 2] [--n-head 4]
[--n-ctx 16] [--n-samples 32] [--reps 3] [--threads 2] [--sources exact] [--bound]
[--impls closed,generic] [--stages basis,edges] [--json out.json]``. The issue-17 sizes: the
default (tiny) and ``--n-embd 256 --n-layer 4 --n-ctx 64`` (where the generic stage takes days:
``--impls closed``). On a loaded shared machine use ``--threads 1``: with two threads every small
operation waits for the busy second core.
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

from _common import gemm_rate, lm_configs, peak_rss_mib, run_child

IMPLEMENTATIONS = ("closed", "generic")
STAGES = ("basis", "edges")


def _paths(args: argparse.Namespace) -> dict[str, str]:
    work = Path(args.workdir)
    paths = {"model": work / "model", "tokens": work / "tokens.zarr", "acts": work / "acts.zarr"}
    for impl in IMPLEMENTATIONS:
        paths[f"basis_{impl}"] = work / f"basis_{impl}.zarr"
        paths[f"edges_{impl}"] = work / f"edges_{impl}.zarr"
    return {k: str(v) for k, v in paths.items()}


def _configs(args: argparse.Namespace):
    from interaction_basis.models.hf import hf_node_layers, load_hf_model

    p = _paths(args)
    return lm_configs(
        p["model"],
        hf_node_layers(load_hf_model(p["model"]), "ln"),
        n_ctx=args.n_ctx,
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        n_pos=1 if args.sources == "pos" else None,
    )


def _prepare(args: argparse.Namespace) -> None:
    """The model folder, the token chunks and the activations (extracted once)."""
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from interaction_basis import storage
    from interaction_basis.stages import extract
    from lm_fixtures import randomise_lm

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=args.vocab, n_positions=args.n_ctx, n_embd=args.n_embd,
        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    p = _paths(args)
    randomise_lm(GPT2LMHeadModel(cfg), seed=0).save_pretrained(p["model"])
    rng = np.random.default_rng(0)
    fit = rng.integers(0, args.vocab, size=(args.n_samples, args.n_ctx + 1), dtype=np.int64)
    held_out = rng.integers(0, args.vocab, size=(8, args.n_ctx + 1), dtype=np.int64)
    storage.write_token_chunks(p["tokens"], {"fit": fit, "eval": held_out}, {"source": "random"})
    model_cfg, extract_cfg, _, _ = _configs(args)
    extract.extract_activations(model_cfg, extract_cfg, p["model"], p["acts"], p["tokens"])


def _child(args: argparse.Namespace) -> dict:
    """One stage with one implementation, timed; the process's peak RSS at the end."""
    import torch
    import torch._dynamo  # noqa: F401  (torch.func imports it on first use: count it as start-up)

    from interaction_basis.lib import jacobians
    from interaction_basis.stages import basis, common, edges

    if args.impl == "generic":  # the dispatch before the closed forms
        jacobians._closed_form = lambda *_: None
    common.set_threads(args.threads)
    model_cfg, extract_cfg, basis_cfg, edges_cfg = _configs(args)
    p = _paths(args)
    rss_imports = peak_rss_mib()
    if args.child == "bound":
        return _bound(args, model_cfg, extract_cfg, basis_cfg, edges_cfg, p)
    # Snakemake removes a job's outputs before it runs: the previous rep's store is not the
    # stage's cost.
    shutil.rmtree(p[f"{args.child}_{args.impl}"], ignore_errors=True)
    t0 = time.perf_counter()
    if args.child == "basis":
        basis.fit_basis(
            model_cfg, extract_cfg, basis_cfg, "lib", p["model"], p["acts"], p[f"basis_{args.impl}"]
        )
    else:
        edges.compute_edges(
            model_cfg, extract_cfg, edges_cfg, p["model"], p["acts"], p["basis_closed"],
            p[f"edges_{args.impl}"],
        )  # fmt: skip
    return dict(
        seconds=time.perf_counter() - t0,
        peak_rss_mib=peak_rss_mib(),
        rss_after_imports_mib=rss_imports,
        threads=torch.get_num_threads(),
    )


def _bound(args, model_cfg, extract_cfg, basis_cfg, edges_cfg, p) -> dict:
    """Matmul FLOPs of the closed-form basis and edges stages, and the GEMM rate."""
    from torch.utils.flop_counter import FlopCounterMode

    from interaction_basis.stages import basis, edges

    flops = {}
    if "basis" in args.stages:
        with FlopCounterMode(display=False) as counter:
            basis.fit_basis(
                model_cfg, extract_cfg, basis_cfg, "lib", p["model"], p["acts"], p["basis_closed"]
            )
        flops["basis"] = counter.get_total_flops()
    if "edges" in args.stages:
        with FlopCounterMode(display=False) as counter:
            edges.compute_edges(
                model_cfg, extract_cfg, edges_cfg, p["model"], p["acts"], p["basis_closed"],
                p["edges_closed"],
            )  # fmt: skip
        flops["edges"] = counter.get_total_flops()
    d = args.n_embd + 1
    rates = {
        "1024^3": gemm_rate(1024, 1024, 1024),
        f"{args.n_ctx * 64}x{d}x{d}": gemm_rate(args.n_ctx * 64, d, d),
    }
    return dict(gflop={k: v / 1e9 for k, v in flops.items()}, gemm_gflops=rates)


def _run_child(args: argparse.Namespace, stage: str, impl: str) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--impl", impl]
    flags = (
        "workdir",
        "n_ctx",
        "n_samples",
        "batch_size",
        "threads",
        "n_embd",
        "sources",
        "stages",
    )
    for flag in flags:
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return run_child(cmd)


def _max_rel_diff(args: argparse.Namespace) -> dict[str, float]:
    """Largest relative difference, closed form against generic, over layers (bases: ``C`` up
    to column signs, and Λ; edges: every pair of layers)."""
    from interaction_basis import storage

    p = _paths(args)
    closed, generic = storage.read_bases(p["basis_closed"]), storage.read_bases(p["basis_generic"])
    worst = {"basis": 0.0, "edges": 0.0}
    for layer, b in closed.items():
        g = generic[layer]
        signs = (b.C * g.C).sum(0).sign()  # eigenvectors are defined up to sign
        for x, y in ((b.C * signs, g.C), (b.importance, g.importance)):
            worst["basis"] = max(worst["basis"], float((x - y).abs().max() / y.abs().max()))
    e_closed, e_generic = (
        storage.read_edges(p["edges_closed"]),
        storage.read_edges(p["edges_generic"]),
    )
    for key, x in e_closed.items():
        y = e_generic[key]
        worst["edges"] = max(worst["edges"], float((x - y).abs().max() / y.abs().max()))
    return worst


def _per_section(args: argparse.Namespace) -> None:
    """Per-section M′ times, closed form and generic interleaved, medians over reps."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from interaction_basis.lib import jacobians
    from interaction_basis.lib.jacobians import Sources
    from interaction_basis.models.hf import build_hf_sections, hf_node_layers
    from lm_fixtures import randomise_lm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=args.vocab, n_positions=args.n_ctx, n_embd=args.n_embd,
        n_layer=args.n_layer, n_head=args.n_head, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    hf = randomise_lm(GPT2LMHeadModel(cfg), seed=0).to(torch.float64)
    layers = hf_node_layers(hf, "ln")
    model = build_hf_sections(hf, layers)
    tokens = torch.randint(0, args.vocab, (args.n_samples, args.n_ctx))
    with torch.no_grad():
        acts = model.activations(tokens)
    sources = Sources(n_pos=1) if args.sources == "pos" else Sources()
    closed_form = jacobians._closed_form
    totals = {impl: 0.0 for impl in IMPLEMENTATIONS}
    print(f"{'section':<28}{'closed s':>10}{'generic s':>11}{'ratio':>8}{'rel diff':>10}")
    # One block and the head are enough: every block has the same shapes.
    for name, nxt, section in zip(layers, layers[1:], model.sections, strict=False):
        if not (name.endswith(".0") or not name[-1].isdigit()):
            continue
        x = acts[name]
        d_out = acts[nxt].shape[-1]
        c_out = torch.randn(d_out, d_out, dtype=torch.float64, generator=torch.Generator())
        times = {impl: [] for impl in IMPLEMENTATIONS}
        results = {}
        # The generic path's cost is linear in the output features (one VJP each, or one JVP
        # per input coordinate, whichever is cheaper): --generic-columns K times it on K of
        # them and scales by d_out / K; the results are compared on those K.
        columns = min(args.generic_columns or d_out, d_out)
        for rep in range(args.reps):
            for impl in IMPLEMENTATIONS if rep % 2 == 0 else IMPLEMENTATIONS[::-1]:
                jacobians._closed_form = closed_form if impl == "closed" else lambda *_: None
                t0 = time.perf_counter()
                results[impl] = jacobians.compute_m_dash_sum(
                    section, x, c_out[:, :columns] if impl == "generic" else c_out,
                    sources=sources, generator=torch.Generator().manual_seed(0),
                )  # fmt: skip
                times[impl].append(time.perf_counter() - t0)
        jacobians._closed_form = closed_form
        if columns < d_out:
            results["closed"] = jacobians.compute_m_dash_sum(
                section, x, c_out[:, :columns], sources=sources,
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            times["generic"] = [t * d_out / columns for t in times["generic"]]
        med = {impl: statistics.median(t) for impl, t in times.items()}
        for impl in IMPLEMENTATIONS:
            totals[impl] += med[impl]
        diff = results["closed"] - results["generic"]
        rel = float(diff.abs().max() / results["generic"].abs().max())
        print(
            f"{name + '->' + nxt:<28}{med['closed']:>10.3f}{med['generic']:>11.3f}"
            f"{med['generic'] / med['closed']:>8.1f}{rel:>10.1e}"
            + (f"  (generic: {columns} of {d_out} features, scaled)" if columns < d_out else ""),
            flush=True,
        )
    if args.bound:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            for name, nxt, section in zip(layers, layers[1:], model.sections, strict=False):
                if name.endswith(".0") or not name[-1].isdigit():
                    d_out = acts[nxt].shape[-1]
                    c_out = torch.randn(d_out, d_out, dtype=torch.float64)
                    jacobians.compute_m_dash_sum(
                        section, acts[name], c_out, sources=sources,
                        generator=torch.Generator().manual_seed(0),
                    )  # fmt: skip
        gflop = counter.get_total_flops() / 1e9
        d = args.n_embd + 1
        rates = {"1024^3": gemm_rate(1024, 1024, 1024), f"4096x{d}x{d}": gemm_rate(4096, d, d)}
        best = max(rates.values())
        print(
            f"matmul work of the closed forms (block 0 and head): {gflop:.2f} GFLOP; float64 "
            "GEMM here " + ", ".join(f"{k}: {v:.1f}" for k, v in rates.items()) + " GFLOP/s -> "
            f"{gflop / best:.2f}s at the GEMM bound ({totals['closed'] * best / gflop:.1f}x that "
            "measured)"
        )
    print(
        f"total (block 0 and head): closed {totals['closed']:.2f}s, generic "
        f"{totals['generic']:.2f}s, ratio {totals['generic'] / totals['closed']:.1f}x; "
        f"{args.n_samples * args.n_ctx / totals['closed']:.0f} tokens/s closed, "
        f"{args.n_samples * args.n_ctx / totals['generic']:.1f} generic"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-ctx", type=int, default=16, help="tokens per chunk")
    parser.add_argument("--n-samples", type=int, default=32, help="chunks")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3, help="repetitions (≥ 3 for a median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sources", choices=("exact", "pos"), default="exact")
    parser.add_argument("--bound", action="store_true", help="FLOP count vs GEMM rate")
    parser.add_argument(
        "--impls", default="closed,generic", help="comma-separated: closed, generic (where the "
        "generic stage would take hours: closed alone, and --per-section for the ratio)",
    )  # fmt: skip
    parser.add_argument("--stages", default="basis,edges", help="comma-separated: basis, edges")
    parser.add_argument("--per-section", action="store_true", help="per-section M′ times")
    parser.add_argument(
        "--generic-columns", type=int, help="--per-section: time the generic path on this many "
        "output features and scale (its cost is linear in them)",
    )  # fmt: skip
    parser.add_argument("--workdir", help="keep the model and stores here (default: a temp dir)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", choices=(*STAGES, "bound"), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(_child(args)))
        return
    if args.per_section:
        _per_section(args)
        return
    load_before = os.getloadavg()[0]
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench_lm_closed_form_")
        args.workdir = tmp
    try:
        _prepare(args)
        impls, stages = args.impls.split(","), args.stages.split(",")
        runs = {(s, i): [] for s in stages for i in impls}
        for rep in range(args.reps):
            for stage in stages:  # edges read the closed-form basis: basis first
                for impl in impls if rep % 2 == 0 else impls[::-1]:
                    r = _run_child(args, stage, impl)
                    runs[(stage, impl)].append(r)
                    print(
                        f"rep {rep + 1}/{args.reps} {stage} {impl}: {r['seconds']:.2f}s, "
                        f"peak RSS {r['peak_rss_mib']:.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
        both = set(impls) == set(IMPLEMENTATIONS) and set(stages) == set(STAGES)
        diffs = _max_rel_diff(args) if both else {}
        bound = _run_child(args, "bound", "closed") if args.bound else None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    tokens = args.n_samples * args.n_ctx
    summary = {}
    for (stage, impl), rs in runs.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        summary[f"{stage}/{impl}"] = dict(
            median_seconds=seconds,
            tokens_per_second=tokens / seconds,
            peak_rss_mib=statistics.median(r["peak_rss_mib"] for r in rs),
            seconds_all=[r["seconds"] for r in rs],
        )
    print(
        f"\nGPT-2 shape: {args.n_layer} layers, d_model {args.n_embd}, {args.n_head} heads; "
        f"{args.n_samples} chunks of {args.n_ctx} tokens, batch {args.batch_size}, float64, "
        f"threads {args.threads}, {args.sources} sources, LN-split node layers; median of "
        f"{args.reps} interleaved runs; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after"
    )
    print(f"{'stage':<7}{'impl':<9}{'wall s':>9}{'tokens/s':>10}{'peak RSS MiB':>14}  runs (s)")
    for stage in stages:
        for impl in impls:
            r = summary[f"{stage}/{impl}"]
            print(
                f"{stage:<7}{impl:<9}{r['median_seconds']:>9.2f}{r['tokens_per_second']:>10.1f}"
                f"{r['peak_rss_mib']:>14.0f}  " + " ".join(f"{s:.1f}" for s in r["seconds_all"])
            )
    speedup = {
        s: summary[f"{s}/generic"]["median_seconds"] / summary[f"{s}/closed"]["median_seconds"]
        for s in stages
        if len(impls) == 2
    }
    print("speed-up (generic / closed, medians): " + ", ".join(
        f"{s} {v:.1f}x" for s, v in speedup.items()
    ))  # fmt: skip
    print(
        "largest relative difference, closed vs generic: "
        + ", ".join(f"{s} {v:.1e}" for s, v in diffs.items())
    )
    if bound:
        best = max(bound["gemm_gflops"].values())
        print(
            "matmul work of the closed forms: "
            + ", ".join(f"{s} {v:.2f} GFLOP" for s, v in bound["gflop"].items())
            + "; float64 GEMM here "
            + ", ".join(f"{k}: {v:.1f}" for k, v in bound["gemm_gflops"].items())
            + " GFLOP/s -> at the GEMM bound: "
            + ", ".join(
                f"{s} {v / best:.2f}s ({summary[f'{s}/closed']['median_seconds'] * best / v:.1f}x "
                "that measured)"
                for s, v in bound["gflop"].items()
                if f"{s}/closed" in summary
            )
        )
    if args.json:
        out = dict(
            results=summary, speedup=speedup, max_rel_diff=diffs, bound=bound,
            load_average_before=load_before,
            args={k: v for k, v in vars(args).items() if k not in ("child", "impl", "json")},
        )  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
