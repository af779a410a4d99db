"""Sharded stages (extract.n_shards > 1) against the unsharded tiny run.

The sharded run reuses the tiny run's trained model (a copy of its run folder, with every
other result removed), so both runs analyse the same weights. A second snapshot of the workflow
whose extract_shard adapter fails for shard 1 while a marker file exists simulates a failed
shard job.
"""

import json
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import xarray as xr
from smk_helpers import (
    copy_workflow,
    job_counts,
    pythonpath_env,
    sharded_job_counts,
    snakemake,
    tiny_config,
    write_yaml,
)

pytestmark = pytest.mark.slow

N_SHARDS = 3  # the tiny run has 4 batches of 64: shards of 1, 1 and 2 batches
FAIL_MARKER = "FAIL_SHARD_1"


def _open(path):
    return xr.open_datatree(path, engine="zarr", consolidated=False)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def sharded(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    workdir = tiny_run.copy_run(root / "run")
    for path in (workdir / "results" / "tiny").iterdir():
        if path.name != "model":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    configfile = write_yaml(root / "sharded.yaml", tiny_config(extract={"n_shards": N_SHARDS}))
    result = tiny_run.smk("--cores", "2", "all_clusters", configfile=configfile, workdir=workdir)
    return tiny_run.results(), tiny_run.results(workdir), result


def test_sharded_run_uses_shard_jobs(sharded):
    _, _, result = sharded
    jobs = Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", result.output, re.M))
    expected = {**sharded_job_counts(N_SHARDS), "cluster_graph": 2, "all_clusters": 1}
    assert jobs == expected, result.output[-3000:]


def test_sharded_statistics_equal_unsharded(sharded):
    plain, shards, _ = sharded
    acts, stats = _open(plain / "activations.zarr"), _open(shards / "stats.zarr")
    assert list(stats.attrs["node_layers"]) == list(acts.attrs["node_layers"])
    assert stats.attrs["n_samples"] == acts.attrs["n_samples"]
    for layer in acts.attrs["node_layers"]:
        assert stats[layer].attrs["count"] == acts[layer].attrs["count"]
        for var in ("mean", "gram"):
            assert _rel(stats[layer][var].values, acts[layer][var].values) < 1e-12, (layer, var)


@pytest.mark.parametrize("method", ["lib", "pca"])
def test_sharded_bases_and_edges_equal_unsharded(sharded, method):
    """Every sum is compensated (correctly rounded), so shards change no bit: the issue asks
    for 1e-12 relative, and the sharded results are in fact identical."""
    plain, shards, _ = sharded
    a, b = _open(plain / method / "basis.zarr"), _open(shards / method / "basis.zarr")
    assert list(a.attrs["node_layers"]) == list(b.attrs["node_layers"])
    for layer in a.attrs["node_layers"]:
        ga, gb = a[layer], b[layer]
        assert set(ga.data_vars) == set(gb.data_vars), layer
        for var in ga.data_vars:
            assert ga[var].shape == gb[var].shape, (layer, var)
            assert _rel(gb[var].values, ga[var].values) < 1e-12, (layer, var)
    ea, eb = _open(plain / method / "edges.zarr"), _open(shards / method / "edges.zarr")
    assert [tuple(p) for p in ea.attrs["pairs"]] == [tuple(p) for p in eb.attrs["pairs"]]
    for group in ea.children:
        assert _rel(eb[group]["E"].values, ea[group]["E"].values) < 1e-12, group
    modules_a = json.loads((plain / method / "modules.json").read_text())
    modules_b = json.loads((shards / method / "modules.json").read_text())
    assert modules_a["nodes"] == modules_b["nodes"]
    assert modules_a["modularity"] == pytest.approx(modules_b["modularity"], rel=1e-9)


def test_failed_shard_is_the_only_one_rerun(tiny_run, tmp_path):
    workflow = tmp_path / "workflow"
    copy_workflow(workflow)
    adapter = workflow / "scripts" / "extract_shard.py"
    adapter.write_text(
        adapter.read_text().replace(
            "run_stage(snakemake, extract_shard)",
            # Inside the stage, so that the failure goes into the rule log as a real one does.
            "import functools, os\n"
            "@functools.wraps(extract_shard)\n"
            "def failing(**kw):\n"
            f"    if snakemake.wildcards.shard == '1' and os.path.exists({FAIL_MARKER!r}):\n"
            "        raise RuntimeError('simulated failure of shard 1')\n"
            "    extract_shard(**kw)\n"
            "run_stage(snakemake, failing)",
        )
    )
    workdir = tiny_run.copy_run(tmp_path / "run")  # the trained model comes along
    configfile = write_yaml(tmp_path / "sharded.yaml", tiny_config(extract={"n_shards": N_SHARDS}))
    target = "results/tiny/stats.zarr"

    def smk(*args, target=target, check=True):
        # targets before --configfile, which takes every word up to the next option
        return snakemake(
            *args,
            target,
            "--snakefile",
            str(workflow / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(configfile),
            cwd=workflow,
            env=pythonpath_env(workflow),
            check=check,
            timeout=900,
        )

    # Only the code inputs' paths differ from the tiny run's: the model is retrained here.
    smk("--cores", "2", target="results/tiny/model/weights.npz")
    (workdir / FAIL_MARKER).touch()
    failed = smk("--cores", "2", "--keep-going", check=False)
    assert failed.returncode != 0
    assert (
        "simulated failure of shard 1"
        in (workdir / "results" / "logs" / "extract_shard" / "tiny" / "1.log").read_text()
    )
    shards = workdir / "results" / "tiny" / "shards"
    done = [(shards / str(i) / "activations.zarr").is_dir() for i in range(N_SHARDS)]
    assert done == [True, False, True]
    (workdir / FAIL_MARKER).unlink()
    plan = job_counts(smk("-n").output)
    assert plan == {"extract_shard": 1, "gather_stats": 1}, plan
    assert "shards/1/activations.zarr" in smk("-n").output
    smk("--cores", "2")
    assert job_counts(smk("-n").output) == {}
