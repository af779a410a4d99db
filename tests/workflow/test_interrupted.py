"""A job killed halfway leaves no output that a later stage would trust.

Two levels: ``interaction_basis.storage`` writes through a hidden ``.<name>.partial-<pid>`` sibling
that is renamed into place only when complete (checked with processes that SIGKILL themselves
mid-write), and the workflow plans exactly the missing work after an output is lost, whether it
was deleted or its job was killed (SIGKILL of the whole Snakemake process group).
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from smk_helpers import SNAKEMAKE, job_counts, partial_files, planned_jobs, reasons

from interaction_basis import storage

UPSTREAM = {"train_model", "import_model", "extract_activations"}

LIB_BASIS = "results/tiny/lib/basis.zarr"

KILL_ATOMIC_PATH = """
import os, signal, sys
from interaction_basis.storage import atomic_path

with atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "zarr.json").write_text("{}")
    os.kill(os.getpid(), signal.SIGKILL)
"""

# The real writer: the whole store is written to the partial path, then the process dies
# before the rename.
KILL_WRITE_EDGES = """
import os, signal, sys
import torch
import xarray as xr
from interaction_basis import storage

to_zarr = xr.DataTree.to_zarr

def to_zarr_then_die(self, *args, **kwargs):
    to_zarr(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

xr.DataTree.to_zarr = to_zarr_then_die
storage.write_edges(sys.argv[1], {("a", "b"): torch.ones(2, 3, dtype=torch.float64)}, {})
"""


def run_killed(script: str, target: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize(
    "script", [KILL_ATOMIC_PATH, KILL_WRITE_EDGES], ids=["atomic_path", "write_edges"]
)
def test_killed_write_leaves_no_final_path(script, tmp_path):
    target = tmp_path / "results" / "edges.zarr"
    run_killed(script, target)
    assert not target.exists()
    leftovers = partial_files(tmp_path)
    assert [p.name.split("-")[0] for p in leftovers] == [".edges.zarr.partial"], leftovers


def test_failed_write_cleans_up(tmp_path):
    from interaction_basis.storage import atomic_path

    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert partial_files(tmp_path) == []


@pytest.fixture
def died_in_fit_basis(tiny_run, tmp_path):
    """A copy of the tiny run in the state of one that died in fit_basis (lib): that job's
    output and everything built from it are missing (what ``--forcerun`` of it would redo).

    Returns (workdir, jobs per rule that must be planned). Deleting basis.zarr alone would
    rerun nothing: Snakemake does not rebuild a missing intermediate whose dependents are
    present and up to date.
    """
    workdir = tiny_run.copy_run(tmp_path / "run")
    plan = tiny_run.smk("-n", "--forcerun", LIB_BASIS, workdir=workdir)
    for _, outputs in planned_jobs(plan.output):
        for rel in outputs:
            path = workdir / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    expected = job_counts(plan.output)
    assert expected["fit_basis"] == 1 and not set(expected) & UPSTREAM, expected
    return workdir, expected


def _kill_in_fit_basis(tiny_run, workdir: Path) -> None:
    """Run plain ``snakemake`` and SIGKILL it, with every job it started, while fit_basis (lib)
    is running."""
    log = workdir / "results" / "logs" / "fit_basis" / "tiny" / "lib.log"
    log.unlink()
    args = [
        *SNAKEMAKE,
        "--cores",
        "1",
        "--snakefile",
        str(tiny_run.snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(tiny_run.configfile),
    ]
    console = workdir.parent / "snakemake.out"
    with console.open("w") as sink:
        # Its own session, so that one killpg takes Snakemake and every job it started.
        proc = subprocess.Popen(
            args,
            cwd=tiny_run.workflow,
            env={**os.environ, **tiny_run.env},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        tail = "\n".join(console.read_text().splitlines()[-60:])
        assert proc.poll() is None, f"snakemake ended before fit_basis (lib) ran:\n{tail}"
        assert log.exists(), f"fit_basis (lib) did not start within 10 minutes:\n{tail}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        _kill_strays(workdir)


@pytest.mark.slow
def test_killed_job_leaves_no_trusted_output(tiny_run, died_in_fit_basis):
    """SIGKILL the whole run while fit_basis (lib) is running: no basis.zarr appears, and the
    next dry run plans fit_basis and what follows, not training or extraction."""
    workdir, expected = died_in_fit_basis
    out = tiny_run.results(workdir)
    _kill_in_fit_basis(tiny_run, workdir)

    # A half-finished basis is at most a hidden partial sibling, never basis.zarr itself ...
    stray = [
        p.name for p in (out / "lib").iterdir() if not p.name.startswith(".basis.zarr.partial-")
    ]
    assert stray == [], stray
    result = tiny_run.dry_run(workdir=workdir)
    # ... and even if the kill had come after the rename, the incomplete marker would rerun it.
    assert not (out / "lib" / "basis.zarr").exists() or "incomplete" in result.output.lower()
    assert job_counts(result.output) == expected, result.describe()
    assert (out / "pca" / "basis.zarr").is_dir() and (out / "activations.zarr").is_dir()


@pytest.mark.slow
def test_bare_directory_of_a_killed_job_is_rebuilt_not_deleted_by_planning(
    tiny_run, died_in_fit_basis
):
    """A job killed after its output folder appeared (a writer that makes the folder first)
    leaves a bare basis.zarr: Snakemake's incomplete marker makes the next plain run rebuild it,
    and planning deletes nothing (before: every dry run removed such folders, and any *.zarr
    folder of a user's without zarr.json)."""
    workdir, expected = died_in_fit_basis
    store = tiny_run.results(workdir) / "lib" / "basis.zarr"
    _kill_in_fit_basis(tiny_run, workdir)
    (store / "ln1.0").mkdir(parents=True)
    result = tiny_run.dry_run(workdir=workdir)
    assert (store / "ln1.0").is_dir(), "planning deleted the killed job's folder"
    assert job_counts(result.output) == expected, result.describe()
    # Nothing else is forced: rerun-incomplete forces the outputs marked incomplete.
    assert reasons(result.output, "fit_basis") == ["reason: Forced execution"], result.describe()
    tiny_run.smk("--unlock", workdir=workdir)  # the killed run's lock, as the README says
    tiny_run.smk("--cores", "2", workdir=workdir)
    assert set(storage.read_bases(store)) == {"ln1.0", "ln2.0", "unembed", "output"}
    assert job_counts(tiny_run.dry_run(workdir=workdir).output) == {}


def _kill_strays(workdir: Path) -> None:
    """Kill any job process of this run that left the process group (by pid; ours only)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(workdir) in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_rerun_removes_a_killed_jobs_leftover(tiny_run, tmp_path):
    """A killed fit_basis left `.basis.zarr.partial-<pid>`: the job that writes basis.zarr again
    removes it, so no leftover survives the rerun."""
    workdir = tiny_run.copy_run(tmp_path / "run")
    lib = tiny_run.results(workdir) / "lib"
    leftover = lib / ".basis.zarr.partial-4194304"
    shutil.copytree(lib / "basis.zarr", leftover)
    target = "results/tiny/lib/basis.zarr"
    tiny_run.smk(target, "--cores", "2", "--forcerun", target, workdir=workdir)
    assert partial_files(workdir) == []
    assert (lib / "basis.zarr").is_dir()
