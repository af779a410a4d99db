"""Benchmark: the full LIB build of the reference mod-add transformer (seed 0, float64).

Stages, as the workflow runs them on the 3830 training samples of ``modadd_train_split.npz``:
activations (the model's forward pass), statistics (means and Grams of every node layer), LIB
bases for all layers (``fit_bases``, absolute τ = 1e-15) and edges (``compute_edges``).

Every repetition runs in a fresh subprocess, so each reports its own peak RSS
(``ru_maxrss``, interpreter and torch included; the RSS after imports is reported beside it).
Stage times exclude interpreter start-up and imports. The table shows the median over the
repetitions; with ``--baseline FILE`` another implementation of ``jacobians.py`` (e.g. an older
revision) is timed in the same run, its repetitions interleaved with the current one's.

The speed-up over a naive loop: one ``torch.autograd.grad`` call per (sample, output
coordinate), as the reference implementation does it, timed on the first ``--loop-samples``
training samples for every layer (M′ and edges, with the bases of the full build), next to the
batched implementation on the same samples. The loop's time per sample, times 3830, estimates
its full build; the speed-up is that estimate over the measured basis + edges time.

Usage: ``python benchmarks/bench_modadd_build.py [--reps 3] [--threads N] [--json out.json]``.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import gemm_rate, peak_rss_mib, run_child

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = Path(os.environ.get("IB_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
STAGES = ("activations", "statistics", "basis", "edges")
TARGET_SECONDS = 2.0
TARGET_RSS_MIB = 1024.0


def _setup(args: argparse.Namespace):
    """Import the package (optionally with another ``jacobians.py``) and load the inputs."""
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    # torch.func's VJP imports torch._dynamo on first use (a one-off of 1-3 s per process, with
    # sympy and friends): import it here, timed on its own, as part of start-up.
    t0 = time.perf_counter()
    import torch._dynamo  # noqa: F401

    args.import_seconds = time.perf_counter() - t0
    from interaction_basis.lib import fit

    if args.jacobians:
        spec = importlib.util.spec_from_file_location("bench_jacobians", args.jacobians)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fit.compute_m_dash_sum = module.compute_m_dash_sum
        fit.compute_edges_sum = module.compute_edges_sum
    from interaction_basis.data.modadd import build_modadd_dataset
    from interaction_basis.models.modadd import build_modadd_sections

    ref = Path(args.reference_dir)
    weights = dict(np.load(ref / "modadd_seed0" / "weights.npz"))
    train = torch.as_tensor(np.load(ref / "modadd_train_split.npz")["train_index"])
    model = build_modadd_sections(weights, dtype=torch.float64)
    tokens, _ = build_modadd_dataset()
    return fit, model, tokens[train]


def _full_build(fit, model, tokens, batch_size: int):
    import torch

    from interaction_basis.lib.basis import Truncation
    from interaction_basis.lib.statistics import compute_layer_statistics

    wall, cpu = [time.perf_counter()], [time.process_time()]

    def lap() -> None:
        wall.append(time.perf_counter())
        cpu.append(time.process_time())

    with torch.no_grad():
        acts = model.activations(tokens)
    lap()
    source = fit.batches_from_tensors(acts, batch_size)
    stats = {
        layer: compute_layer_statistics(source, layer, model.traits(layer))
        for layer in model.node_layers
    }
    lap()
    bases, m_dash = fit.fit_bases(
        model, source, stats, "lib", truncation=Truncation(1e-15, relative=False)
    )
    lap()
    edges = fit.compute_edges(model, source, bases)
    lap()
    times = {s: wall[i + 1] - wall[i] for i, s in enumerate(STAGES)}
    cpu_times = {s: cpu[i + 1] - cpu[i] for i, s in enumerate(STAGES)}
    return times, cpu_times, acts, bases, m_dash, edges


def _child_build(args: argparse.Namespace) -> dict:
    fit, model, tokens = _setup(args)
    rss_after_imports = peak_rss_mib()
    times, cpu_times, _, bases, m_dash, edges = _full_build(fit, model, tokens, args.batch_size)
    checks = {
        "dims": {layer: int(b.C.shape[1]) for layer, b in bases.items()},
        "m_dash_trace": {layer: float(m.trace()) for layer, m in m_dash.items()},
        "edges_sum": {f"{a}->{b}": float(e.sum()) for (a, b), e in edges.items()},
    }
    return dict(
        times=times,
        cpu_times=cpu_times,
        import_seconds=args.import_seconds,
        peak_rss_mib=peak_rss_mib(),
        rss_after_imports_mib=rss_after_imports,
        checks=checks,
    )


def _loop_m_dash(section, acts, c_out):
    """``Σ M′`` with one autograd call per (sample, output position, output dim)."""
    import torch

    d = acts.shape[-1]
    m = torch.zeros(d, d, dtype=torch.float64)
    for x in acts:
        g = x.unsqueeze(0).requires_grad_(True)
        out = section(g)
        out = out if c_out is None else out @ c_out
        grads = []
        for t in range(out.shape[1]):
            for i in range(out.shape[2]):
                (grad,) = torch.autograd.grad(out[0, t, i], g, retain_graph=True)
                grads.append(grad[0])
        rows = torch.stack(grads)  # (t·i, p_in, d)
        for s in range(rows.shape[1]):
            m += rows[:, s].T @ rows[:, s]
    return m


def _loop_edges(section, acts, c_in, c_in_pinv, c_out):
    """``Σ E`` with one autograd call per (sample, output position, output dim)."""
    import torch

    e = None
    for x in acts:
        f_hat = x @ c_in
        g = f_hat.unsqueeze(0).requires_grad_(True)
        out = section(g @ c_in_pinv)
        out = out if c_out is None else out @ c_out
        a = torch.zeros(out.shape[1], out.shape[2], f_hat.shape[1], dtype=torch.float64)
        for t in range(out.shape[1]):
            for i in range(out.shape[2]):
                (grad,) = torch.autograd.grad(out[0, t, i], g, retain_graph=True)
                a[t, i] = (grad[0] * f_hat).sum(0)
        part = a.square().sum(0)
        e = part if e is None else e + part
    return e


def _child_loop(args: argparse.Namespace) -> dict:
    """The naive loop and the batched implementation on the same ``--loop-samples`` samples."""
    import torch

    fit, model, tokens = _setup(args)
    _, _, acts, bases, _, _ = _full_build(fit, model, tokens, args.batch_size)
    layers = model.node_layers
    n = args.loop_samples
    loop = batched = 0.0
    worst = 0.0
    for idx, layer in enumerate(layers[:-1]):
        nxt = layers[idx + 1]
        section, x = model.sections[idx], acts[layer][:n]
        c_next = None if nxt == layers[-1] else bases[nxt].C
        c_in, c_pinv = bases[layer].C, bases[layer].C_pinv
        t0 = time.perf_counter()
        m_b = fit.compute_m_dash_sum(section, x, c_next)
        e_b = fit.compute_edges_sum(section, x, c_in, c_pinv, c_next)
        t1 = time.perf_counter()
        m_l = _loop_m_dash(section, x, c_next)
        e_l = _loop_edges(section, x, c_in, c_pinv, c_next)
        t2 = time.perf_counter()
        batched += t1 - t0
        loop += t2 - t1
        for got, want in ((m_b, m_l), (e_b, e_l)):
            worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    n_train = tokens.shape[0]
    return dict(
        samples=n,
        loop_seconds=loop,
        batched_seconds=batched,
        loop_full_estimate=loop / n * n_train,
        max_rel_diff=worst,
        threads=torch.get_num_threads(),
    )


def _child_bound(args: argparse.Namespace) -> dict:
    """Matmul FLOPs of the LIB build (basis + edges) and this machine's float64 GEMM rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from interaction_basis.lib.basis import Truncation
    from interaction_basis.lib.statistics import compute_layer_statistics

    fit, model, tokens = _setup(args)
    with torch.no_grad():
        acts = model.activations(tokens)
    source = fit.batches_from_tensors(acts, args.batch_size)
    stats = {
        layer: compute_layer_statistics(source, layer, model.traits(layer))
        for layer in model.node_layers
    }
    with FlopCounterMode(display=False) as counter:
        bases, _ = fit.fit_bases(
            model, source, stats, "lib", truncation=Truncation(1e-15, relative=False)
        )
        basis_flops = counter.get_total_flops()
        fit.compute_edges(model, source, bases)
    total = counter.get_total_flops()
    rates = {"1024^3": gemm_rate(1024, 1024, 1024), "12000x129x129": gemm_rate(12000, 129, 129)}
    return dict(
        basis_gflop=basis_flops / 1e9,
        edges_gflop=(total - basis_flops) / 1e9,
        gemm_gflops=rates,
        threads=torch.get_num_threads(),
    )


