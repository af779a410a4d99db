"""``python -m interaction_basis.verify``: a finished run checked without computing anything
(issue 23, point 3). The workflow test (tests/workflow/test_verify.py) runs the printed command."""

import os
import shlex

import numpy as np
import pytest
import torch
import zarr

from interaction_basis import storage, verify
from interaction_basis.lib.records import Basis, LayerStats, LayerTraits


@pytest.fixture(autouse=True)
def _fresh_verification_cache():
    storage._verified.clear()
    yield
    storage._verified.clear()


def _basis() -> dict[str, Basis]:
    g = torch.Generator().manual_seed(0)
    return {
        "a": Basis(
            torch.randn(5, 3, dtype=torch.float64, generator=g),
            torch.randn(3, 5, dtype=torch.float64, generator=g),
            torch.rand(3, dtype=torch.float64, generator=g),
            0,
        )
    }


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A small finished run: two bases, activations (large arrays), a JSON, weights."""
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results" / "x"
    for method in ("lib", "pca"):
        storage.write_bases(results / method / "basis.zarr", _basis(), {}, method, {})
    with storage.activation_writer(results / "activations.zarr", {}, chunk_samples=4) as store:
        for i in range(3):
            store.append({"l": torch.full((4, 2, 3), float(i), dtype=torch.float64)})
        store.write_stats({"l": LayerStats(torch.zeros(3), torch.eye(3), 24, LayerTraits())})
    storage.write_json(results / "lib" / "modules.json", {"modules": [[1, 2]]})
    storage.write_weights(results / "model" / "weights.npz", {"w": np.ones(3)})
    return results


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_run_passes(run, capsys):
    assert verify.main(["results"]) == 0
    assert (
        "All 3 stores and 2 JSON/weights files under results are intact." in capsys.readouterr().out
    )


def test_flipped_byte_deleted_chunk_and_broken_json_are_listed_with_the_rebuild_command(
    run, capsys, monkeypatch
):
    # The activations count as large: only a full read finds a changed value, as verify does.
    monkeypatch.setattr(storage, "FULL_CHECK_BYTES", 64)
    _flip_byte(run / "lib" / "basis.zarr" / "a" / "C" / "c" / "0" / "0")
    (run / "pca" / "basis.zarr" / "a" / "C_pinv" / "c" / "0" / "0").unlink()
    zarr.open_group(run / "activations.zarr", mode="r+")["l/activations"][9, 1, 2] = 0.5
    (run / "lib" / "modules.json").write_text('{"modules": [[1,')
    assert verify.main([]) == 1
    out = capsys.readouterr().out
    assert "4 damaged" in out, out
    assert "results/x/lib/basis.zarr: " in out and "a/C" in out, out
    assert "results/x/pca/basis.zarr: a/C_pinv has 0 of its 1 chunks" in out, out
    assert "results/x/activations.zarr: the values of l/activations differ" in out, out
    assert "results/x/lib/modules.json: not readable as JSON" in out, out
    command = next(line.strip() for line in out.splitlines() if "snakemake" in line)
    assert shlex.split(command) == [
        "snakemake",
        "--cores",
        "all",
        "--forcerun",
        "results/x/activations.zarr",
        "results/x/lib/basis.zarr",
        "results/x/lib/modules.json",
        "results/x/pca/basis.zarr",
    ]


def test_a_run_elsewhere_gets_its_directory_and_user_stores_are_skipped(run, capsys, tmp_path):
    (run / "notes.zarr").mkdir()
    (run / "notes.zarr" / ".zgroup").write_text("{}")  # a user's Zarr v2 store
    (run / "model" / "weights.npz").write_bytes(b"not a zip")
    os.chdir(tmp_path.parent)
    assert verify.main([str(run)]) == 1
    out = capsys.readouterr().out
    assert f"skipped {run / 'notes.zarr'}: not written by the workflow" in out, out
    assert (
        f"snakemake --cores all --directory {tmp_path} --forcerun results/x/model/weights.npz"
        in out
    )
