"""The checkout's workflow parses: dry runs of every config, the linter and snakefmt.

These run in the repository root exactly as CI and the README do (a dry run takes no lock and
runs nothing; ``.snakemake/`` is git-ignored). ``--forceall`` makes the dry run plan every job,
whatever results/ already holds, so the job counts can be checked.
"""

import pytest
from smk_helpers import (
    REFERENCE_OVERRIDE,
    REPO,
    SNAKEFMT,
    job_counts,
    load_yaml,
    missing_weights,
    run,
    snakemake,
)
from snakemake.utils import update_config

from interaction_basis.config import WorkflowConfig

EXPERIMENT_FILES = sorted(
    p.name for p in (REPO / "config").glob("*.yaml") if p.name not in ("config.yaml", "schema.yaml")
)

pytestmark = pytest.mark.slow


def _expected_counts(cfg: WorkflowConfig) -> dict[str, int]:
    n_methods = sum(len(e.basis.methods) for e in cfg.experiments)
    return {
        "extract_activations": len(cfg.experiments),
        "fit_basis": n_methods,
        "compute_edges": n_methods,
        "cluster_graph": n_methods,
        "summarize_experiment": len(cfg.experiments),
        "all": 1,
    }


@pytest.mark.parametrize("configfile", [None, *EXPERIMENT_FILES])
def test_dry_run(configfile):
    args = ["-n", "--forceall"]
    merged = load_yaml(REPO / "config" / "config.yaml")
    if configfile is not None:
        args += ["--configfile", f"config/{configfile}"]
        update_config(merged, load_yaml(REPO / "config" / configfile))  # as Snakemake merges
    if REFERENCE_OVERRIDE:
        args += ["--config", f"reference_dir={REFERENCE_OVERRIDE}"]
        merged["reference_dir"] = REFERENCE_OVERRIDE
    cfg = WorkflowConfig.model_validate(merged)
    missing = missing_weights(cfg, REPO)
    if missing:
        pytest.skip(f"imported weights not found (reference checkpoints absent?): {missing}")
    result = snakemake(*args, cwd=REPO, timeout=300)
    counts = job_counts(result.output)
    expected = _expected_counts(cfg)
    for rule, n in expected.items():
        assert counts.get(rule) == n, f"{rule}: {counts}\n{result.describe()}"
    n_models = sum(
        counts.get(rule, 0) for rule in ("train_model", "import_model", "download_model")
    )
    assert n_models == len(cfg.experiments), result.describe()


def test_lint():
    result = snakemake("--lint", cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.describe()


def test_snakefmt_check():
    result = run([*SNAKEFMT, "--check", "."], cwd=REPO, timeout=120, check=False)
    assert result.returncode == 0, result.describe()


def test_default_config_runs_in_another_directory(tmp_path):
    """``--directory`` relocates a run (conventions §1), so the default config must still be
    found, and merged under any --configfile: the ``configfile:`` directive is resolved
    against the working directory unless anchored at ``workflow.basedir``."""
    result = snakemake("-n", "--directory", str(tmp_path), cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.describe()
    assert str(REPO / "config" / "config.yaml") in result.output, result.describe()
    assert not (tmp_path / "results").exists()
