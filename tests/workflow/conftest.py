"""The tiny end-to-end run, made once per session and shared by the workflow tests.

The run uses a snapshot of the workflow (see ``smk_helpers.copy_workflow``) so that package
edits by the rerun tests, or by anyone working in the checkout meanwhile, cannot disturb it.
Tests that change outputs work on a copy of the run folder (``TinyRun.copy_run``), never on the
shared one.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from slurm_cluster import BACKGROUND, BackgroundSlurm
from smk_helpers import TINY, Result, copy_workflow, pythonpath_env, snakemake

E2E_TIMEOUT = 2400  # seconds; the run takes 3-10 minutes on 2 shared cores


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _find_chromium() -> str | None:
    explicit = os.environ.get("IB_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _missing(reason: str):
    if os.environ.get("CI") or os.environ.get("IB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; CI needs it (.ci/run installs chromium with apt).")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Playwright: skipped where none is found, except in CI."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -r requirements.txt)")
    path = _find_chromium()
    if path is None:
        _missing("no Chromium found (apt-get install chromium, or set IB_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


def pytest_collection_finish(session):
    """Start the SLURM runs now when a SLURM test is selected: they spend most of their time
    waiting for the scheduler, so they overlap the other tests (``slurm_cluster.py``)."""
    if session.config.option.collectonly:
        return
    if any(item.get_closest_marker("slurm") for item in session.items):
        session.config.stash[BACKGROUND] = BackgroundSlurm().start()


def pytest_sessionfinish(session):
    background = session.config.stash.get(BACKGROUND, None)
    if background is not None:
        background.stop()


@dataclass
class TinyRun:
    workflow: Path  # the workflow snapshot (Snakefile, rules/, scripts/, config/, src/, ...)
    workdir: Path  # the --directory of the finished run
    configfile: Path
    result: Result

    @property
    def snakefile(self) -> Path:
        return self.workflow / "Snakefile"

    @property
    def env(self) -> dict[str, str]:
        return pythonpath_env(self.workflow)

    def results(self, workdir: Path | None = None) -> Path:
        return (workdir or self.workdir) / "results" / "tiny"

    def smk(
        self,
        *args: str,
        configfile: Path | None = None,
        workdir: Path | None = None,
        check: bool = True,
        timeout: float = 600,
    ) -> Result:
        """Snakemake on the snapshot; targets and flags in ``args`` (before --configfile)."""
        return snakemake(
            *args,
            "--snakefile",
            str(self.snakefile),
            "--directory",
            str(workdir or self.workdir),
            "--configfile",
            str(configfile or self.configfile),
            cwd=self.workflow,
            env=self.env,
            check=check,
            timeout=timeout,
        )

    def dry_run(self, configfile: Path | None = None, workdir: Path | None = None) -> Result:
        return self.smk("-n", configfile=configfile, workdir=workdir)

    def copy_run(self, dest: Path) -> Path:
        """A copy of the finished run folder (results and .snakemake metadata); returns it.

        The copy goes beside the run folder, named after ``dest`` (its folder and name), so that
        its paths to the workflow snapshot are the run's: Snakemake records the code inputs
        relative to the working directory (a run folder moved alone is a different project).
        """
        copy = self.workdir.parent / f"{dest.parent.name}-{dest.name}"
        shutil.copytree(self.workdir, copy, symlinks=True)
        return copy


@pytest.fixture(scope="session")
def workflow_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow")
    copy_workflow(root)
    shutil.copy2(TINY, root / "tiny.yaml")
    return root


@pytest.fixture(scope="session")
def tiny_run(workflow_copy, tmp_path_factory) -> TinyRun:
    """The tiny experiment run end to end once: ``snakemake --cores 2`` in a tmp --directory."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    run = TinyRun(workflow_copy, workdir, workflow_copy / "tiny.yaml", None)
    run.result = run.smk("--cores", "2", timeout=E2E_TIMEOUT)
    return run
