"""Damaged inputs are refused with the fix (issue 15): every store written through ``storage``
carries an integrity record, checked when it is read; weights and JSON are checked too."""

import json
import os

import numpy as np
import pytest
import torch
import zarr

from interaction_basis import storage
from interaction_basis.lib.records import Basis, LayerStats, LayerTraits


@pytest.fixture(autouse=True)
def _fresh_verification_cache():
    storage._verified.clear()
    yield
    storage._verified.clear()


def _bases(d: int = 5, k: int = 3) -> dict[str, Basis]:
    g = torch.Generator().manual_seed(0)
    b = Basis(
        torch.randn(d, k, dtype=torch.float64, generator=g),
        torch.randn(k, d, dtype=torch.float64, generator=g),
        torch.rand(k, dtype=torch.float64, generator=g),
        0,
    )
    return {"a": b}


def _written_basis(tmp_path):
    path = tmp_path / "results" / "x" / "basis.zarr"
    storage.write_bases(path, _bases(), {}, "lib", {})
    return path


def test_intact_store_reads_back(tmp_path):
    path = _written_basis(tmp_path)
    torch.testing.assert_close(storage.read_bases(path)["a"].C, _bases()["a"].C, rtol=0, atol=0)
    record = zarr.open_group(path, mode="r").attrs[storage.INTEGRITY_ATTR]
    assert record["arrays"]["a/C"]["shape"] == [5, 3] and record["rule"] is None
    assert storage.INTEGRITY_ATTR not in storage.read_attrs(path)


def test_missing_chunk_is_refused_naming_store_and_fix(tmp_path):
    path = _written_basis(tmp_path)
    (path / "a" / "C" / "c" / "0" / "0").unlink()
    with pytest.raises(storage.DamagedInputError) as err:
        storage.read_bases(path)
    msg = str(err.value)
    assert str(path) in msg and "a/C has 0 of its 1 chunks" in msg, msg
    assert f"--forcerun {path}" in msg, msg


def test_changed_value_and_missing_array_are_refused(tmp_path):
    path = _written_basis(tmp_path)
    zarr.open_group(path, mode="r+")["a/C_pinv"][0, 0] = np.nan
    with pytest.raises(storage.DamagedInputError, match="values of a/C_pinv differ"):
        storage.read_bases(path)
    storage._verified.clear()
    path = _written_basis(tmp_path)
    for f in sorted((path / "a" / "Lambda").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    (path / "a" / "Lambda").rmdir()
    with pytest.raises(storage.DamagedInputError, match="array a/Lambda is missing"):
        storage.read_bases(path)


def test_malformed_record_and_array_replaced_by_a_group_are_refused(tmp_path):
    path = _written_basis(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][storage.INTEGRITY_ATTR] = "garbage"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(storage.DamagedInputError, match="no integrity record"):
        storage.read_bases(path)
    storage._verified.clear()
    path = _written_basis(tmp_path)
    for f in sorted((path / "a" / "Lambda").rglob("*"), reverse=True):
        f.rmdir() if f.is_dir() else f.unlink()
    zarr.open_group(path, mode="r+").create_group("a/Lambda")
    with pytest.raises(storage.DamagedInputError, match="a/Lambda is a group"):
        storage.read_bases(path)


def test_store_without_record_and_bare_directory_are_refused(tmp_path):
    """Neither is deleted by anything but the job that writes it again (issue 23): its readers
    refuse it and name the command that rebuilds it."""
    path = _written_basis(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"][storage.INTEGRITY_ATTR]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(storage.DamagedInputError, match="no integrity record"):
        storage.read_bases(path)
    bare = tmp_path / "results" / "y" / "edges.zarr"
    bare.mkdir(parents=True)
    (bare / ".snakemake_timestamp").touch()
    with pytest.raises(storage.DamagedInputError) as err:
        storage.read_edges(bare)
    msg = str(err.value)
    assert "holds no Zarr store (no zarr.json)" in msg and f"--forcerun {bare}" in msg, msg
    assert path.is_dir() and bare.is_dir()


def test_non_finite_values_are_refused_on_read(tmp_path):
    path = tmp_path / "stats.zarr"
    stats = LayerStats(torch.tensor([1.0, float("nan")]), torch.eye(2), 4, LayerTraits())
    storage.write_stats(path, {"l": stats}, {})
    with pytest.raises(storage.DamagedInputError, match="l/mean holds NaN or inf"):
        storage.read_stats(path)


def test_nans_declared_as_data_are_kept_and_others_refused(tmp_path):
    window = np.ones((2, 3, 4))
    window[0, 0, 0] = np.nan  # a token window past the end of its sequence
    dims = ("rank", "feature", "window")
    declared = {storage.NAN_IS_DATA_ATTR: "past the sequence end"}
    storage.write_features(tmp_path / "ok.zarr", {"l": {"v": (dims, window, declared)}}, {})
    assert np.isnan(storage.read_features(tmp_path / "ok.zarr")["l"]["v"].values[0, 0, 0])
    storage.write_features(tmp_path / "bad.zarr", {"l": {"v": (dims, window)}}, {})
    with pytest.raises(storage.DamagedInputError, match="l/v holds NaN or inf"):
        storage.read_features(tmp_path / "bad.zarr")


def test_weights_may_hold_transformer_lens_fill_values_but_no_nan_parameters(tmp_path):
    weights = tmp_path / "weights.npz"
    w = {"blocks.0.attn.IGNORE": np.array(-np.inf, np.float32), "w": np.ones(3)}
    np.savez(weights, **w)
    assert set(storage.read_weights(weights)) == set(w)
    np.savez(weights, **{**w, "w": np.array([1.0, np.nan, 1.0])})
    with pytest.raises(ValueError, match=r"NaN or inf in \['w'\]"):
        storage.read_weights(weights)


def _activation_store(path, n_batches=3):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 2, 3, dtype=torch.float64, generator=g) for _ in range(n_batches)]
    with storage.activation_writer(path, {}, chunk_samples=4) as store:
        for x in batches:
            store.append({"l": x})
        stats = LayerStats(torch.zeros(3, dtype=torch.float64), torch.eye(3), 24, LayerTraits())
        store.write_stats({"l": stats})
    return torch.cat(batches)


