"""Code inputs from the import graph (planning), the model-kind registry and the stage seam."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake.iocontainers import Namedlist

from interaction_basis import planning
from interaction_basis.config import ExtractConfig, ModelConfig
from interaction_basis.kinds import data, ground_truth, interpretation, network, training
from interaction_basis.kinds.registry import CONCERNS, KINDS
from interaction_basis.seam import stage_arguments

REPO = Path(__file__).resolve().parents[2]
KIND_PACKAGES = tuple(f"kinds/{k}/" for k in KINDS)
PACKAGE = REPO / "src" / "interaction_basis"


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "interaction_basis" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "interaction_basis"


def test_closure_follows_every_run_time_import(tmp_path):
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "stage.py": "from interaction_basis import a\nfrom . import b\n"
            "def f():\n    from interaction_basis.sub import c\n",
            "a.py": "import numpy\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from interaction_basis import typing_only\n",
            "b.py": "from .a import x\n",
            "sub/__init__.py": "from interaction_basis import d\n",
            "sub/c.py": "",
            "d.py": "",
            "typing_only.py": "",
            "unused.py": "",
        },
    )
    files = planning.module_closure(["interaction_basis.stage"], pkg)
    names = {str(f.relative_to(pkg)) for f in files}
    # sub/__init__ runs before sub.c, so d is code too; typing_only and unused never run.
    assert names == {
        "__init__.py",
        "stage.py",
        "a.py",
        "b.py",
        "sub/__init__.py",
        "sub/c.py",
        "d.py",
    }


def _code(rule: str, kind: str) -> set[str]:
    script = REPO / "scripts" / f"{rule}.py"
    return {str(f.relative_to(PACKAGE)) for f in planning.stage_code(script, kind, PACKAGE)}


def test_a_rule_that_runs_the_model_has_its_kinds_code_only():
    modadd, hf = _code("fit_basis", "modadd"), _code("fit_basis", "hf")
    assert {"stages/basis.py", "lib/basis.py", "kinds/modadd/network.py", "models/modadd.py"} <= (
        modadd
    )
    assert not {"kinds/hf/network.py", "models/hf.py", "data/text.py", "graph/clustering.py"} & (
        modadd
    )
    assert {"kinds/hf/network.py", "models/hf.py"} <= hf
    assert "models/modadd.py" not in hf


def test_rules_without_a_model_have_no_kind_code():
    for rule in ("summarize_experiment", "make_report_figures", "tokenize_dataset"):
        code = _code(rule, "hf")
        assert not any(f.startswith(KIND_PACKAGES) or f == "models/hf.py" for f in code), rule
    assert "report/figures.py" in _code("summarize_experiment", "modadd")
    assert "report/figures.py" not in _code("train_model", "modadd")  # the curve has its own module


def test_a_rule_has_only_the_kind_concerns_it_uses():
    """Interpretation and training code are not code of the bases: editing a kind's Fourier
    labels, feature evidence, thumbnails or training reruns no basis."""
    for kind in KINDS:
        fit = _code("fit_basis", kind)
        assert f"kinds/{kind}/network.py" in fit
        assert not {f"kinds/{kind}/{c}.py" for c in ("interpretation", "training", "data")} & fit
        assert not {"interpret/explorer.py", "interpret/fourier.py", "interpret/features.py"} & fit
    assert "interpret/fourier.py" in _code("interpret_features", "modadd")
    # The page's JavaScript is code of the page: editing it rebuilds the explorer.
    assert "interpret/explorer_assets/explorer.js" in _code("build_explorer", "modadd")
    assert "kinds/modadd/interpretation.py" in _code("cluster_graph", "modadd")
    assert "kinds/modadd/training.py" in _code("train_model", "modadd")
    assert "kinds/mlp/training.py" not in _code("extract_activations", "mlp")
    assert "kinds/modular_mlp/ground_truth.py" in _code("score_ground_truth", "modular_mlp")


def test_every_registered_kind_implements_its_concerns():
    """Network and data are the kind's own; the other concerns may fall back to defaults."""
    accessors = dict(
        network=network,
        data=data,
        training=training,
        interpretation=interpretation,
        ground_truth=ground_truth,
    )
    assert set(accessors) == set(CONCERNS)
    for name in KINDS:
        for concern in ("network", "data"):
            assert (PACKAGE / "kinds" / name / f"{concern}.py").is_file(), (name, concern)
        for concern, accessor in accessors.items():
            impl = accessor.get(name)
            assert all(callable(getattr(impl, m)) for m in accessor.MEMBERS), (name, concern)
    with pytest.raises(ValueError, match="Unknown model kind 'x'"):
        network.get("x")
    hf = ModelConfig(kind="hf")
    assert interpretation.get("hf").thumbnails(hf, {1}) == {}  # the default
    assert training.get("hf").accuracies(hf, None, None) == {}  # the default