def _run_child(args: argparse.Namespace, task: str, jacobians: str | None) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        task,
        "--batch-size",
        str(args.batch_size),
        "--reference-dir",
        str(args.reference_dir),
        "--loop-samples",
        str(args.loop_samples),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if jacobians:
        cmd += ["--jacobians", jacobians]
    return run_child(cmd)


def _summary(runs: list[dict]) -> dict:
    med = {s: statistics.median(r["times"][s] for r in runs) for s in STAGES}
    cpu = {s: statistics.median(r["cpu_times"][s] for r in runs) for s in STAGES}
    lib = [r["times"]["basis"] + r["times"]["edges"] for r in runs]
    lib_cpu = [r["cpu_times"]["basis"] + r["cpu_times"]["edges"] for r in runs]
    return dict(
        median_seconds=med,
        median_cpu_seconds=cpu,
        lib_seconds_median=statistics.median(lib),
        lib_seconds_all=lib,
        lib_cpu_seconds_median=statistics.median(lib_cpu),
        import_seconds_median=statistics.median(r["import_seconds"] for r in runs),
        peak_rss_mib_median=statistics.median(r["peak_rss_mib"] for r in runs),
        rss_after_imports_mib_median=statistics.median(r["rss_after_imports_mib"] for r in runs),
        checks=runs[0]["checks"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (≥ 3 for a median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch-size", type=int, default=1024, help="samples per batch")
    parser.add_argument(
        "--loop-samples",
        type=int,
        default=64,
        help="samples for the naive-loop comparison (0: skip it)",
    )
    parser.add_argument("--baseline", help="another jacobians.py to time, interleaved")
    parser.add_argument("--reference-dir", default=str(DEFAULT_REFERENCE))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--bound",
        action="store_true",
        help="also count the build's matmul FLOPs and time float64 GEMMs",
    )
    parser.add_argument("--child", choices=("build", "loop", "bound"), help=argparse.SUPPRESS)
    parser.add_argument("--jacobians", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        tasks = {"build": _child_build, "loop": _child_loop, "bound": _child_bound}
        result = tasks[args.child](args)
        print(json.dumps(result))
        return
    if not (Path(args.reference_dir) / "modadd_seed0" / "weights.npz").exists():
        raise SystemExit(f"No reference checkpoints at {args.reference_dir} (--reference-dir).")

    impls = {"current": None}
    if args.baseline:
        impls["baseline"] = str(Path(args.baseline).resolve())
    runs: dict[str, list[dict]] = {name: [] for name in impls}
    for rep in range(args.reps):
        for name, path in impls.items():
            runs[name].append(_run_child(args, "build", path))
            print(
                f"rep {rep + 1}/{args.reps} {name}: "
                + " ".join(f"{s} {runs[name][-1]['times'][s]:.2f}s" for s in STAGES),
                file=sys.stderr,
            )
    results = {name: _summary(r) for name, r in runs.items()}
    loop = _run_child(args, "loop", None) if args.loop_samples > 0 else None
    bound = _run_child(args, "bound", None) if args.bound else None

    cols = list(impls)
    print(
        f"\nmod-add seed 0, 3830 samples, float64, batch {args.batch_size}, "
        f"threads {args.threads or 'default'}; median of {args.reps} runs (seconds)"
    )
    print(f"{'stage':<28}" + "".join(f"{c:>12}" for c in cols))
    for s in STAGES:
        print(f"{s:<28}" + "".join(f"{results[c]['median_seconds'][s]:>12.2f}" for c in cols))
    print(
        f"{'LIB build (basis + edges)':<28}"
        + "".join(f"{results[c]['lib_seconds_median']:>12.2f}" for c in cols)
    )
    print(
        f"{'  CPU seconds (all threads)':<28}"
        + "".join(f"{results[c]['lib_cpu_seconds_median']:>12.2f}" for c in cols)
    )
    print(
        f"{'start-up: import _dynamo':<28}"
        + "".join(f"{results[c]['import_seconds_median']:>12.2f}" for c in cols)
    )
    print(
        f"{'peak RSS (MiB)':<28}"
        + "".join(f"{results[c]['peak_rss_mib_median']:>12.0f}" for c in cols)
    )
    print(
        f"{'  RSS after imports (MiB)':<28}"
        + "".join(f"{results[c]['rss_after_imports_mib_median']:>12.0f}" for c in cols)
    )
    if "baseline" in results:
        ratio = results["baseline"]["lib_seconds_median"] / results["current"]["lib_seconds_median"]
        print(f"speed-up of current over baseline (LIB build): {ratio:.2f}x")
    cur = results["current"]
    if loop:
        speedup = loop["loop_full_estimate"] / cur["lib_seconds_median"]
        print(
            f"naive per-coordinate autograd loop on {loop['samples']} samples: "
            f"{loop['loop_seconds']:.2f}s vs batched {loop['batched_seconds']:.3f}s on the same "
            f"samples ({loop['loop_seconds'] / loop['batched_seconds']:.0f}x; max rel. diff "
            f"{loop['max_rel_diff']:.1e})"
        )
        print(
            f"  extrapolated to 3830 samples: {loop['loop_full_estimate']:.0f}s -> speed-up "
            f"{speedup:.0f}x over the loop"
        )
    if bound:
        gflop = bound["basis_gflop"] + bound["edges_gflop"]
        best = max(bound["gemm_gflops"].values())
        print(
            f"matmul work of the LIB build: {bound['basis_gflop']:.0f} GFLOP basis + "
            f"{bound['edges_gflop']:.0f} GFLOP edges; float64 GEMM here "
            + ", ".join(f"{k}: {v:.1f}" for k, v in bound["gemm_gflops"].items())
            + f" GFLOP/s ({bound['threads']} threads) -> at least {gflop / best:.1f}s"
        )
    ok_t = cur["lib_seconds_median"] < TARGET_SECONDS
    ok_m = cur["peak_rss_mib_median"] < TARGET_RSS_MIB
    print(
        f"target: LIB build < {TARGET_SECONDS:.0f} s: {'yes' if ok_t else 'no'}; "
        f"peak RSS < {TARGET_RSS_MIB:.0f} MiB: {'yes' if ok_m else 'no'}"
    )
    if args.json:
        out = dict(
            results=results,
            loop=loop,
            bound=bound,
            reps=args.reps,
            threads=args.threads,
            batch_size=args.batch_size,
            targets=dict(seconds=TARGET_SECONDS, rss_mib=TARGET_RSS_MIB),
        )
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
