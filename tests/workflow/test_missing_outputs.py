"""Nothing a user keeps under results/ is deleted, and every promised result comes back (issue 23).

Planning (``snakemake -n``, and the planning of every run) only reads: a user's own Zarr store
or folder under ``results/`` survives it, and a run. Rule ``all`` asks for every output of the
README's stage table, so that a plain ``snakemake`` rebuilds whatever is missing, and only what
is computed from it (never training, for a result after it).
"""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from smk_helpers import REPO, job_counts

from interaction_basis import storage

pytestmark = pytest.mark.slow

# The rules of the tiny run (mod-add trained here, unsharded, evaluation and explorer on).
TINY_RULES = {
    "train_model",
    "extract_activations",
    "fit_basis",
    "compute_edges",
    "cluster_graph",
    "summarize_experiment",
    "ablate_nodes",
    "ablate_edges",
    "cluster_resolutions",
    "make_report_figures",
    "interpret_features",
    "build_explorer",
}
METHODS = ("lib", "pca")


def promised_outputs() -> dict[str, set[str]]:
    """Per rule of the tiny run, the outputs that the README's stage table lists (expanded for
    experiment ``tiny`` and its methods). A name without a folder is a sibling of the path
    before it, as the table writes them."""
    table = (REPO / "README.md").read_text().split("## What it computes", 1)[1]
    promised: dict[str, set[str]] = {}
    for row in re.findall(r"^\|(.+)\|$", table.split("\n## ", 1)[0], re.M):
        cells = [c.strip() for c in row.split("|")]
        rules = set(re.findall(r"`(\w+)`", cells[0])) & TINY_RULES
        if not rules:
            continue
        paths, folder = set(), ""
        for name in re.findall(r"`([^`]+)`", cells[1]):
            if "/" in name:
                folder = name.rsplit("/", 1)[0]
                path = name
            else:
                path = f"{folder}/{name}"
            for method in METHODS:
                paths.add(path.format(experiment="tiny", method=method).rstrip("/"))
        for rule in rules:
            promised[rule] = paths
    assert set(promised) == TINY_RULES, f"rows not found in the README's table: {promised}"
    return promised


def all_inputs(tiny_run, workdir: Path | None = None) -> set[str]:
    out = tiny_run.smk("-n", "--forcerun", "all", workdir=workdir).output
    match = re.search(r"^(?:local)?rule all:\n\s+input: (.*)$", out, re.M)
    assert match, out[-3000:]
    return {p.strip() for p in match.group(1).split(",")}


def test_all_asks_for_every_promised_output(tiny_run):
    """So that a plain run brings back whatever is missing (before: summary.json,
    evaluation.json and explorer.html only)."""
    wanted = set().union(*promised_outputs().values())
    assert wanted - all_inputs(tiny_run) == set()


def _expected(*rules: str, both: tuple[str, ...] = ()) -> dict[str, int]:
    return {**dict.fromkeys(rules, 1), **dict.fromkeys(both, 2), "all": 1}


AGGREGATES = ("summarize_experiment", "make_report_figures", "build_explorer")

# A deleted output, and exactly what a plain run must plan: the job that writes it and what is
# computed from it.
REBUILDS = {
    "lib/basis.zarr": _expected(
        "fit_basis",
        "compute_edges",
        "cluster_graph",
        "ablate_nodes",
        "ablate_edges",
        "cluster_resolutions",
        "interpret_features",
        *AGGREGATES,
    ),
    "pca/edges.zarr": _expected(
        "compute_edges", "cluster_graph", "ablate_edges", "cluster_resolutions", *AGGREGATES
    ),
    "lib/modules.json": _expected("cluster_graph", "summarize_experiment", "build_explorer"),
    "pca/graph.graphml": _expected("cluster_graph", "summarize_experiment", "build_explorer"),
    "summary.md": _expected("summarize_experiment", "build_explorer"),
    "spectra.png": _expected("summarize_experiment", "build_explorer"),
    "edge_distribution.png": _expected("make_report_figures", "build_explorer"),
    "lib/node_ablation.json": _expected("ablate_nodes", "make_report_figures", "build_explorer"),
    "pca/modules_by_resolution.json": _expected(
        "cluster_resolutions", "make_report_figures", "build_explorer"
    ),
    "lib/features.zarr": _expected("interpret_features", "build_explorer"),
    "explorer": _expected("build_explorer"),
    "explorer.html": _expected("build_explorer"),
}


