"""Every Python snippet of the README runs, as written, against the finished tiny run (its
``results/modadd/`` paths read as the tiny experiment's), without a warning."""

import re
import subprocess
import sys

import pytest
from smk_helpers import REPO

pytestmark = pytest.mark.slow

SNIPPETS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs_on_the_tiny_run(tiny_run, index):
    code = SNIPPETS[index].replace("results/modadd/", "results/tiny/")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tiny_run.workdir,
        env=tiny_run.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"snippet {index}:\n{code}\n{result.stderr[-3000:]}"
    assert "Warning" not in result.stderr, f"snippet {index} warns:\n{result.stderr[-3000:]}"
