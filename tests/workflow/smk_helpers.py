"""Helpers for the workflow tests: running Snakemake, parsing its dry runs, copying the workflow.

The tests run Snakemake as a subprocess (as users do) with a timeout, and on failure show the
tail of its output so that a red test says why.
"""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "workflow" / "tiny.yaml"

# What a copy of the workflow needs: declarations, rules, scripts, configs, profiles (the
# workflow profile sets rerun-incomplete), conda envs (the lint checks them) and the package.
WORKFLOW_PARTS = ("Snakefile", "rules", "scripts", "config", "profiles", "envs", "src", "report")

_VENV_SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SNAKEMAKE = (
    [str(_VENV_SNAKEMAKE)] if _VENV_SNAKEMAKE.exists() else [sys.executable, "-m", "snakemake"]
)
_VENV_SNAKEFMT = Path(sys.executable).with_name("snakefmt")
SNAKEFMT = [str(_VENV_SNAKEFMT)] if _VENV_SNAKEFMT.exists() else [sys.executable, "-m", "snakefmt"]


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def tail(self, n: int = 80) -> str:
        lines = self.output.strip().splitlines()
        return "\n".join(lines[-n:])

    def describe(self, n: int = 80) -> str:
        return (
            f"command: {' '.join(self.args)}\nexit status: {self.returncode}\n"
            f"--- last {n} lines of stdout+stderr ---\n{self.tail(n)}"
        )


def run(
    args: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> Result:
    """Run a command, capturing its output; fail the test with the output tail if ``check``."""
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        pytest.fail(f"timed out after {timeout} s: {' '.join(args)}\n{out[-6000:]}")
    result = Result(list(args), proc.returncode, proc.stdout, proc.stderr)
    if check and result.returncode != 0:
        pytest.fail(result.describe())
    return result


def snakemake(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> Result:
    return run([*SNAKEMAKE, *args], cwd=cwd, env=env, timeout=timeout, check=check)


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from the ``Job stats`` table of ``snakemake -n`` (empty: nothing to do)."""
    if "Nothing to be done" in output:
        return {}
    match = re.search(r"^Job stats:\n(.*?)^total\s+\d+", output, re.M | re.S)
    if match is None:
        raise AssertionError(f"no 'Job stats' table in the dry run output:\n{output[-4000:]}")
    counts = {}
    for line in match.group(1).splitlines():
        row = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if row and row.group(1) != "job":
            counts[row.group(1)] = int(row.group(2))
    return counts


def reasons(output: str, rule: str) -> list[str]:
    """The ``reason:`` lines of the dry-run jobs of one rule."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", output)
    return [
        line.strip()
        for block in blocks
        if re.match(rf"(?:local)?rule {rule}:", block.strip())
        for line in block.splitlines()
        if line.strip().startswith("reason:")
    ]


def copy_workflow(dest: Path) -> Path:
    """A snapshot of the workflow (and package source) in ``dest``; returns its Snakefile.

    Running the snapshot (with its ``src`` first on PYTHONPATH) keeps the tests independent of
    edits made to the checkout while they run, and lets them edit package code safely.
    """
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(src, dest / part)
    return dest / "Snakefile"


def pythonpath_env(workflow_dir: Path) -> dict[str, str]:
    """Environment that makes the snapshot's package the one that jobs import."""
    parts = [str(workflow_dir / "src"), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in parts if p)}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_config(**sections: dict) -> dict:
    """tiny.yaml with some sections of its (only) experiment updated key by key."""
    cfg = load_yaml(TINY)
    exp = cfg["experiments"][0]
    for name, values in sections.items():
        exp[name] = {**exp.get(name, {}), **values}
    return cfg


def partial_files(root: Path) -> list[Path]:
    """Leftovers of interrupted atomic writes (``.<name>.partial-<pid>``)."""
    return sorted(p for p in root.rglob(".*.partial-*"))


# Where IB_REFERENCE_DIR points the tests at the reference checkpoints (tests/conftest.py), the
# dry runs pass it on as reference_dir; otherwise configs keep their own (../shared/reference).
REFERENCE_OVERRIDE = os.environ.get("IB_REFERENCE_DIR")


def missing_weights(cfg, cwd: Path) -> list[str]:
    """Imported weights files of a validated WorkflowConfig that do not exist (from ``cwd``)."""
    missing = []
    for e in cfg.experiments:
        if e.model.weights is not None:
            path = e.model.weights.replace("{reference_dir}", cfg.reference_dir)
            if not (cwd / path).exists():
                missing.append(path)
    return missing


def planned_jobs(output: str) -> list[tuple[str, list[str]]]:
    """(rule, outputs) of every job that a dry run lists."""
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:[ \t]+.*\n?)*)", output, re.M):
        outputs = []
        for line in m.group(2).splitlines():
            line = line.strip()
            if line.startswith("output:"):
                outputs = [p.strip() for p in line[len("output:") :].split(",") if p.strip()]
        jobs.append((m.group(1), outputs))
    return jobs


def sharded_job_counts(n_shards: int, n_layers: int = 4, n_methods: int = 2) -> dict[str, int]:
    """Jobs of the sharded stages from extraction to the gathered edges (extract.n_shards)."""
    return {
        "extract_shard": n_shards,
        "gather_stats": 1,
        "shard_m_dash": n_shards * (n_layers - 1),
        "fit_layer": n_methods * n_layers,
        "assemble_basis": n_methods,
        "shard_edges": n_shards * n_methods,
        "gather_edges": n_methods,
    }
