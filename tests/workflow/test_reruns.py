"""Rerun only what changed (conventions §5): dry runs against the finished tiny run.

Each test plans with ``snakemake -n`` and reads the ``Job stats`` table; a dry run records
nothing, so the tests do not disturb one another. Package edits are made to the run's own
workflow snapshot (its code inputs are anchored at ``workflow.basedir``) and undone afterwards,
content and mtime.

"Everything downstream of a rule" is what ``snakemake -n --forcerun <rule>`` plans on the
finished run, so that new downstream stages need no change here; the tests also pin the stages
that must (and must not) be in it.
"""

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from smk_helpers import job_counts, reasons, tiny_config, write_yaml

pytestmark = pytest.mark.slow

UPSTREAM_OF_BASIS = ("train_model", "import_model", "extract_activations")


@contextmanager
def restored(path: Path):
    """Put ``path`` back exactly (bytes and timestamps) after the block."""
    data, st = path.read_bytes(), path.stat()
    try:
        yield path
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def downstream(tiny_run):
    """Jobs per rule that forcing ``rule`` (and nothing else) would rerun."""
    cache = {}

    def counts(rule: str) -> dict[str, int]:
        if rule not in cache:
            cache[rule] = job_counts(tiny_run.smk("-n", "--forcerun", rule).output)
        return cache[rule]

    return counts


@pytest.fixture(scope="module")
def downstream_of_basis(downstream):
    counts = downstream("fit_basis")
    # The stages named in the issue, whatever evaluation stages follow them.
    expected = {
        "fit_basis": 2,
        "compute_edges": 2,
        "cluster_graph": 2,
        "summarize_experiment": 1,
        "all": 1,
    }
    assert {rule: counts.get(rule) for rule in expected} == expected, counts
    assert not set(counts) & set(UPSTREAM_OF_BASIS), counts
    return counts


def test_second_dry_run_has_nothing_to_do(tiny_run):
    result = tiny_run.dry_run()
    assert "Nothing to be done" in result.output, result.describe()
    assert job_counts(result.output) == {}


def test_cluster_setting_reruns_only_clustering_and_report(tiny_run, downstream, tmp_path):
    """Leiden's resolution reaches cluster_graph only; then what reads modules.json (the
    summary and the explorer)."""
    assert downstream("cluster_graph") == {
        "cluster_graph": 2,
        "summarize_experiment": 1,
        "build_explorer": 1,
        "all": 1,
    }
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(cluster={"resolution": 0.5}))
    result = tiny_run.dry_run(configfile=cfg)
    assert job_counts(result.output) == downstream("cluster_graph"), result.describe()
    assert all("Params have changed" in r for r in reasons(result.output, "cluster_graph"))


def test_basis_setting_reruns_basis_and_downstream_only(tiny_run, downstream_of_basis, tmp_path):
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(basis={"truncation": 1.0e-8}))
    result = tiny_run.dry_run(configfile=cfg)
    assert job_counts(result.output) == downstream_of_basis, result.describe()
    assert all("Params have changed" in r for r in reasons(result.output, "fit_basis"))


def test_editing_a_package_module_reruns_its_stage_and_downstream(tiny_run, downstream_of_basis):
    basis_py = tiny_run.workflow / "src" / "interaction_basis" / "basis.py"
    with restored(basis_py):
        with basis_py.open("a") as f:
            f.write("\n# an edit that the code inputs must notice\n")
        result = tiny_run.dry_run()
    assert job_counts(result.output) == downstream_of_basis, result.describe()
    fit_reasons = reasons(result.output, "fit_basis")
    assert fit_reasons and all("basis.py" in r for r in fit_reasons), fit_reasons


def test_touching_a_package_module_reruns_nothing(tiny_run):
    basis_py = tiny_run.workflow / "src" / "interaction_basis" / "basis.py"
    with restored(basis_py):
        now = time.time() + 5  # safely newer than every output
        os.utime(basis_py, (now, now))
        result = tiny_run.dry_run()
    assert job_counts(result.output) == {}, result.describe()


def test_ablation_tolerance_reruns_only_the_ablation_and_report(tiny_run, tmp_path):
    """edge_delta reaches ablate_edges; then the modules from its ε, the report figures and
    the explorer (which shows evaluation.json)."""
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(evaluate={"edge_delta": 0.01}))
    result = tiny_run.dry_run(configfile=cfg)
    assert job_counts(result.output) == {
        "ablate_edges": 2,
        "cluster_resolutions": 2,
        "make_report_figures": 1,
        "build_explorer": 1,
        "all": 1,
    }, result.describe()
    assert all("Params have changed" in r for r in reasons(result.output, "ablate_edges"))
