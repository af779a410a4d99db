"""config/schema.yaml, the pydantic models and the config files agree (conventions §4).

The schema guards the workflow (Snakemake validates against it before any job) and pydantic
guards library use; both come from ``interaction_basis.config``, so drift is a silent bug.
"""

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonschema import Draft202012Validator
from snakemake.utils import update_config

from interaction_basis.config import WorkflowConfig, workflow_schema
from interaction_basis.stages.common import resolve_device

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config"
SCHEMA = CONFIG / "schema.yaml"
DEFAULT = CONFIG / "config.yaml"
EXPERIMENT_FILES = sorted(
    p for p in CONFIG.glob("*.yaml") if p.name not in ("schema.yaml", "config.yaml")
)
ALL_CONFIGS = [DEFAULT, *EXPERIMENT_FILES, REPO / "tests" / "workflow" / "tiny.yaml"]


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def test_schema_file_is_generated_from_the_models():
    assert _load(SCHEMA) == workflow_schema(), (
        "config/schema.yaml is out of date: regenerate it with "
        "`python -m interaction_basis.config > config/schema.yaml`"
    )


def test_schema_is_a_valid_draft_2020_12_schema():
    schema = _load(SCHEMA)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def _objects(schema: dict, root: dict):
    """Every object schema reachable from ``schema`` (following $ref)."""
    seen, todo = [], [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "$ref" in node:
                node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
            if node.get("type") == "object" and "properties" in node and node not in seen:
                seen.append(node)
            todo.extend(v for k, v in node.items() if k != "$defs")
        elif isinstance(node, list):
            todo.extend(node)
    return seen


def test_every_schema_object_forbids_unknown_keys():
    schema = _load(SCHEMA)
    objects = _objects(schema, schema)
    assert len(objects) >= 8
    for obj in objects:
        assert obj.get("additionalProperties") is False, obj.get("title")


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_ids(ALL_CONFIGS))
def test_config_files_validate_with_jsonschema_and_pydantic(path):
    data = _load(path)
    errors = sorted(Draft202012Validator(_load(SCHEMA)).iter_errors(data), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    WorkflowConfig.model_validate(data)


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=_ids(EXPERIMENT_FILES))
def test_experiment_file_merged_onto_default_equals_it_alone(path):
    """``--configfile`` merges recursively onto config/config.yaml (lists are replaced): a key
    that only the default sets must not change what an experiment file means."""
    merged = copy.deepcopy(_load(DEFAULT))
    update_config(merged, _load(path))  # what Snakemake does with --configfile
    alone = WorkflowConfig.model_validate(_load(path))
    assert WorkflowConfig.model_validate(merged) == alone


def test_merge_replaces_lists():
    """The premise of the test above, with Snakemake's own merge function."""
    merged = {"experiments": [{"name": "a"}, {"name": "b"}], "reference_dir": "x"}
    update_config(merged, {"experiments": [{"name": "c"}]})
    assert merged == {"experiments": [{"name": "c"}], "reference_dir": "x"}


KEY = re.compile(
    r"^(?P<indent>\s*)(?:-\s+)?(?P<key>[A-Za-z_][\w.-]*):(?P<value>[^#]*)(?P<comment>#.*)?$"
)


def test_every_key_of_the_default_config_is_commented():
    """Each key with a value carries a comment on its line or on the comment line just above.

    Section keys (``model:``, ``basis:``, ...) are documented by their children.
    """
    lines = DEFAULT.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if m is None:
            continue
        is_section = not m["value"].strip()
        if is_section:
            continue
        above = lines[i - 1].strip() if i > 0 else ""
        if not m["comment"] and not above.startswith("#"):
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment in config/config.yaml:\n" + "\n".join(
        undocumented
    )


def test_device_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "hf") == torch.device("cpu")
    assert resolve_device("auto", "modadd") == torch.device("cpu")
    assert resolve_device("cpu", "hf") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        resolve_device("cuda", "hf")


def test_device_auto_picks_cuda_for_language_models_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # What the stage log says of the GPU: its name and free memory.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a GPU")
    assert resolve_device("auto", "hf") == torch.device("cuda")
    assert resolve_device("cuda", "hf") == torch.device("cuda")
    assert resolve_device("auto", "mlp") == torch.device("cpu")
    with pytest.raises(ValueError, match="for language models"):
        resolve_device("cuda", "modadd")


@pytest.mark.parametrize("key", ["n_samples", "n_stats_samples"])
def test_more_shards_than_text_batches_is_a_config_error(key):
    text = {"n_samples": 64, "n_stats_samples": 64, key: 10}
    experiment = {
        "name": "lm",
        "model": {"kind": "hf", "text": text},
        "extract": {"batch_size": 4, "n_shards": 4},
        "evaluate": {"metric": "ce_loss"},
    }
    with pytest.raises(ValueError, match=f"n_shards=4 is more than the 3 batches of text.{key}=10"):
        WorkflowConfig.model_validate({"experiments": [experiment]})
    experiment["extract"]["n_shards"] = 3  # one batch each: fine
    WorkflowConfig.model_validate({"experiments": [experiment]})


def test_planning_imports_no_heavy_library():
    """The Snakefile imports these while it plans: torch alone adds seconds to `snakemake -n`."""
    code = (
        "import sys, interaction_basis.config, interaction_basis.planning; "
        "print(sorted({'torch', 'xarray', 'zarr', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_language_model_with_the_accuracy_metric_is_a_config_error():
    """It used to fail only in ablate_edges, after extraction and fitting had run."""
    experiment = {"name": "lm", "model": {"kind": "hf"}}
    with pytest.raises(ValueError, match="needs class labels.*set evaluate.metric: ce_loss"):
        WorkflowConfig.model_validate({"experiments": [experiment]})
    for evaluate in ({"metric": "ce_loss"}, {"enabled": False}):
        WorkflowConfig.model_validate({"experiments": [{**experiment, "evaluate": evaluate}]})
