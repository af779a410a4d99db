"""What a language model's run asks of a cluster, shown by planning: each model job's memory,
runtime and GPU from the model's shape (config/gpt2.yaml with GPT-2's config.json in place of
the download), the expected size of the large stores, and a run that does not fit on the
results folder's filesystem refused before any job."""

import json
import re

import pytest
from smk_helpers import REPO, snakemake, write_yaml

from interaction_basis import resources as r
from interaction_basis.config import check_files, default_config_file
from lm_fixtures import write_corpus, write_tiny_gpt2

pytestmark = pytest.mark.slow

# openai-community/gpt2's config.json, as download_model stores it.
GPT2_CONFIG = {
    "model_type": "gpt2",
    "n_layer": 12,
    "n_embd": 768,
    "n_head": 12,
    "n_inner": None,
    "n_positions": 1024,
    "vocab_size": 50257,
}


def _filled_profile(tmp_path):
    """profiles/slurm with its placeholders filled in, as a user would."""
    text = (REPO / "profiles" / "slurm" / "profile.yaml").read_text()
    text = text.replace('"<account>"', '"acct"').replace('"<cpu-partition>"', '"cpu"')
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "profile.yaml").write_text(text)
    return tmp_path / "profile"


def _gpt2_plan() -> r.Plan:
    """The plan of config/gpt2.yaml, built from the config as the workflow builds it."""
    e = check_files([str(REPO / "config" / "gpt2.yaml")], default_config_file()).experiments[0]
    shape = r.shape_from_config(GPT2_CONFIG)
    return r.Plan(
        shape=shape,
        node_layers=tuple(e.extract.node_layers),
        dtype=e.extract.dtype,
        batch_size=e.extract.batch_size,
        n_ctx=e.model.text.n_ctx,
        n_samples=e.model.text.n_samples,
        n_stats_samples=e.model.text.n_stats_samples,
        n_shards=e.extract.n_shards,
        store_activations=e.extract.store_activations,
        lib=True,
        n_methods=2,
        m_dash_pos=e.basis.sources.n_pos,
        edges_pos=e.edges.n_sources_pos,
    )


def _job_resources(output: str, rule: str) -> dict[str, str]:
    """The ``resources:`` of the first job of ``rule`` that ``snakemake -n`` lists."""
    block = re.search(rf"^rule {rule}:\n(.*?)\n\n", output, re.M | re.S)
    assert block, output[-3000:]
    line = re.search(r"^\s+resources: (.*)$", block.group(1), re.M).group(1)
    return dict(item.split("=", 1) for item in line.split(", "))


