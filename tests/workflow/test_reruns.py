"""Rerun only what changed (conventions §5): dry runs against the finished tiny run.

Each test plans with ``snakemake -n`` and reads the ``Job stats`` table; a dry run records
nothing, so the tests do not disturb one another. Package edits are made to the run's own
workflow snapshot (its code inputs point into it) and undone afterwards, content and mtime.

"Everything downstream of a rule" is what ``snakemake -n --forcerun <rule>`` plans on the
finished run, so that new downstream stages need no change here; the tests also pin the stages
that must (and must not) be in it.
"""

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from smk_helpers import job_counts, pythonpath_env, reasons, snakemake, tiny_config, write_yaml

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


@contextmanager
def edited(workflow: Path, module: str):
    """``module`` of the snapshot's package with one more line (restored afterwards)."""
    path = workflow / "src" / "interaction_basis" / module
    with restored(path):
        with path.open("a") as f:
            f.write("\n# an edit that the code inputs must notice\n")
        yield path


def _union(*counts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for rule, n in c.items():
            out[rule] = max(out.get(rule, 0), n)
    return out


def test_editing_a_package_module_reruns_its_stage_and_downstream(tiny_run, downstream_of_basis):
    with edited(tiny_run.workflow, "lib/basis.py"):
        result = tiny_run.dry_run()
    assert job_counts(result.output) == downstream_of_basis, result.describe()
    fit_reasons = reasons(result.output, "fit_basis")
    assert fit_reasons and all("lib/basis.py" in r for r in fit_reasons), fit_reasons


@pytest.mark.parametrize(
    ("module", "stages"),
    [
        ("models/hf.py", ()),  # the language-model kind: no mod-add job uses it
        ("data/text.py", ()),  # tokenize_dataset and the LM kind only
        ("graph/clustering.py", ("cluster_graph", "cluster_resolutions")),
        ("report/figures.py", ("summarize_experiment", "make_report_figures")),
        # Interpretation is not code of the bases (the kinds' concerns, issue 24).
        ("interpret/explorer.py", ("build_explorer",)),
        (
            "interpret/fourier.py",
            ("cluster_graph", "cluster_resolutions", "interpret_features", "build_explorer"),
        ),
    ],
)
def test_code_inputs_follow_the_import_graph(tiny_run, downstream, module, stages):
    """Editing a module reruns exactly the stages whose code imports it, and what follows them
    (``--forcerun`` of those stages), never what comes before; editing another model kind's
    code reruns nothing (models/hf.py was missing from the hand-kept list this replaced)."""
    with edited(tiny_run.workflow, module):
        result = tiny_run.dry_run()
    assert job_counts(result.output) == _union(*map(downstream, stages)), result.describe()
    assert not set(job_counts(result.output)) & {*UPSTREAM_OF_BASIS, "fit_basis", "compute_edges"}


def test_touching_a_package_module_reruns_nothing(tiny_run):
    basis_py = tiny_run.workflow / "src" / "interaction_basis" / "lib/basis.py"
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


def test_moved_project_has_nothing_to_do(tiny_run, tmp_path):
    """Workflow and run folder copied together elsewhere (mtimes kept, as a cluster clone or
    `cp -a` does): Snakemake's record of inputs must not hold the old absolute paths."""
    moved = tmp_path / "elsewhere"
    workflow = moved / tiny_run.workflow.name
    workdir = moved / tiny_run.workdir.name
    shutil.copytree(tiny_run.workflow, workflow, symlinks=True)
    shutil.copytree(tiny_run.workdir, workdir, symlinks=True)
    result = snakemake(
        "-n",
        "--snakefile",
        str(workflow / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workflow / tiny_run.configfile.name),
        cwd=workflow,
        env=pythonpath_env(workflow),
    )
    assert job_counts(result.output) == {}, result.describe()


@pytest.mark.parametrize(
    "model",
    [{"mlp": {"lr": 0.5}}, {"hub": {"source": "org/other"}, "data": {"split_seed": 3}}],
    ids=["mlp_lr", "hub_source_and_data"],
)
def test_other_kinds_settings_rerun_nothing(tiny_run, tmp_path, model):
    """The tiny experiment is mod-add: the MLP, image-data and hub sections are not its own."""
    cfg = tiny_config()
    cfg["experiments"][0]["model"].update(model)
    result = tiny_run.dry_run(configfile=write_yaml(tmp_path / "tiny.yaml", cfg))
    assert job_counts(result.output) == {}, result.describe()


def test_stored_provenance_holds_only_the_kinds_settings(tiny_run):
    for store in ("activations.zarr", "lib/basis.zarr", "lib/features.zarr"):
        attrs = json.loads((tiny_run.results() / store / "zarr.json").read_text())["attributes"]
        model = json.loads(attrs["config"])["model"]
        assert set(model) == {"kind", "weights", "train"}, (store, model)


def test_extract_batch_size_is_a_result_setting(tiny_run, tmp_path):
    """Not a pure speed setting (batch-wise sums and per-batch sources change the last bits),
    so it reruns extraction and what follows, but never training."""
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(extract={"batch_size": 32}))
    counts = job_counts(tiny_run.dry_run(configfile=cfg).output)
    assert counts.get("extract_activations") == 1 and "train_model" not in counts, counts


