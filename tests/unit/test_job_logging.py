"""What a job writes where (issue 15): progress bars become lines in the rule log, and an
uncaught error prints its message once on the console, its traceback only in the log."""

import logging
import sys

import pytest
import tqdm.std
from tqdm.auto import tqdm as auto_tqdm

from interaction_basis.stages import common as stages


@pytest.fixture
def rule_log(tmp_path):
    path = tmp_path / "rule.log"
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    old_level, old_hook, old_init = root.level, sys.excepthook, tqdm.std.tqdm.__init__
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        sys.excepthook, tqdm.std.tqdm.__init__ = old_hook, old_init


def test_progress_bars_write_lines_with_rate_into_the_log(rule_log):
    stages.set_threads(1)
    stages.set_threads(1)  # a second call must not stack the redirection
    for _ in auto_tqdm(range(5), desc="edge ablation", unit="pair"):
        pass
    lines = [line for line in rule_log.read_text().splitlines() if "edge ablation" in line]
    assert lines and "5/5" in lines[-1] and "pair/s" in lines[-1], lines
    assert not any("\r" in line for line in lines)


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
