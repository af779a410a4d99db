"""Long jobs say how far they are (issue 15): every bar of a job lands in its rule log as
lines with the count, the rate and the time left, so `tail -f results/logs/<rule>/...` shows it
advance."""

import re

import pytest

pytestmark = pytest.mark.slow

# A tqdm line as logged: "desc:  40%|####      | 4/10 [00:02<00:03,  1.98unit/s, loss=...]"
# (slow work: "2.51s/unit"), the count, time so far and left, and the rate.
PROGRESS = re.compile(r"\d+/\d+ \[[\d:]+<[\d:]+, +[\d.]+ ?(?:\w+/s|s/\w+)[],]")

LOGS = {
    "train_model": "train_model/tiny.log",
    "extract_activations": "extract_activations/tiny.log",
    "fit_basis": "fit_basis/tiny/lib.log",
    "compute_edges": "compute_edges/tiny/lib.log",
    "ablate_nodes": "ablate_nodes/tiny/lib.log",
    "ablate_edges": "ablate_edges/tiny/lib.log",
}


@pytest.mark.parametrize("rule", LOGS)
def test_long_jobs_log_progress_with_rate_and_eta(tiny_run, rule):
    log = tiny_run.workdir / "results" / "logs" / LOGS[rule]
    lines = [line for line in log.read_text().splitlines() if PROGRESS.search(line)]
    assert lines, f"no progress line in {log}:\n{log.read_text()[-3000:]}"
