"""What a job writes where (issue 15): progress bars become lines in the rule log, and an
uncaught error prints its message once on the console, its traceback only in the log."""

import logging
import sys

import pytest
from tqdm.auto import tqdm as library_tqdm

from interaction_basis import progress
from interaction_basis.stages import common as stages


@pytest.fixture
def rule_log(tmp_path):
    path = tmp_path / "rule.log"
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    old_level, old_hook = root.level, sys.excepthook
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        sys.excepthook = old_hook
        progress._overrides.clear()


def test_progress_bars_write_lines_with_rate_into_the_log(rule_log):
    stages.set_threads(1)
    stages.set_threads(1)  # a second call must not stack the redirection
    for _ in progress.progress(range(5), "edge ablation", unit="pair", leave=False):
        pass
    for _ in library_tqdm(range(3), desc="a library's bar"):
        pass  # not the package's: left as it is
    lines = [line for line in rule_log.read_text().splitlines() if "edge ablation" in line]
    assert lines and "5/5" in lines[-1] and "pair/s" in lines[-1], lines
    assert not any("\r" in line for line in lines)
    assert "a library's bar" not in rule_log.read_text()


def test_uncaught_error_message_once_on_stderr_traceback_in_log(rule_log, capsys):
    stages.set_threads(1)
    try:
        raise ValueError("results/x/basis.zarr is damaged")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert err.count("results/x/basis.zarr is damaged") == 1 and "Traceback" not in err, err
    assert str(rule_log) in err
    assert "Traceback" in rule_log.read_text()
