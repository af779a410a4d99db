"""Bad input fails early and clearly, and leaves nothing behind that looks like a result.

Invalid configs are refused before any job (``snakemake -n`` fails and no results/ appears),
in one line that names the setting and the fix, and ``python -m interaction_basis.config
--check`` gives the same verdict; so are node layer names the kind knows from the config, a
missing local model folder and a SLURM profile's placeholders. What only the model can judge
(weight files; a language model's layer names) fails in the first job that reads it, with a
message naming the problem.
"""

import os
import sys
from typing import get_args

import numpy as np
import pytest
from smk_helpers import (
    REPO,
    copy_workflow,
    job_counts,
    pythonpath_env,
    run,
    snakemake,
    tiny_config,
    write_yaml,
)

from factories import random_modadd_weights
from interaction_basis.config import Method

pytestmark = pytest.mark.slow


def checkout_snakemake(*args, configfile, workdir, timeout=300):
    """Snakemake with the checkout's workflow on one config, in a fresh --directory."""
    return snakemake(
        *args,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def checkout_dry_run(configfile, workdir):
    return checkout_snakemake("-n", configfile=configfile, workdir=workdir)


def assert_nothing_ran(result, workdir):
    assert result.returncode != 0, result.describe()
    assert "Job stats" not in result.output, result.describe()
    assert not (workdir / "results").exists()


INVALID = {
    "unknown_key": (
        {"basis": {"truncaton": 1.0e-3}},
        ["experiments[0] (tiny).basis: unknown key 'truncaton' (did you mean 'truncation'?)"],
    ),
    "bad_enum": (
        {"basis": {"methods": ["foo"]}},
        ["'foo' is not one of", str(list(get_args(Method))), "(tiny).basis.methods[0]"],
    ),
    "negative_truncation": (
        {"basis": {"truncation": -1.0}},
        ["(tiny).basis.truncation: -1.0 is less than or equal to the minimum of 0"],
    ),
    # YAML reads 1e-10 without a decimal point as text; the checker must agree (below).
    "number_as_text": (
        {"basis": {"truncation": "1e-10"}},
        ["(tiny).basis.truncation: '1e-10' is not of type 'number'", "1.0e-10"],
    ),
    # The mod-add layers are known from the config: no training first.
    "unknown_node_layer": (
        {"extract": {"node_layers": ["ln1.0", "bogus", "unembed", "output"]}},
        [
            "extract.node_layers: unknown node layer(s) ['bogus']; this modadd model has: "
            "ln1.0, ln2.0, unembed, output."
        ],
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_config_fails_before_any_job(case, tmp_path):
    """One line naming the setting and the fix (no schema dump), from the workflow and from
    `python -m interaction_basis.config --check` alike."""
    sections, expected = INVALID[case]
    cfg = write_yaml(tmp_path / "bad.yaml", tiny_config(**sections))
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = checkout_dry_run(cfg, workdir)
    assert_nothing_ran(result, workdir)
    error = [line for line in result.output.splitlines() if line.startswith("Invalid config: ")]
    assert len(error) == 1, result.describe()
    for text in expected:
        assert text in error[0], f"{text!r} not in the error\n{result.describe()}"
    assert "$defs" not in result.output and "'properties'" not in result.output
    assert len(result.output.strip().splitlines()) < 12, result.describe()
    check = run(
        [sys.executable, "-m", "interaction_basis.config", "--check", str(cfg)],
        cwd=REPO,
        check=False,
    )
    assert check.returncode != 0, check.describe()
    assert error[0] in check.output, check.describe()


def test_missing_weights_file_is_a_missing_input(tmp_path):
    weights = tmp_path / "nowhere" / "weights.npz"
    cfg = write_yaml(
        tmp_path / "imported.yaml",
        {"experiments": [{"name": "imported", "model": {"weights": str(weights)}}]},
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = checkout_dry_run(cfg, workdir)
    assert_nothing_ran(result, workdir)
    assert "MissingInputException" in result.output, result.describe()
    assert "import_model" in result.output and str(weights) in result.output, result.describe()


def test_malformed_weights_fail_the_import_job(tmp_path):
    """A text file, and an npz missing a tensor: each import job fails naming the problem."""
    text = tmp_path / "text" / "weights.npz"
    text.parent.mkdir()
    text.write_text("these are not weights\n")
    incomplete = tmp_path / "incomplete" / "weights.npz"
    incomplete.parent.mkdir()
    weights = random_modadd_weights(seed=0)  # d_vocab 7: modulus 6
    del weights["unembed.b_U"]
    np.savez(incomplete, **weights)
    train = {"modulus": 6, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16}
    cfg = write_yaml(
        tmp_path / "imports.yaml",
        {
            "experiments": [
                {"name": "bad_text", "model": {"weights": str(text), "train": train}},
                {"name": "bad_incomplete", "model": {"weights": str(incomplete), "train": train}},
            ]
        },
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = checkout_snakemake(
        "--cores", "2", "--keep-going", "all_models", configfile=cfg, workdir=workdir, timeout=600
    )
    assert result.returncode != 0, result.describe()
    out = result.output
    assert f"{text}: Cannot read it as a .npz of arrays" in out, result.describe()
    assert "missing tensor 'unembed.b_U'" in out, result.describe()
    assert f"Invalid mod-add weights in {incomplete}" in out, result.describe()
    for name in ("bad_text", "bad_incomplete"):
        assert not (workdir / "results" / name / "model" / "weights.npz").exists()


def test_missing_local_model_fails_before_any_download(tmp_path):
    """Offline, with a local model folder that does not exist: planning stops, naming the
    setting and the path, before download_dataset (or anything) runs."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a b c\n" * 50)
    cfg = write_yaml(
        tmp_path / "lm.yaml",
        {
            "experiments": [
                {
                    "name": "lm",
                    "model": {
                        "kind": "hf",
                        "hub": {"source": str(tmp_path / "no_such_model")},
                        "text": {"source": str(corpus)},
                    },
                    "evaluate": {"metric": "ce_loss"},
                }
            ]
        },
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = checkout_snakemake("--cores", "1", configfile=cfg, workdir=workdir)
    assert_nothing_ran(result, workdir)
    assert (
        f"experiment lm: model.hub.source is '{tmp_path / 'no_such_model'}', a local folder or "
        "file that does not exist"
    ) in result.output, result.describe()
    assert not (workdir / "resources").exists()


def test_slurm_profile_placeholders_stop_a_dry_run(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = snakemake(
        "-n",
        "--workflow-profile",
        str(REPO / "profiles" / "slurm"),
        "--directory",
        str(workdir),
        cwd=REPO,
        check=False,
    )
    assert_nothing_ran(result, workdir)
    assert (
        "The resource slurm_account (default-resources) is still the placeholder '<account>'"
    ) in result.output, result.describe()
    assert "sacctmgr" in result.output


def test_damaged_store_stops_the_jobs_that_read_it(tiny_run, tmp_path):
    """One chunk file of lib/basis.zarr deleted (zarr would read it as fill values) and the
    weights truncated (timestamps kept, as a disk fault would): each job that reads one fails
    naming the file, what is wrong, the rule that wrote it and the rebuild command, and writes
    nothing."""
    workdir = tiny_run.copy_run(tmp_path / "run")
    results = tiny_run.results(workdir)
    (results / "lib" / "basis.zarr" / "ln2.0" / "C" / "c" / "0" / "0").unlink()
    weights = results / "model" / "weights.npz"
    st = weights.stat()
    weights.write_bytes(weights.read_bytes()[:-100])
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    # ablate_nodes reads the basis first, then the weights: lib stops at its basis, pca (whose
    # basis is intact) at the weights.
    targets = [f"results/tiny/{method}/node_ablation.json" for method in ("lib", "pca")]
    for target in targets:
        (workdir / target).unlink()
    result = tiny_run.smk(
        "--cores", "2", "--keep-going", *targets, workdir=workdir, check=False, timeout=600
    )
    assert result.returncode != 0, result.describe()
    assert set(job_counts(result.output)) == {"ablate_nodes"}, result.describe()
    expected = [
        "results/tiny/lib/basis.zarr is damaged, nothing was computed from it: "
        "ln2.0/C has 0 of its 1 chunks",
        "--forcerun fit_basis",
        "results/tiny/model/weights.npz is damaged",
        "--forcerun results/tiny/model/weights.npz`",
    ]
    for text in expected:
        assert text in result.output, f"{text!r} not in the output\n{result.describe()}"
    for target in targets:
        assert not (workdir / target).exists(), target


def test_invalid_yaml_names_file_and_line(tmp_path):
    """Snakemake's own message for unparsable YAML names neither; the workflow's default config
    is checked before Snakemake reads it, and `python -m interaction_basis.config --check`
    checks any config file."""
    workflow = tmp_path / "workflow"
    copy_workflow(workflow)
    default = workflow / "config" / "config.yaml"
    lines = default.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("reference_dir:"))
    lines[i] = "reference_dir: ../shared: reference"  # a second ': ' in a plain value
    default.write_text("\n".join(lines) + "\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    result = snakemake(
        "-n",
        "--directory",
        str(workdir),
        cwd=workflow,
        env=pythonpath_env(workflow),
        check=False,
    )
    assert result.returncode != 0, result.describe()
    assert f"{default}, line {i + 1}" in result.output, result.describe()
    check = run(
        [sys.executable, "-m", "interaction_basis.config", "--check", str(default)],
        cwd=workflow,
        env=pythonpath_env(workflow),
        check=False,
    )
    assert check.returncode != 0 and f"{default}, line {i + 1}" in check.output, check.describe()
