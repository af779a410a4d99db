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
time. The runs start in the background as soon as collection selects a test of this module
(``tests/workflow/conftest.py``), so in a full test run these minutes, mostly spent waiting for
the polling, overlap the other tests.
"""

import os
import re

import pytest
from slurm_cluster import BACKGROUND, N_SHARDS, JobRecord, slurm_megabytes, slurm_minutes
from smk_helpers import sharded_job_counts

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm_runs(pytestconfig):
    """The tiny experiment and a failing one (a corrupt weights file), run side by side on the
    local cluster; started at collection (``conftest.pytest_collection_finish``)."""
    outcome = pytestconfig.stash[BACKGROUND].outcome()
    if outcome.status == "skip":
        if os.environ.get("IB_REQUIRE_SLURM") == "1":
            pytest.fail(f"{outcome.message} (IB_REQUIRE_SLURM=1)")
        pytest.skip(outcome.message)
    if outcome.status != "ready":
        pytest.fail(outcome.message)
    return outcome.runs


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
    records = run.records
    requested, jobids = run.requested(), run.submitted_jobs()
    for rule, slurm_id, log in subs:
        assert log.is_file(), f"no SLURM log {log} for rule {rule}"
        text = log.read_text(errors="replace")
        assert re.search(rf"Finished jobid: \d+ \(Rule: {rule}\)", text), f"{log}:\n{text[-3000:]}"
        record = records.get(slurm_id, JobRecord("missing"))
        assert record.state == "COMPLETED", f"SLURM job {slurm_id} ({rule}): {record.state}"
        assert record.comment.startswith(f"rule_{rule}_"), record.comment
        # what the rule asked for reached sbatch: the job was granted its memory and time
        asked = requested[jobids[slurm_id]]
        assert slurm_megabytes(record.min_memory) == int(asked["mem_mb"]), (rule, record, asked)
        assert slurm_minutes(record.time_limit) == int(asked["runtime"]), (rule, record, asked)
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
    assert run.records.get(slurm_id, JobRecord("missing")).state == "FAILED"