def test_gpt2_jobs_ask_for_what_the_model_needs(tmp_path):
    workdir = tmp_path / "run"
    model = workdir / "resources" / "models" / "gpt2"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps(GPT2_CONFIG))
    result = snakemake(
        "-n",
        "--workflow-profile",
        str(_filled_profile(tmp_path)),
        "--configfile",
        str(REPO / "config" / "gpt2.yaml"),
        "--directory",
        str(workdir),
        cwd=REPO,
    )
    plan = _gpt2_plan()
    out = result.output
    # the disk plan: GPT-2's activations as measured (0.62 GB per 1024-token chunk)
    assert "Plan of gpt2 (resources/models/gpt2/config.json: 12 layers" in out, out[-3000:]
    assert "disk: activations 313 GB" in out
    edges = _job_resources(out, "compute_edges")
    assert edges["gpu"] == "1"  # extract.device cuda
    assert int(edges["mem_mb"]) == r.mem_mb(r.stage_memory_bytes(plan, "edges")) > 4000
    flops = r.stage_flops_per_sample(plan, "edges") * plan.n_samples
    assert int(edges["runtime"]) == r.runtime_minutes(flops, gpu=True, threads=2)
    extract = _job_resources(out, "extract_activations")
    assert int(extract["mem_mb"]) == r.mem_mb(r.stage_memory_bytes(plan, "extract"))
    assert extract["gpu"] == "1" and extract["slurm_account"] == "acct"
    # the feature evidence: its own formula (the forward pass's fell 4 GB short; issue 27)
    e = check_files([str(REPO / "config" / "gpt2.yaml")], default_config_file()).experiments[0]
    f = e.interpret
    features = r.features_memory_bytes(
        plan,
        n_held_out=e.model.text.n_eval_samples,
        batch_size=f.batch_size,
        top_k=f.top_k,
        window=f.window,
        n_quantiles=len(f.quantiles),
        n_quantile_rows=f.n_quantile_rows,
        n_direct=f.n_direct,
    )
    interpret = _job_resources(out, "interpret_features")
    assert int(interpret["mem_mb"]) == r.mem_mb(features) > int(extract["mem_mb"])
    # the cluster jobs: CPU only, the graph's bound (every feature pair) and the config's
    # Leiden (igraph), once per evaluate.resolutions for cluster_resolutions
    sweep = _job_resources(out, "cluster_resolutions")
    assert "gpu" not in sweep and "gpu" not in _job_resources(out, "cluster_graph")
    assert int(sweep["mem_mb"]) == r.mem_mb(r.cluster_memory_bytes(plan)) > 16000
    runs = len(e.evaluate.resolutions)
    explorer = _job_resources(out, "build_explorer")
    assert int(explorer["mem_mb"]) == r.mem_mb(r.explorer_memory_bytes(plan)) > 8000
    assert int(sweep["runtime"]) == r.cluster_minutes(
        plan, implementation="igraph", n_iterations=e.cluster.n_iterations, n_runs=runs
    )
    assert f"compute_edges x2: mem_mb {edges['mem_mb']}, runtime {edges['runtime']} min" in out


def test_gpt2_dry_run_stops_on_the_profile_placeholders(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = snakemake(
        "-n",
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--configfile",
        str(REPO / "config" / "gpt2.yaml"),
        "--directory",
        str(workdir),
        cwd=REPO,
        check=False,
    )
    assert result.returncode != 0
    assert "slurm_account (default-resources) is still the placeholder '<account>'" in (
        result.output
    ), result.describe()
    assert "profiles/slurm/profile.yaml" in result.output
    assert "Job stats" not in result.output


@pytest.fixture
def huge_lm(tmp_path):
    """A language model with far more chunks than any disk holds (planning needs only its
    config.json: nothing is tokenized before the check)."""
    docs = write_corpus(tmp_path / "corpus" / "stories.txt")
    write_tiny_gpt2(tmp_path / "model", docs)
    text = {"source": str(tmp_path / "corpus"), "n_ctx": 8, "n_samples": 10**10}
    text |= {"max_documents": 40, "n_eval_documents": 15, "n_eval_samples": 6}

    def config(**extract):
        experiment = {
            "name": "lm",
            "model": {"kind": "hf", "hub": {"source": str(tmp_path / "model")}, "text": text},
            "extract": {"batch_size": 8, **extract},
            "evaluate": {"metric": "ce_loss"},
        }
        return write_yaml(tmp_path / f"config{len(extract)}.yaml", {"experiments": [experiment]})

    return tmp_path, config


def test_a_run_that_does_not_fit_on_disk_is_refused(huge_lm):
    tmp_path, config = huge_lm
    workdir = tmp_path / "run"
    args = ("--configfile", str(config()), "--directory", str(workdir))
    result = snakemake("--cores", "1", *args, cwd=REPO, check=False)
    assert result.returncode != 0, result.describe()
    out = result.output
    assert "Not enough disk space: the stores still to be written need" in out, out[-3000:]
    assert f"the filesystem of results ({workdir})" in out
    assert "extract.store_activations: false (lm:" in out
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()
    # a dry run prints the plan and does not refuse
    dry = snakemake("-n", *args, cwd=REPO)
    assert re.search(r"Plan of lm .*\n  disk: activations \d+(\.\d+)? TB", dry.output)
    # without stored activations only the statistics are kept: the plan says so
    small = ("--configfile", str(config(store_activations=False)), "--directory", str(workdir))
    dry = snakemake("-n", *small, cwd=REPO)
    assert re.search(
        r"disk: activations \d+(\.\d+)? kB.*\(extract.store_activations: false\)", dry.output
    )