def test_no_stage_script_or_rule_names_a_model_kind():
    names = "|".join(KINDS)
    kind_literal = re.compile(rf"""["']({names})["']""")
    paths = [
        *(PACKAGE / "stages").glob("*.py"),
        *(REPO / "scripts").glob("*.py"),
        *(REPO / "rules").glob("*.smk"),
    ]
    named = [str(p.relative_to(REPO)) for p in paths if kind_literal.search(p.read_text())]
    assert named == []


def test_each_pipeline_step_has_one_name():
    """``rules/<step>.smk`` holds exactly the rules whose stage functions live in
    ``stages/<step>.py``, each run by ``scripts/<rule>.py`` calling the function of the rule's
    name: a reader finds one step under one name in rules/, scripts/ and stages/."""
    steps = {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "common"}
    rule_files = {p.stem for p in (REPO / "rules").glob("*.smk")} - {"common"}
    assert rule_files == steps
    scripts = set()
    for step in sorted(steps):
        text = (REPO / "rules" / f"{step}.smk").read_text()
        for rule in re.findall(r"^(?:rule|checkpoint) (\w+):", text, re.M):
            script = (REPO / "scripts" / f"{rule}.py").read_text()
            assert f"from interaction_basis.stages.{step} import {rule}\n" in script, rule
            assert f'"../scripts/{rule}.py"' in text, rule
            scripts.add(rule)
    assert scripts == {p.stem for p in (REPO / "scripts").glob("*.py")}


def test_scripts_are_two_lines_of_code():
    for script in (REPO / "scripts").glob("*.py"):
        code = [
            line
            for line in script.read_text().splitlines()
            if line.strip() and not line.startswith(('"""', "#"))
        ]
        assert len(code) <= 3, script


def _stage(
    model: ModelConfig,
    extract: ExtractConfig,
    weights: str,
    acts: str,
    parts: list[str],
    shard: int,
    tokens: str | None = None,
    threads: int = 1,
) -> None:
    pass


def _job(**input_files) -> SimpleNamespace:
    return SimpleNamespace(
        rule="r",
        threads=3,
        input=Namedlist(fromdict={"weights": "w.npz", "parts": ["a", "b"], **input_files}),
        output=Namedlist(fromdict={"acts": "acts.zarr"}),
        params=Namedlist(fromdict={"model": {"kind": "modadd"}, "extract": {"batch_size": 8}}),
        wildcards=Namedlist(fromdict={"shard": "2", "experiment": "e"}),
    )


def test_seam_passes_the_rules_files_and_settings_by_name():
    kw = stage_arguments(_job(tokens=[], code=["x.py"]), _stage)
    assert kw["model"] == ModelConfig(kind="modadd")
    assert kw["extract"].batch_size == 8
    assert (kw["weights"], kw["acts"], kw["parts"], kw["shard"]) == (
        "w.npz",
        "acts.zarr",
        ["a", "b"],
        2,
    )
    assert kw["tokens"] is None and kw["threads"] == 3  # an empty optional input is None


def test_seam_names_what_a_rule_lacks():
    job = _job()
    job.output = Namedlist(fromdict={})
    with pytest.raises(TypeError, match="no output, input, param or wildcard named 'acts'"):
        stage_arguments(job, _stage)
