"""``python -m interaction_basis.verify`` on the finished tiny run: a flipped byte, a deleted
chunk and a truncated JSON are found without computing anything, and the one command it prints
rebuilds exactly those results and what depends on them (issue 23, point 3)."""

import shlex
import sys

import pytest
from smk_helpers import job_counts, run

pytestmark = pytest.mark.slow


def verify(tiny_run, workdir):
    return run(
        [sys.executable, "-m", "interaction_basis.verify"],
        cwd=workdir,
        env=tiny_run.env,
        check=False,
    )


def test_verify_finds_damage_and_its_command_rebuilds_it(tiny_run, tmp_path):
    workdir = tiny_run.copy_run(tmp_path / "run")
    results = tiny_run.results(workdir)
    chunk = results / "lib" / "basis.zarr" / "ln2.0" / "C" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    (results / "pca" / "edges.zarr" / "ln1.0__ln2.0" / "E" / "c" / "0" / "0").unlink()
    modules = results / "lib" / "modules.json"
    modules.write_text(modules.read_text()[:40])

    found = verify(tiny_run, workdir)
    assert found.returncode == 1, found.describe()
    assert "3 damaged" in found.stdout, found.describe()
    assert "results/tiny/lib/basis.zarr: " in found.stdout and "ln2.0/C" in found.stdout
    assert "results/tiny/pca/edges.zarr: ln1.0__ln2.0/E has 0 of its 1 chunks" in found.stdout
    assert "results/tiny/lib/modules.json: not readable as JSON" in found.stdout
    command = next(line.strip() for line in found.stdout.splitlines() if "snakemake" in line)
    args = shlex.split(command)
    assert args[:5] == ["snakemake", "--cores", "all", "--forcerun", "results/tiny/lib/basis.zarr"]

    # Exactly the damaged results and what depends on them; not training or extraction.
    plan = job_counts(tiny_run.smk("-n", *args[1:], workdir=workdir).output)
    assert "train_model" not in plan and "extract_activations" not in plan, plan
    assert plan["fit_basis"] == 1 and plan["compute_edges"] == 2, plan
    assert plan["cluster_graph"] == 2, plan
    rebuilt = tiny_run.smk(*args[1:], workdir=workdir, timeout=1200)
    assert rebuilt.returncode == 0
    fixed = verify(tiny_run, workdir)
    assert fixed.returncode == 0 and "intact" in fixed.stdout, fixed.describe()
    assert "Nothing to be done" in tiny_run.dry_run(workdir=workdir).output
