"""The local SLURM test cluster and the Snakemake runs on it (used by ``test_slurm.py``).

The runs start in the background as soon as collection has selected a SLURM test (see
``conftest.pytest_collection_finish``): they spend most of their minutes waiting for the
scheduler and the executor plugin's polling, so they overlap the rest of the suite instead of
adding to it. ``BackgroundSlurm.outcome`` waits for them when the SLURM tests run.
"""

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import pytest
from smk_helpers import REPO, SNAKEMAKE, TINY, copy_workflow, load_yaml, write_yaml

SETUP = REPO / "tests" / "slurm" / "setup_slurm.sh"
STOP = REPO / "tests" / "slurm" / "stop_slurm.sh"
PROFILE = REPO / "tests" / "slurm" / "profile"
SKIP_CODE = 77  # setup_slurm.sh: the prerequisites are missing
SETUP_TIMEOUT = 600  # seconds; apt-get install, then the daemons
RUN_TIMEOUT = 2400  # seconds per Snakemake run; `timeout -s INT` ends it (SIGTERM is ignored)
STATE_POLL_SECONDS = 10  # how often the background thread records the jobs' SLURM states
N_SHARDS = 2  # the tiny run on SLURM is sharded: one job per shard for extraction, M', edges

# The core pipeline up to the summary, sharded (model, shard activations, gathered statistics,
# per-layer M' shards and solves, edge shards and gathers, modules: 15 DAG levels, 29 SLURM
# jobs); the evaluation stages are rules of the same kind, left out to save minutes.
TINY_TARGETS = ("results/tiny/summary.json",)
BACKGROUND = pytest.StashKey["BackgroundSlurm"]()  # config.stash: the session's runs

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without SLURM_* (e.g. when pytest itself runs inside an allocation)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


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
    # SLURM job id -> (state, comment), as last seen by squeue while the run went on: slurmctld
    # forgets a job MinJobAge (600 s) after it ends, which can be before the test looks
    records: dict[str, "JobRecord"] = field(default_factory=dict)

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
        env = clean_env(
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

    def record_states(self) -> None:
        submitted = [slurm_id for _, slurm_id, _ in self.submissions()]
        if submitted:
            self.records.update(squeue_records(submitted))

    def finish(self) -> None:
        """Wait for the end of a run that has stopped or run out of time."""
        self.kill()
        self.returncode = self.proc.wait()
        self.record_states()
        self.seconds = time.monotonic() - self._t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def describe(self, n: int = 60) -> str:
        lines = self.output.strip().splitlines()
        return (
            f"exit status {self.returncode} after {self.seconds:.0f} s; log {self.logfile}\n"
            f"--- last {n} lines ---\n" + "\n".join(lines[-n:])
        )

    def requested(self) -> dict[str, dict[str, str]]:
        """Snakemake job id -> the ``resources:`` it announced for the job (what the rule asked
        for, which the executor turns into sbatch flags)."""
        found = {}
        for block in re.split(r"\n(?=\[|rule |checkpoint )", self.output):
            jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
            line = re.search(r"^\s+resources: (.*)$", block, re.M)
            if jobid and line:
                pairs = (item.split("=", 1) for item in line.group(1).split(", "))
                found[jobid.group(1)] = dict(p for p in pairs if len(p) == 2)
        return found

    def submitted_jobs(self) -> dict[str, str]:
        """SLURM job id -> the Snakemake job id it runs."""
        return {slurm_id: jobid for jobid, slurm_id, _ in SUBMITTED.findall(self.output)}

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


class JobRecord(NamedTuple):
    """What slurmctld holds of a submitted job: its state and comment (the plugin's rule
    name), and what it was granted from the sbatch request: memory (``%m``, e.g. ``2000M``),
    time limit (``%l``, e.g. ``1:00:00``) and CPUs (``%C``)."""

    state: str
    comment: str = ""
    min_memory: str = ""
    time_limit: str = ""
    cpus: str = ""


def squeue_records(job_ids) -> dict[str, JobRecord]:
    """SLURM job id -> its JobRecord, for jobs slurmctld still knows (MinJobAge=600 s)."""
    fmt = "%i|%T|%m|%l|%C|%k"  # the comment last: it may hold anything
    args = ["squeue", "--states=all", "-h", "-o", fmt, "-j", ",".join(job_ids)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, env=clean_env()).stdout
    records = {}
    for line in out.strip().splitlines():
        i, state, memory, limit, cpus, comment = line.split("|", 5)
        records[i] = JobRecord(state, comment, memory, limit, cpus)
    return records


def slurm_minutes(limit: str) -> int:
    """Minutes of a SLURM time limit: ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return (int(days or 0) * 86400 + seconds) // 60


def slurm_megabytes(memory: str) -> int:
    """MB of a SLURM memory size such as ``2000M`` or ``4G``."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    return round(float(memory[:-1]) * units[memory[-1].upper()])


@dataclass
class Outcome:
    """What the background start came to: ``status`` is ``ready`` (``runs`` finished), ``skip``
    (no cluster can be set up here) or ``fail`` (the setup broke); ``message`` says why."""

    status: str
    message: str = ""
    runs: tuple[SlurmRun, SlurmRun] | None = None


@dataclass
class BackgroundSlurm:
    """Sets up the cluster and starts the tiny run and a failing one (a corrupt weights file),
    side by side, in a thread; ``outcome()`` waits for both; ``stop()`` ends what it started."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ib-slurm-test-")))
    started_cluster: bool = False
    _stopping: bool = False
    _runs: list[SlurmRun] = field(default_factory=list)
    _outcome: Outcome | None = None

    def start(self) -> "BackgroundSlurm":
        self._thread = threading.Thread(target=self._run, name="slurm-runs", daemon=True)
        self._thread.start()
        return self

    def outcome(self) -> Outcome:
        self._thread.join()
        return self._outcome

    def stop(self) -> None:
        self._stopping = True
        for run in self._runs:
            run.kill()
        if self.started_cluster:  # leave a cluster that someone else started running
            subprocess.run(
                ["bash", str(STOP)], capture_output=True, text=True, timeout=120, env=clean_env()
            )

    def _run(self) -> None:
        try:
            self._outcome = self._setup_and_run()
        except Exception as err:  # reported by the fixture, in the test that needs the runs
            self._outcome = Outcome("fail", f"{type(err).__name__}: {err}")

    def _setup_and_run(self) -> Outcome:
        if find_spec("snakemake_executor_plugin_slurm") is None:
            return Outcome("skip", "snakemake-executor-plugin-slurm is not installed")
        try:
            proc = subprocess.run(
                ["bash", str(SETUP)],
                capture_output=True,
                text=True,
                timeout=SETUP_TIMEOUT,
                env=clean_env(),
            )
        except subprocess.TimeoutExpired as err:
            return Outcome("fail", f"{SETUP} did not finish in {err.timeout} s")
        if proc.returncode == SKIP_CODE:
            return Outcome("skip", f"no SLURM test cluster: {proc.stderr.strip().splitlines()[-1]}")
        if proc.returncode != 0:
            return Outcome(
                "fail", f"{SETUP} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        self.started_cluster = proc.stdout.strip().splitlines()[-1] == "started"

        workflow = self.root / "workflow"
        copy_workflow(workflow)  # a snapshot: edits to the checkout cannot disturb the runs
        bad_weights = self.root / "bad.npz"
        bad_weights.write_bytes(b"this is not a zip archive")
        tiny = load_yaml(TINY)
        bad_experiment = {**tiny["experiments"][0], "name": "bad"}
        bad_experiment["model"] = {**bad_experiment["model"], "weights": str(bad_weights)}
        bad_config = write_yaml(self.root / "bad.yaml", {"experiments": [bad_experiment]})
        tiny["experiments"][0]["extract"]["n_shards"] = N_SHARDS
        tiny_config = write_yaml(self.root / "tiny.yaml", tiny)  # a snapshot too

        if self._stopping:  # the session ended while the cluster started
            return Outcome("skip", "the test session ended first")
        self._runs = [
            SlurmRun(self.root / "tiny", tiny_config, workflow, TINY_TARGETS).start(),
            SlurmRun(self.root / "bad", bad_config, workflow).start(),
        ]
        deadline = time.monotonic() + RUN_TIMEOUT + 120
        running = list(self._runs)
        while running:
            for run in running:
                run.record_states()
            time.sleep(STATE_POLL_SECONDS)
            for run in [r for r in running if r.proc.poll() is not None]:
                run.finish()
                running.remove(run)
            if time.monotonic() > deadline:  # `timeout` should have ended them
                for run in running:
                    run.finish()
                running = []
        return Outcome("ready", runs=tuple(self._runs))