def test_large_array_checksum_is_checked_at_the_end_of_a_pass(tmp_path, monkeypatch):
    """Arrays over FULL_CHECK_BYTES are only counted when opened; their streamed CRC-32 is
    compared when a pass reaches the end, before the last batch is handed out."""
    monkeypatch.setattr(storage, "FULL_CHECK_BYTES", 64)  # the activations count as large
    path = tmp_path / "activations.zarr"
    want = _activation_store(path)
    got = torch.cat(list(storage.open_activation_batches(path, 4)("l")))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    zarr.open_group(path, mode="r+")["l/activations"][9, 1, 2] = 0.5
    storage._verified.clear()
    batches = iter(storage.open_activation_batches(path, 4)("l"))  # opening: chunks, shapes fine
    assert next(batches).shape == (4, 2, 3)
    with pytest.raises(storage.DamagedInputError, match="values of l/activations differ"):
        list(batches)
    with pytest.raises(storage.DamagedInputError, match="values of l/activations differ"):
        storage.read_activations(path, "l")


def test_large_array_missing_chunk_is_refused_when_opened(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "FULL_CHECK_BYTES", 64)
    path = tmp_path / "activations.zarr"
    _activation_store(path)
    (path / "l" / "activations" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(storage.DamagedInputError, match="l/activations has 2 of its 3 chunks"):
        storage.open_activation_batches(path, 4)


def test_damaged_weights_and_json_name_the_fix(tmp_path):
    weights = tmp_path / "results" / "x" / "model" / "weights.npz"
    storage.write_weights(weights, {"w": np.ones(3)})
    weights.write_bytes(weights.read_bytes()[:-30])
    with pytest.raises(storage.DamagedInputError) as err:
        storage.read_weights(weights)
    assert f"--forcerun {weights}`" in str(err.value), err.value
    storage.write_weights(weights, {"w": np.array([1.0, np.inf])})
    with pytest.raises(storage.DamagedInputError, match=r"NaN or inf in \['w'\]"):
        storage.read_weights(weights)
    metrics = tmp_path / "results" / "x" / "model" / "metrics.json"
    metrics.write_text('{"train_accuracy": 1.0,')
    with pytest.raises(storage.DamagedInputError, match="not readable as JSON"):
        storage.read_json(metrics)


def test_stale_partials_of_the_output_are_removed_at_start(tmp_path):
    target = tmp_path / "basis.zarr"
    stale = [tmp_path / ".basis.zarr.partial-999999", tmp_path / ".basis.zarr.partial-1"]
    stale[0].mkdir()
    stale[1].write_text("half")
    other = tmp_path / ".edges.zarr.partial-999999"
    other.mkdir()
    with storage.atomic_path(target) as tmp:
        assert not any(p.exists() for p in stale)
        tmp.write_text("done")
    assert target.read_text() == "done" and other.exists()
    assert sorted(os.listdir(tmp_path)) == [".edges.zarr.partial-999999", "basis.zarr"]


def test_users_own_invalid_weights_are_not_called_a_result(tmp_path):
    weights = tmp_path / "mine" / "weights.npz"
    weights.parent.mkdir()
    weights.write_text("not weights")
    with pytest.raises(ValueError, match="Cannot read it as a .npz") as err:
        storage.read_weights(weights)
    assert not isinstance(err.value, storage.DamagedInputError)


def test_a_folder_of_files_is_written_whole_or_not_at_all(tmp_path):
    """An explorer folder (a page and its card files) killed halfway through its writing
    leaves the previous folder as it was, and no partial sibling."""
    folder = tmp_path / "explorer"
    storage.write_folder(folder, {"index.html": "old", "cards/a.js": "old a"})

    class Killed(dict):
        def items(self):
            yield "index.html", "new"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        storage.write_folder(folder, Killed())
    assert (folder / "index.html").read_text() == "old"
    assert (folder / "cards" / "a.js").read_text() == "old a"
    assert sorted(os.listdir(tmp_path)) == ["explorer"]
    with pytest.raises(ValueError, match="not a path inside"):
        storage.write_folder(folder, {"../escape.js": ""})