def _delete(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("output", sorted(REBUILDS))
def test_a_missing_output_is_planned_with_what_follows_it(tiny_run, tmp_path, output):
    workdir = tiny_run.copy_run(tmp_path / "run")
    _delete(tiny_run.results(workdir) / output)
    result = tiny_run.dry_run(workdir=workdir)
    assert job_counts(result.output) == REBUILDS[output], result.describe()


@pytest.mark.parametrize("output", ["model/training.png", "activations.zarr"])
def test_a_missing_early_output_reruns_its_job_and_everything_after(tiny_run, tmp_path, output):
    """Training (or extraction) reruns only when one of its own outputs is missing: then it and
    everything computed from it, as ``--forcerun`` of its rule plans."""
    workdir = tiny_run.copy_run(tmp_path / "run")
    rule = "train_model" if output.startswith("model/") else "extract_activations"
    expected = job_counts(tiny_run.smk("-n", "--forcerun", rule, workdir=workdir).output)
    _delete(tiny_run.results(workdir) / output)
    result = tiny_run.dry_run(workdir=workdir)
    assert job_counts(result.output) == expected, result.describe()
    assert expected[rule] == 1


def _user_files(workdir: Path) -> dict[Path, xr.Dataset | str]:
    """A user's own files under results/: Zarr v2 stores written with xarray (no zarr.json),
    inside and beside an experiment's folders, and a folder named like a store."""
    results = workdir / "results"
    ds = xr.Dataset({"x": ("i", np.arange(5.0))}, attrs={"who": "a user"})
    stores = [results / "modadd" / "mine.zarr", results / "tiny" / "lib" / "mine.zarr"]
    for store in stores:
        store.parent.mkdir(parents=True, exist_ok=True)
        ds.to_zarr(store, zarr_format=2, consolidated=False)
        assert not (store / "zarr.json").exists()
    notes = results / "notes.zarr" / "README"
    notes.parent.mkdir(parents=True)
    notes.write_text("my notes\n")
    return {**dict.fromkeys(stores, ds), notes: "my notes\n"}


def _assert_kept(files: dict[Path, xr.Dataset | str]) -> None:
    for path, content in files.items():
        assert path.exists(), f"{path} was deleted"
        if isinstance(content, str):
            assert path.read_text() == content
        else:
            xr.testing.assert_identical(xr.open_zarr(path, consolidated=False).load(), content)


def test_dry_run_keeps_user_files(tiny_run, tmp_path):
    """Before: planning removed every *.zarr folder under results/ without zarr.json."""
    workdir = tiny_run.copy_run(tmp_path / "run")
    files = _user_files(workdir)
    result = tiny_run.dry_run(workdir=workdir)
    _assert_kept(files)
    assert job_counts(result.output) == {}, result.describe()


def test_plain_run_rebuilds_missing_outputs_and_keeps_user_files(tiny_run, tmp_path):
    """Deleted by hand (or removed by Snakemake after a failed forced job): a plain
    ``snakemake`` brings them back, runs nothing else, and leaves the user's files alone."""
    workdir = tiny_run.copy_run(tmp_path / "run")
    files = _user_files(workdir)
    out = tiny_run.results(workdir)
    lost = [out / "lib" / "modules.json", out / "summary.md"]
    for path in lost:
        path.unlink()
    result = tiny_run.smk("--cores", "2", workdir=workdir)
    ran = re.findall(r"^(?:local)?rule (\w+):$", result.output, re.M)
    assert sorted(ran) == sorted(
        ["cluster_graph", "summarize_experiment", "build_explorer", "all"]
    ), result.describe()
    assert all(p.is_file() for p in lost)
    storage.read_json(out / "lib" / "modules.json")
    _assert_kept(files)
    assert job_counts(tiny_run.dry_run(workdir=workdir).output) == {}
