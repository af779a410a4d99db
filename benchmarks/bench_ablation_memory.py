"""Benchmark: the peak memory (RSS) of the edge ablation job (rule ``ablate_edges``).

Runs the stage of each method (``lib``, ``pca``) of a finished run ``--reps`` times, each in a
fresh process under ``/usr/bin/time -v`` with the rule's 2 threads, exactly as the rule's script
runs it (``seam.run_stage``), and prints the maximum resident set size of every run: what
SLURM's ``--mem`` limits and what a laptop has to hold. The run's own outputs are left alone
(the stage writes into a temporary folder).

``--env NAME=VALUE`` runs the jobs with extra environment variables (e.g. glibc's
``MALLOC_ARENA_MAX=1``), to compare allocator settings.

Usage: ``python benchmarks/bench_ablation_memory.py --run <folder of a finished default run>
[--experiment modadd] [--configfile config/config.yaml] [--reps 5] [--threads 2]
[--env K=V ...] [--json out.json]``.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = """
import sys, yaml
from types import SimpleNamespace as NS
from interaction_basis.config import EdgeAblationConfig, validate_config
from interaction_basis.seam import run_stage
from interaction_basis.stages.evaluate import ablate_edges

class Named(dict):
    __getattr__ = dict.__getitem__

run, experiment, method, out, threads, config = sys.argv[1:7]
cfg = validate_config(yaml.safe_load(open(config)))
e = next(x for x in cfg.experiments if x.name == experiment)
results = f"{run}/results/{experiment}"
smk = NS(
    rule="ablate_edges",
    log=[f"{out}/job.log"],
    threads=int(threads),
    input=Named(
        weights=f"{results}/model/weights.npz",
        tokens=[],
        basis=f"{results}/{method}/basis.zarr",
        edges=f"{results}/{method}/edges.zarr",
    ),
    output=Named(edge_ablation=f"{out}/edge_ablation.json"),
    params=Named(
        model=e.model.settings(),
        evaluate=e.evaluate.part(EdgeAblationConfig).model_dump(mode="json"),
    ),
    wildcards=Named(experiment=experiment, method=method),
)
run_stage(smk, ablate_edges)
"""


def peak_rss_mb(
    run: Path, experiment: str, method: str, threads: int, env: dict, configfile: Path
) -> float:
    """One job in a fresh process: its maximum RSS (MB) as /usr/bin/time -v reports it."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-c",
            JOB,
            str(run),
            experiment,
            method,
            out,
            str(threads),
            str(configfile),
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"the {method} job failed")
    kib = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert kib, done.stderr
    return int(kib.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="folder of a finished run")
    parser.add_argument("--experiment", default="modadd")
    parser.add_argument(
        "--configfile",
        type=Path,
        default=REPO / "config" / "config.yaml",
        help="the config the run used (whole, as the workflow merged it)",
    )
    parser.add_argument("--methods", nargs="+", default=["lib", "pca"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for the jobs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    peaks: dict[str, list[float]] = {m: [] for m in args.methods}
    for rep in range(args.reps):
        for method in args.methods:
            peak = peak_rss_mb(
                args.run, args.experiment, method, args.threads, env, args.configfile
            )
            peaks[method].append(peak)
            print(f"rep {rep + 1} {method}: {peaks[method][-1]:.0f} MB", flush=True)
    print(f"\n{'method':8} {'min':>7} {'median':>7} {'max':>7}  (peak RSS, MB; env {env or '-'})")
    for method, values in peaks.items():
        print(f"{method:8} {min(values):7.0f} {statistics.median(values):7.0f} {max(values):7.0f}")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "peak_rss_mb": peaks}, indent=2) + "\n")


if __name__ == "__main__":
    main()
