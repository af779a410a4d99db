"""Benchmark: the edge ablation (``ablate_edges``, method §E) against a previous implementation.

Times :func:`compute_edges_required` for every adjacent layer pair — the workflow stage's
computation, the bisect edge ablation — for LIB and PCA, in float32 on the held-out split, on

- ``seed0``: the reference mod-add checkpoint (bases and edges built in float64 with τ = 1e-15
  absolute, as in method §C.1.3);
- ``default``: a workflow run of the default config (``--results results/modadd``: its
  ``model/weights.npz``, ``{lib,pca}/basis.zarr`` and ``edges.zarr``), if given.

The previous implementation is ``src/interaction_basis/evaluate/ablation.py`` at git revision
``--baseline`` (default: the last revision before the group reuse), loaded from git history into
a temporary module; the two run each layer pair in turn, in alternating order, in one process.
Every repetition's results (edges required, ε, every bisect score) must equal the previous
implementation's, or the script fails. The table shows the median time per case and the ratio
previous / current; ``--json`` also holds the median per layer pair.

Usage: ``python benchmarks/bench_ablation.py [--reps 3] [--threads 1] [--results DIR]
[--json out.json]``.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = Path(os.environ.get("IB_REFERENCE_DIR", REPO.parent / "shared" / "reference"))
BASELINE_REVISION = "309a196"  # ablation.py before the edge ablation reused group outputs


#: Where ablation.py and the modules it imports lived before the package was laid out by
#: pipeline step (issue 24): a baseline from then reads the current modules under their old names.
_BEFORE_THE_LAYOUT = {
    "interaction_basis.basis": "interaction_basis.lib.basis",
    "interaction_basis.records": "interaction_basis.lib.records",
    "interaction_basis.ablated_sections": "interaction_basis.evaluate.ablated_sections",
}


def _load_baseline(revision: str):
    """``ablation.py`` at ``revision`` as a module of its own (it imports the current package)."""
    for path in ("evaluate/ablation.py", "ablation.py"):
        done = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{revision}:src/interaction_basis/{path}"],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            break
    else:
        raise SystemExit(f"no ablation.py at revision {revision}: {done.stderr.strip()}")
    source = done.stdout
    for old, new in _BEFORE_THE_LAYOUT.items():
        sys.modules.setdefault(old, importlib.import_module(new))
    path = Path(tempfile.mkdtemp()) / "ablation_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("ablation_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_case(reference_dir: Path, max_samples: int | None):
    """The reference seed-0 mod-add model's LIB and PCA bases and edges (as the tests build
    them), and its float32 model on the test split."""
    import numpy as np
    import torch

    from interaction_basis.data.modadd import build_modadd_dataset, compute_modadd_split
    from interaction_basis.lib.basis import Truncation
    from interaction_basis.lib.fit import build_in_memory
    from interaction_basis.models.modadd import build_modadd_sections

    weights = dict(np.load(reference_dir / "modadd_seed0" / "weights.npz"))
    train = torch.as_tensor(np.load(reference_dir / "modadd_train_split.npz")["train_index"])
    tokens, labels = build_modadd_dataset()
    built = build_in_memory(
        build_modadd_sections(weights),
        tokens[train],
        ("lib", "pca"),
        truncation=Truncation(1e-15, False),
    ).methods
    methods = {m: (bases, edges) for m, (bases, _, edges) in built.items()}
    _, test = compute_modadd_split(len(labels), 0.3, 0)
    test = test[:max_samples]
    model32 = build_modadd_sections(weights, dtype=torch.float32)
    return model32, tokens[test], labels[test], methods


def _workflow_case(results: Path, max_samples: int | None):
    """The inputs of the ``ablate_edges`` jobs of a default-config run (float32, batch 4096)."""
    import yaml

    from interaction_basis import storage
    from interaction_basis.config import WorkflowConfig
    from interaction_basis.stages.evaluate import _setup

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    experiment = WorkflowConfig.model_validate(config).experiments[0]
    model_cfg, cfg = experiment.model, experiment.evaluate
    methods = {}
    for method in ("lib", "pca"):
        model, bases, inputs, labels, _ = _setup(
            model_cfg,
            cfg,
            str(results / "model" / "weights.npz"),
            str(results / method / "basis.zarr"),
            None,
        )
        methods[method] = (bases, storage.read_edges(str(results / method / "edges.zarr")))
    return model, inputs[:max_samples], labels[:max_samples], methods


def _run_pair(ablation, model, inputs, labels, bases, pair, edges, base, batch_size):
    a, b = pair
    t0 = time.perf_counter()
    r = ablation.compute_edges_required(
        model, a, bases[a], bases[b], edges, inputs, labels, batch_size=batch_size, base_score=base
    )
    result = {
        "n_edges_required": r.n_edges_required,
        "epsilon": r.epsilon,
        "epsilon_last": r.epsilon_last,
        "score": r.score,
        "bisect": {str(k): v for k, v in r.scores.items()},
    }
    return time.perf_counter() - t0, result


def _rep(implementations: dict, case, batch_size: int, rep: int) -> tuple[dict, dict, dict]:
    """One repetition: every layer pair of every method by each implementation in turn, the
    order alternating between pairs and repetitions so that load drift hits both alike."""
    model, inputs, labels, methods = case
    base = implementations["current"].compute_unablated_score(
        model, inputs, labels, batch_size=batch_size
    )
    seconds = dict.fromkeys(implementations, 0.0)
    results = {name: {} for name in implementations}
    per_pair = {name: {} for name in implementations}
    order = list(implementations)
    for method, (bases, all_edges) in methods.items():
        for pair, edges in all_edges.items():
            rep += 1
            for name in order[:: 1 if rep % 2 else -1]:
                t, result = _run_pair(
                    implementations[name], model, inputs, labels, bases, pair, edges, base,
                    batch_size,
                )  # fmt: skip
                seconds[name] += t
                results[name][f"{method} {pair[0]}->{pair[1]}"] = result
                per_pair[name][f"{method} {pair[0]}->{pair[1]}"] = t
    return seconds, results, per_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (≥ 3 for a median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--baseline", default=BASELINE_REVISION, help="git revision to compare")
    parser.add_argument("--reference-dir", default=str(DEFAULT_REFERENCE))
    parser.add_argument("--results", help="results/<experiment> of a default-config run")
    parser.add_argument("--no-seed0", action="store_true", help="only the --results case")
    parser.add_argument("--max-samples", type=int, help="evaluate on this many held-out samples")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    import torch

    from interaction_basis.evaluate import ablation

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = _load_baseline(args.baseline)
    cases = {}
    if not args.no_seed0:
        cases["seed0"] = (_reference_case(Path(args.reference_dir), args.max_samples), 10_000)
    if args.results:
        cases["default"] = (_workflow_case(Path(args.results), args.max_samples), 4096)
    report = {"threads": torch.get_num_threads(), "baseline": args.baseline, "cases": {}}
    for name, (case, batch_size) in cases.items():
        times = {"previous": [], "current": []}
        pair_times = {"previous": {}, "current": {}}
        for rep in range(args.reps):
            seconds, outputs, per_pair = _rep(
                {"previous": baseline, "current": ablation}, case, batch_size, rep
            )
            for label, t in seconds.items():
                times[label].append(t)
                print(f"{name} {label}: {t:.1f} s", file=sys.stderr, flush=True)
                for pair, t_pair in per_pair[label].items():
                    pair_times[label].setdefault(pair, []).append(t_pair)
            if outputs["previous"] != outputs["current"]:
                raise SystemExit(f"{name}: the results differ from the previous implementation")
        median = {k: statistics.median(v) for k, v in times.items()}
        report["cases"][name] = {
            "n_samples": len(case[2]),
            "seconds": times,
            "median_s": median,
            "speedup": median["previous"] / median["current"],
            "median_s_per_pair": {
                label: {pair: statistics.median(v) for pair, v in pairs.items()}
                for label, pairs in pair_times.items()
            },
            "results": outputs["current"],
        }
    print(f"{'case':<8} {'previous (s)':>13} {'current (s)':>12} {'speed-up':>9}  identical")
    for name, r in report["cases"].items():
        m = r["median_s"]
        print(f"{name:<8} {m['previous']:>13.1f} {m['current']:>12.1f} {r['speedup']:>8.1f}x  yes")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
