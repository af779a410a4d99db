"""The benchmark scripts still run against the current package (tiny sizes, one repetition):
their figures are in docs/performance.md, so API drift must not break them silently."""

import json
import os
import subprocess
import sys

import pytest
from smk_helpers import REPO

pytestmark = pytest.mark.slow


def _run(script: str, *args: str, tmp_path) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return json.loads(out.read_text())


def test_lm_memory_benchmark_runs(tmp_path):
    result = _run(
        "bench_lm_memory.py",
        *("--n-samples", "2", "--factor", "2", "--n-ctx", "8", "--batch-size", "2"),
        *("--reps", "1", "--threads", "1", "--n-embd", "16", "--vocab", "64"),
        tmp_path=tmp_path,
    )
    assert set(result["flat"]) == {"extract", "basis", "edges"}
    assert all(r["peak_rss_mib"] > 0 for r in result["results"].values())


def test_modadd_build_benchmark_runs(tmp_path, reference_dir):
    result = _run(
        "bench_modadd_build.py",
        *("--reps", "1", "--threads", "1", "--loop-samples", "2"),
        *("--reference-dir", str(reference_dir)),
        tmp_path=tmp_path,
    )
    build = result["results"]["current"]
    assert build["checks"]["dims"]["ln1.0"] == 115  # method §C.1.1: constant + 114 directions
    assert result["loop"]["max_rel_diff"] < 1e-10  # the batched build agrees with the loop


def test_ablation_benchmark_runs(tmp_path, reference_dir):
    result = _run(
        "bench_ablation.py",
        *("--reps", "1", "--threads", "1", "--max-samples", "200"),
        *("--reference-dir", str(reference_dir)),
        tmp_path=tmp_path,
    )
    seed0 = result["cases"]["seed0"]
    assert seed0["n_samples"] == 200
    assert set(seed0["results"]) == {
        f"{m} {a}->{b}"
        for m in ("lib", "pca")
        for a, b in (("ln1.0", "ln2.0"), ("ln2.0", "unembed"), ("unembed", "output"))
    }
    assert set(seed0["median_s_per_pair"]["current"]) == set(seed0["results"])


def test_lm_closed_form_benchmark_runs(tmp_path):
    result = _run(
        "bench_lm_closed_form.py",
        *("--n-embd", "16", "--n-layer", "1", "--n-head", "2", "--n-ctx", "8"),
        *("--n-samples", "2", "--reps", "1", "--threads", "1"),
        tmp_path=tmp_path,
    )
    assert set(result["speedup"]) == {"basis", "edges"}
    assert all(d < 1e-10 for d in result["max_rel_diff"].values()), result["max_rel_diff"]


def test_ablation_memory_benchmark_runs(tmp_path, tiny_run):
    result = _run(
        "bench_ablation_memory.py",
        *("--run", str(tiny_run.workdir), "--experiment", "tiny", "--reps", "1"),
        *("--configfile", str(tiny_run.configfile), "--threads", "1"),
        tmp_path=tmp_path,
    )
    assert all(len(v) == 1 and v[0] > 0 for v in result["peak_rss_mb"].values()), result


def test_lm_shapes_benchmark_plans_what_it_runs(tmp_path):
    """``--plan`` counts on fake tensors the FLOP that the measured run counts, and takes the
    same paths (TinyStories-1M's shape at 8 tokens: every section in closed form)."""
    tiny = ("--shapes", "tinystories", "--n-ctx", "8", "--vocab", "64")
    tiny += ("--sections", "attn_in,mlp_in,ln_final_out")
    plan = _run("bench_lm_shapes.py", *tiny, "--plan", tmp_path=tmp_path)
    measured = _run("bench_lm_shapes.py", *tiny, tmp_path=tmp_path)
    planned = plan["results"]["tinystories"]["sections"]
    ran = measured["results"]["tinystories"]["sections"]
    assert [r["section"] for r in ran] == [
        "attn_in.0 → ln2.0",
        "mlp_in.0 → ln1.1",
        "ln_final_out → unembed",
    ]
    for p, r in zip(planned, ran, strict=True):
        assert p["path"] == r["path"] == r["edges_path"] != "generic", (p, r)
        for phase in ("m_dash", "edges"):
            assert r[phase]["flop"] > 0 and r[phase]["cpu_seconds"] > 0 and r[phase]["finite"]
            assert p[phase]["flop"] == r[phase]["flop"], (phase, p, r)
        assert r["process_peak_rss_mib"] > 0
    ext = measured["extrapolated"]["tinystories"]
    assert (ext["chunks"], ext["n_ctx"], ext["n_blocks"]) == (50000, 200, 8)
    assert ext["flop"] > 0 and ext["gpu_seconds"] > 0 and not ext["context_as_config"]


def test_store_benchmark_runs(tmp_path):
    """``bench_store.py`` at one chunk, one repetition and a vocabulary of 64 (GPT-2 small's
    blocks: about a minute)."""
    result = _run(
        "bench_store.py",
        *("--chunks", "1", "--repeats", "1", "--threads", "1", "--vocab", "64"),
        tmp_path=tmp_path,
    )
    assert result["n_node_layers"] == 75 and result["disk_bytes_per_chunk"] > 0.5e9
    assert 0 < result["write_seconds"] and 0 < result["recompute_seconds"]
    assert result["jacobian"]["m_dash"] > result["jacobian"]["edges"] > 0


def test_clustering_benchmark_runs(tmp_path):
    """``bench_clustering.py`` on a small synthetic graph, both Leiden implementations."""
    rows = _run(
        "bench_clustering.py",
        *("--layers", "3", "--width", "60", "--block", "10", "--iterations", "2"),
        *("--repeats", "1"),
        tmp_path=tmp_path,
    )
    assert [r["implementation"] for r in rows] == ["leidenalg", "igraph"]
    for r in rows:
        assert r["vertices"] == 180 and 0 < r["graph_edges"] < 2 * 59 * 59
        assert set(r["leiden_s"]) == {"0.5", "1"} and r["bytes_per_edge"] >= 0


def test_explorer_benchmark_runs(tmp_path):
    result = _run(
        "bench_explorer.py",
        *("--dir", str(tmp_path / "stores"), "--layers", "4", "--width", "12"),
        *("--modules", "3", "--repeats", "1"),
        tmp_path=tmp_path,
    )
    assert result["cards"] == 2 * 4 * 12
    assert result["results"]["current"]["peak_rss_mib"] > 0