def test_evaluate_batch_size_reruns_only_the_ablations(tiny_run, tmp_path):
    """It defines ce_loss (a mean of per-batch means), so it is a result setting of the
    ablation stages, and of nothing before them."""
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(evaluate={"batch_size": 128}))
    counts = job_counts(tiny_run.dry_run(configfile=cfg).output)
    assert counts.get("ablate_nodes") == 2 and counts.get("ablate_edges") == 2, counts
    assert not set(counts) & {*UPSTREAM_OF_BASIS, "fit_basis", "compute_edges"}, counts


def test_adding_a_method_runs_only_its_jobs(tiny_run, tmp_path):
    """Adding neuron plans the neuron jobs and what aggregates over the methods (summary,
    report figures, explorer), not the lib and pca jobs (before: every fit_basis job held the
    whole list of methods in its params, and 25 jobs were planned)."""
    cfg = write_yaml(
        tmp_path / "tiny.yaml", tiny_config(basis={"methods": ["lib", "pca", "neuron"]})
    )
    result = tiny_run.dry_run(configfile=cfg)
    per_method = (
        "fit_basis",
        "compute_edges",
        "cluster_graph",
        "ablate_nodes",
        "ablate_edges",
        "cluster_resolutions",
        "interpret_features",
    )
    aggregates = ("summarize_experiment", "make_report_figures", "build_explorer", "all")
    assert job_counts(result.output) == dict.fromkeys(per_method + aggregates, 1), result.describe()
    for rule in per_method:
        assert all("Missing output files" in r for r in reasons(result.output, rule)), rule


def test_lib_settings_rerun_only_lib(tiny_run, tmp_path, downstream):
    """basis.seed, sources and integration are LIB's M′ settings: not in the PCA jobs' params."""
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(basis={"seed": 7}))
    result = tiny_run.dry_run(configfile=cfg)
    counts = job_counts(result.output)
    assert counts["fit_basis"] == 1 and counts["compute_edges"] == 1, result.describe()
    assert all("Params have changed" in r for r in reasons(result.output, "fit_basis"))
    assert "method=pca" not in result.output


def test_explorer_setting_reruns_only_the_explorer(tiny_run, tmp_path):
    """The page's settings (interpret.max_edges, page_examples) are not in interpret_features'
    params, so they rerun no method's features."""
    cfg = write_yaml(tmp_path / "tiny.yaml", tiny_config(interpret={"max_edges": 100}))
    result = tiny_run.dry_run(configfile=cfg)
    assert job_counts(result.output) == {"build_explorer": 1, "all": 1}, result.describe()
