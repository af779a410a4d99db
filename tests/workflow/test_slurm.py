"""The workflow on a real (single-node) SLURM cluster, through snakemake-executor-plugin-slurm.

Running the workflow on SLURM (a real cluster):

1. ``pip install snakemake-executor-plugin-slurm`` (in requirements.txt).
2. Edit the ``# EDIT`` lines of ``profiles/slurm/profile.yaml`` (account, partitions, GPU model).
3. On a login node (or inside ``salloc``, never inside an ``sbatch`` job)::

       snakemake --workflow-profile profiles/slurm --configfile config/config.yaml

   Each rule becomes one ``sbatch`` job asking for the rule's ``threads`` (``--cpus-per-task``),
   ``mem_mb`` (``--mem``; doubled on a retry) and ``runtime`` (``-t``). The SLURM logs go to
   ``.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log``; the rule logs to
   ``results/logs/``.

This test does the same on a throwaway cluster on this machine: ``tests/slurm/setup_slurm.sh``
installs ``slurm-wlm`` and ``munge`` with apt-get where they are missing and starts munged,
slurmctld and slurmd (root, no systemd needed); ``tests/slurm/stop_slurm.sh`` stops them. The
test profile ``tests/slurm/profile`` polls with ``squeue`` (the test cluster has no accounting
database, so ``sacct`` cannot be used). To try it by hand::

    sudo tests/slurm/setup_slurm.sh          # state under $IB_SLURM_BASE (default /tmp/ib-slurm)
    snakemake --workflow-profile tests/slurm/profile --configfile tests/workflow/tiny.yaml \\
        --directory /tmp/tiny-slurm
    sudo tests/slurm/stop_slurm.sh

Run the test with ``pytest -m slurm tests/workflow/test_slurm.py`` (as root). It skips, with the
reason, where the cluster cannot be set up: not root, neither SLURM nor apt-get, or a real
/etc/slurm/slurm.conf. Set ``IB_REQUIRE_SLURM=1`` (CI) to make that a failure instead. A cluster
that was already running is reused and left running; one the fixture started is stopped.

Time: each level of the DAG costs one job (two Snakemake start-ups inside it, then the rule) plus
the plugin's polling (5, 20, 45, 80 s after a submission with the test profile): about 20 s
per level on quiet cores, 35-55 s on 2 cores shared with a load of ~8. The sharded tiny run up
to ``summary.json`` has 15 levels and 29 jobs: 8.5 minutes on 2 otherwise idle cores. The
failing run (one job) runs alongside it and adds nothing. apt-get install adds ~25 s the first
time.
"""

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from smk_helpers import (
    REPO,
    SNAKEMAKE,
    TINY,
    copy_workflow,
    load_yaml,
    sharded_job_counts,
    write_yaml,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SETUP = REPO / "tests" / "slurm" / "setup_slurm.sh"
STOP = REPO / "tests" / "slurm" / "stop_slurm.sh"
PROFILE = REPO / "tests" / "slurm" / "profile"
SKIP_CODE = 77  # setup_slurm.sh: the prerequisites are missing
RUN_TIMEOUT = 2400  # seconds per Snakemake run; `timeout -s INT` ends it (SIGTERM is ignored)
N_SHARDS = 2  # the tiny run on SLURM is sharded: one job per shard for extraction, M', edges

# The core pipeline up to the summary, sharded (model, shard activations, gathered statistics,
# per-layer M' shards and solves, edge shards and gathers, modules: 15 DAG levels, 29 SLURM
# jobs); the evaluation stages are rules of the same kind, left out to save minutes.
TINY_TARGETS = ("results/tiny/summary.json",)
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def _clean_env(**extra: str) -> dict[str, str]:
    """os.environ without SLURM_* (e.g. when pytest itself runs inside an allocation)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local test cluster, started for the session and stopped after it (if started here)."""
    pytest.importorskip(
        "snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm is not installed"
    )
    try:
        proc = subprocess.run(
            ["bash", str(SETUP)], capture_output=True, text=True, timeout=600, env=_clean_env()
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{SETUP} did not finish in {err.timeout} s")
    if proc.returncode == SKIP_CODE:
        reason = f"no SLURM test cluster: {proc.stderr.strip().splitlines()[-1]}"
        if os.environ.get("IB_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (IB_REQUIRE_SLURM=1)")
        pytest.skip(reason)
    if proc.returncode != 0:
        pytest.fail(f"{SETUP} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    started_here = proc.stdout.strip().splitlines()[-1] == "started"
    yield
    if started_here:  # leave a cluster that someone else started running
        subprocess.run(
            ["bash", str(STOP)], capture_output=True, text=True, timeout=120, env=_clean_env()
        )


@dataclass
class SlurmRun:
    """One ``snakemake --executor slurm`` run, in the background, output to a file."""

    workdir: Path
    configfile: Path
    workflow: Path
    targets: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    returncode: int | None = None
    seconds: float = 0.0

    @property
    def logfile(self) -> Path:
        return self.workdir.with_suffix(".out")

    @property
    def output(self) -> str:
        return self.logfile.read_text(errors="replace")

    def start(self) -> "SlurmRun":
        self.workdir.mkdir(parents=True)
        args = [
            "timeout",
            "-s",
            "INT",
            "-k",
            "60",
            str(RUN_TIMEOUT),
            *SNAKEMAKE,
            "--snakefile",
            str(self.workflow / "Snakefile"),
            "--workflow-profile",
            str(PROFILE),
            "--configfile",
            str(self.configfile),
            "--directory",
            str(self.workdir),
            *self.targets,
        ]
        env = _clean_env(
            PYTHONPATH=os.pathsep.join(
                p for p in (str(self.workflow / "src"), os.environ.get("PYTHONPATH", "")) if p
            )
        )
        self._t0 = time.monotonic()
        with self.logfile.open("w") as out:
            out.write(" ".join(args) + "\n")
            out.flush()
            self.proc = subprocess.Popen(
                args,
                cwd=self.workflow,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait(self) -> "SlurmRun":
        try:
            self.returncode = self.proc.wait(timeout=RUN_TIMEOUT + 120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.returncode = self.proc.wait()
        self.seconds = time.monotonic() - self._t0
        return self

    def describe(self, n: int = 60) -> str:
        lines = self.output.strip().splitlines()
        return (
            f"exit status {self.returncode} after {self.seconds:.0f} s; log {self.logfile}\n"
            f"--- last {n} lines ---\n" + "\n".join(lines[-n:])
        )

    def submissions(self) -> list[tuple[str, str, Path]]:
        """(rule, SLURM job id, SLURM log) of every submitted job."""
        subs = []
        for _, slurm_id, log in SUBMITTED.findall(self.output):
            log = Path(log)
            rule = re.fullmatch(
                r"rule_(\w+)", log.relative_to(self.workdir / ".snakemake" / "slurm_logs").parts[0]
            ).group(1)
            subs.append((rule, slurm_id, log))
        return subs


def squeue_records(job_ids) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (state, comment) for jobs slurmctld still knows (MinJobAge=600 s)."""
    args = ["squeue", "--states=all", "-h", "-o", "%i|%T|%k", "-j", ",".join(job_ids)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, env=_clean_env()).stdout
    return {
        i: (state, comment)
        for i, state, comment in (line.split("|", 2) for line in out.strip().splitlines())
    }


@pytest.fixture(scope="module")
def slurm_runs(slurm_cluster, tmp_path_factory):
    """The tiny experiment and a failing one (a corrupt weights file), run side by side."""
    root = tmp_path_factory.mktemp("slurm")
    workflow = root / "workflow"
    copy_workflow(workflow)  # a snapshot: edits to the checkout cannot disturb the runs

    bad_weights = root / "bad.npz"
    bad_weights.write_bytes(b"this is not a zip archive")
    tiny = load_yaml(TINY)
    bad_experiment = {**tiny["experiments"][0], "name": "bad"}
    bad_experiment["model"] = {**bad_experiment["model"], "weights": str(bad_weights)}
    bad_config = write_yaml(root / "bad.yaml", {"experiments": [bad_experiment]})

    tiny["experiments"][0]["extract"]["n_shards"] = N_SHARDS
    tiny_config = write_yaml(root / "tiny.yaml", tiny)  # a snapshot too
    good = SlurmRun(root / "tiny", tiny_config, workflow, TINY_TARGETS).start()
    bad = SlurmRun(root / "bad", bad_config, workflow).start()
    return good.wait(), bad.wait()


def test_tiny_runs_as_slurm_jobs(slurm_runs):
    run, _ = slurm_runs
    assert run.returncode == 0, run.describe()
    assert (run.workdir / "results" / "tiny" / "summary.json").is_file(), run.describe()

    # one SLURM job per scheduled job (the plan grows after the gather_stats checkpoint, so
    # count the jobs Snakemake announces; only local rules like `all` would run here)
    scheduled = {}
    for rule in re.findall(r"^(?:rule|checkpoint) (\w+):$", run.output, re.M):
        scheduled[rule] = scheduled.get(rule, 0) + 1
    subs = run.submissions()
    submitted = {}
    for rule, _, _ in subs:
        submitted[rule] = submitted.get(rule, 0) + 1
    assert submitted == scheduled, run.describe()
    assert submitted == {
        "train_model": 1,
        **sharded_job_counts(N_SHARDS),  # 4 node layers, lib and pca
        "cluster_graph": 2,
        "summarize_experiment": 1,
    }, run.describe()

    # each ran inside its SLURM job (the job's log shows the rule finishing), which completed
    records = squeue_records([slurm_id for _, slurm_id, _ in subs])
    for rule, slurm_id, log in subs:
        assert log.is_file(), f"no SLURM log {log} for rule {rule}"
        text = log.read_text(errors="replace")
        assert re.search(rf"Finished jobid: \d+ \(Rule: {rule}\)", text), f"{log}:\n{text[-3000:]}"
        state, comment = records.get(slurm_id, ("missing", ""))
        assert state == "COMPLETED", f"SLURM job {slurm_id} ({rule}): {state}"
        assert comment.startswith(f"rule_{rule}_"), comment
    # and every rule wrote its own log (results/logs/<rule>/...)
    for rule in submitted:
        assert any((run.workdir / "results" / "logs" / rule).rglob("*.log")), rule


def test_failed_slurm_job_fails_the_workflow(slurm_runs):
    _, run = slurm_runs
    assert run.returncode not in (0, 124, 137), run.describe()  # failed, not timed out
    out = run.output
    subs = run.submissions()
    assert [rule for rule, _, _ in subs] == ["import_model"], run.describe()
    _, slurm_id, slurm_log = subs[0]

    assert "Error in rule import_model" in out, run.describe()
    assert f"SLURM-job '{slurm_id}' failed" in out, run.describe()
    # the error names the rule log and the SLURM log; the SLURM log holds the traceback and
    # is printed (show-failed-logs), so the reason is in the workflow's own output too
    assert "results/logs/import_model/bad.log" in out, run.describe()
    assert str(slurm_log) in out, run.describe()
    assert slurm_log.is_file()
    assert "Cannot read" in slurm_log.read_text(errors="replace"), slurm_log.read_text()[-3000:]
    assert "Cannot read" in out, run.describe()
    assert squeue_records([slurm_id]).get(slurm_id, ("missing",))[0] == "FAILED"
