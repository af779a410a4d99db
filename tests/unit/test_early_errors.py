"""Errors at planning, not after minutes of jobs (issue 23, point 5): what the config alone can
judge fails before any job with one line naming the setting and the fix; the checker and the
workflow give the same verdict; a full disk or an unwritable folder names the output and what
to do, in one line on the console."""

import errno
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from factories import random_modadd_weights
from interaction_basis import planning, storage
from interaction_basis.config import ConfigError, ModelConfig, validate_config
from interaction_basis.kinds import network
from interaction_basis.kinds.registry import KINDS

REPO = Path(__file__).resolve().parents[2]


def experiment(**sections) -> dict:
    return {"experiments": [{"name": "tiny", **sections}]}


def test_unknown_node_layer_fails_from_the_config_alone():
    with pytest.raises(ConfigError) as err:
        validate_config(experiment(extract={"node_layers": ["ln1.0", "bogus", "output"]}))
    msg = str(err.value)
    assert "extract.node_layers: unknown node layer(s) ['bogus']" in msg, msg
    assert "ln1.0, ln2.0, unembed, output" in msg, msg
    with pytest.raises(ConfigError, match="forward order"):
        validate_config(experiment(extract={"node_layers": ["unembed", "ln1.0"]}))
    mlp = {"kind": "mlp", "mlp": {"hidden_sizes": [8, 8]}}
    with pytest.raises(ConfigError, match=r"layers\.0, layers\.1, layers\.2, output"):
        validate_config(experiment(model=mlp, extract={"node_layers": ["layers.0", "layers.3"]}))
    # Known only from the weights: an imported MLP and a language model are checked in the
    # first job that builds them.
    imported = {**mlp, "weights": "w.npz"}
    validate_config(experiment(model=imported, extract={"node_layers": ["layers.0", "layers.3"]}))


def test_config_node_layers_are_those_the_kinds_build():
    """The registry's names (read at planning) are exactly the layers the network offers."""
    modadd = ModelConfig(kind="modadd")
    built = network.build_model(modadd, random_modadd_weights(seed=0), None, "float64")
    assert KINDS["modadd"].node_layer_names(modadd) == built.node_layers
    planted = ModelConfig(kind="modular_mlp")
    weights = network.get("modular_mlp").load_weights  # constructed, not read
    assert weights is not None
    from interaction_basis.kinds.modular_mlp.network import default_node_layers

    assert KINDS["modular_mlp"].node_layer_names(planted) == tuple(
        default_node_layers(planted, None)
    )
    mlp = ModelConfig(kind="mlp", mlp={"hidden_sizes": [5, 6, 7]})
    from interaction_basis.models.mlp import mlp_node_layers

    assert KINDS["mlp"].node_layer_names(mlp) == mlp_node_layers(4)
    assert KINDS["hf"].node_layer_names(ModelConfig(kind="hf")) is None


def test_unknown_key_is_one_line_with_the_close_matches():
    with pytest.raises(ConfigError) as err:
        validate_config(experiment(basis={"truncaton": 1e-3}))
    msg = str(err.value)
    assert msg == (
        "Invalid config: experiments[0] (tiny).basis: unknown key 'truncaton' "
        "(did you mean 'truncation'?)"
    )
    with pytest.raises(ConfigError) as err:
        validate_config(experiment(basis={"zzz": 1}))
    assert "known keys: methods, truncation, relative" in str(err.value)
    assert "\n" not in str(err.value)


def check(tmp_path, config: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "interaction_basis.config", "--check", str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
    )


def test_checker_reads_and_judges_a_config_as_the_workflow_does(tmp_path):
    """YAML reads `1e-10` (no decimal point) as text: the workflow's JSON schema refuses it,
    and so must the checker (it accepted it when it only ran pydantic, which converts text)."""
    path = tmp_path / "my.yaml"
    path.write_text("experiments:\n  - name: tiny\n    basis:\n      truncation: 1e-10\n")
    result = subprocess.run(
        [sys.executable, "-m", "interaction_basis.config", "--check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0, result.stdout
    assert "experiments[0] (tiny).basis.truncation: '1e-10' is not of type 'number'" in (
        result.stderr
    )
    assert "1.0e-10" in result.stderr  # the fix
    good = check(tmp_path, experiment(basis={"truncation": 1.0e-10}))
    assert good.returncode == 0 and "valid (merged onto" in good.stdout, good.stderr


def test_missing_local_source_fails_at_planning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"model.hub.source is './nowhere'.*nothing"):
        planning.check_local_source("./nowhere", "experiment x: model.hub.source", needed=True)
    planning.check_local_source("./nowhere", "s", needed=False)  # already downloaded
    planning.check_local_source("org/name", "s", needed=True)  # a hub id: the job decides
    (tmp_path / "here").mkdir()
    planning.check_local_source("./here", "s", needed=True)


@pytest.mark.parametrize(
    ("code", "fix"),
    [(errno.ENOSPC, "df -h"), (errno.EROFS, "chmod -R u+w"), (errno.EACCES, "chmod -R u+w")],
)
def test_unwritable_output_names_the_path_and_the_fix(tmp_path, code, fix):
    out = tmp_path / "results" / "x" / "summary.json"
    with pytest.raises(storage.CannotWriteError) as err, storage.atomic_path(out) as tmp:
        tmp.write_text("{")
        raise OSError(code, "simulated")
    msg = str(err.value)
    assert msg.startswith(f"Cannot write {out}: ") and fix in msg, msg
    assert not out.exists() and list(out.parent.iterdir()) == []


FULL_DISK_JOB = """
import errno, pathlib, sys
from types import SimpleNamespace as NS
from interaction_basis import storage
from interaction_basis.seam import run_stage

def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

pathlib.Path.write_text = full

def stage(out: str) -> None:
    storage.write_json(out, {"a": 1})

class Named(dict):
    __getattr__ = dict.__getitem__

smk = NS(
    log=[sys.argv[1]], threads=1, rule="r", output=Named(out=sys.argv[2]), input=Named(),
    params=Named(), wildcards=Named(),
)
run_stage(smk, stage)
"""


def test_full_disk_in_a_job_is_one_line_naming_the_output(tmp_path):
    log, out = tmp_path / "job.log", tmp_path / "results" / "x" / "summary.json"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_JOB, str(log), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"Cannot write {out}: the disk is full" in lines[0] and "df -h" in lines[0], lines
    assert "Traceback" in log.read_text()
