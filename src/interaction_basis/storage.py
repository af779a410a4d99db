"""All storage: weights, Zarr stores (through xarray), JSON. Every write is atomic, every read
is verified.

Outputs are written to a sibling temporary path and renamed into place, so a job killed
halfway leaves nothing that a later stage (or a rerun) would mistake for a finished result.

Every Zarr store gets an integrity record in its root attributes (``integrity``), written last,
just before the rename: per array its shape, dtype, number of stored chunks, whether all values
are finite and, for arrays up to :data:`FULL_CHECK_BYTES`, a CRC-32 of the values. Opening a
store checks all of it (Zarr fills a missing chunk with the fill value without a word, so the
chunk count is what catches a deleted chunk file). A non-finite array is refused unless its
attribute :data:`NAN_IS_DATA_ATTR` says why its NaNs are data (token windows past a sequence
end). Larger arrays (activations) are only counted and shape-checked when opened, so that
opening stays cheap; their CRC-32, computed while streaming them in at write time, is checked
at the end of every full pass over them, before anything computed from them is written. A
store without the record (or a bare directory without any store) is incomplete or from an
older version, and refused; nothing deletes it but the job that writes that output again
(planning never deletes anything). A damaged input stops
the job with :class:`DamagedInputError`, which names the file, what is wrong, the rule that
wrote it and the command that rebuilds it.
"""

import errno
import json
import os
import shutil
import sys
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor

from interaction_basis.lib.records import Basis, BatchSource, LayerStats, LayerTraits, Partial
from interaction_basis.lib.statistics import MomentSums
from interaction_basis.lib.summation import CompensatedSum

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
# Snakemake marks directory outputs with a .snakemake_timestamp file inside the store.
warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")


#: Arrays up to this size (bytes) are read and checksummed in full whenever their store is
#: opened; larger ones are checksummed at the end of each full streamed pass (see above).
FULL_CHECK_BYTES = 64 << 20
INTEGRITY_ATTR = "integrity"
# An array attribute: why this array's NaNs are data (e.g. token windows past a sequence end).
NAN_IS_DATA_ATTR = "nan_is_data"


class DamagedInputError(ValueError):
    """An input file is missing parts, has the wrong shape or values, or cannot be read."""

    def __init__(self, path: str | os.PathLike, problems: list[str], rule: str | None = None):
        self.path, self.problems, self.rule = Path(path), problems, rule
        super().__init__(_damage_message(self.path, problems, rule))


def _damage_message(path: Path, problems: list[str], rule: str | None) -> str:
    shown = "; ".join(problems[:8])
    if len(problems) > 8:
        shown += f"; and {len(problems) - 8} more"
    fix = f"`snakemake --cores all --forcerun {path}`"
    if rule:
        fix = (
            f"`snakemake --cores all --forcerun {rule}` (rule {rule} wrote it; for this output "
            f"only: {fix})"
        )
    return (
        f"{path} is damaged, nothing was computed from it: {shown}. Rebuild it and everything "
        f"computed from it with {fix}."
    )


def current_rule() -> str | None:
    """The Snakemake rule of the running job script (``None`` outside a workflow job)."""
    job = getattr(sys.modules.get("__main__"), "snakemake", None)
    return getattr(job, "rule", None)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds.

    Leftovers of earlier writes of the same output (a killed job's ``.<name>.partial-<pid>``)
    are removed first: the job writing an output owns all of its partial siblings. A full disk
    or an unwritable folder raises :class:`CannotWriteError`, naming ``path`` and the fix.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{final.name}.partial-"
        for stale in [p for p in final.parent.iterdir() if p.name.startswith(prefix)]:
            _remove(stale)
        tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
        try:
            yield tmp
            _remove(final)
            os.replace(tmp, final)
        finally:
            _remove(tmp)
    except OSError as err:
        if err.errno in _WRITE_ERRORS and not isinstance(err, CannotWriteError):
            raise CannotWriteError(final, err) from err
        raise


# What a user can do about an output that cannot be written, by errno.
_NO_SPACE = (
    "free space on that disk (`df -h {folder}` shows it), or run the workflow in a folder on a "
    "larger disk (`snakemake --directory <folder>`)"
)
_READ_ONLY = (
    "make {folder} writable (`chmod -R u+w {folder}`), or run the workflow in a folder you can "
    "write (`snakemake --directory <folder>`)"
)
_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", _NO_SPACE),
    errno.EDQUOT: ("the disk quota is exceeded", _NO_SPACE),
    errno.EROFS: ("the file system is read-only", _READ_ONLY),
    errno.EACCES: ("permission denied", _READ_ONLY),
    errno.EPERM: ("operation not permitted", _READ_ONLY),
}


class CannotWriteError(OSError):
    """An output cannot be written (full disk, read-only folder): nothing of it was kept."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        what, fix = _WRITE_ERRORS.get(err.errno or 0, (err.strerror or str(err), _READ_ONLY))
        folder = Path(path).parent
        super().__init__(
            err.errno,
            f"Cannot write {path}: {what} ([Errno {err.errno}] {err.strerror}); nothing of it "
            f"was kept. To fix it, {fix.format(folder=folder)}, then run the same command "
            "again.",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# TransformerLens state-dict buffers that are not parameters: the causal mask and its fill
# value (-inf), as in the paper authors' checkpoints.
NON_PARAMETER_BUFFERS = ("attn.mask", "attn.IGNORE")


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of a ``weights.npz`` (no pickles), each read in full (the zip CRC is checked)
    and finite (except :data:`NON_PARAMETER_BUFFERS`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist. Check model.weights in the config "
            "(and reference_dir if it uses '{reference_dir}')."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = {k: data[k] for k in data.files}
    except Exception as err:  # zipfile/pickle/format errors all mean the same to a user
        problem = (
            f"cannot read it as a .npz of arrays ({err}); expected a file written by "
            "numpy.savez with one array per state-dict tensor"
        )
        raise _bad_file(path, problem) from err
    bad = [
        k
        for k, v in weights.items()
        if v.dtype.kind in "fc"
        and not k.endswith(NON_PARAMETER_BUFFERS)
        and not np.isfinite(v).all()
    ]
    if bad:
        raise _bad_file(path, f"NaN or inf in {bad}")
    return weights


def _bad_file(path: Path, problem: str) -> ValueError:
    """A workflow output is damaged (rebuild it); a user's own file is just invalid."""
    if "results" not in path.parts:
        return ValueError(f"{path}: {problem[0].upper()}{problem[1:]}.")
    return DamagedInputError(path, [problem], _RESULT_WRITERS.get(path.name))


# Files without room for an integrity record: the rules that write them, named in the error
# (weights.npz and metrics.json come from train_model or import_model: the path says which).
_RESULT_WRITERS = {
    "modules.json": "cluster_graph",
    "node_ablation.json": "ablate_nodes",
    "edge_ablation.json": "ablate_edges",
    "modules_by_resolution.json": "cluster_resolutions",
}


def write_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            # Parameter names: never savez's own keyword ``allow_pickle``.
            np.savez(f, **weights)  # type: ignore[arg-type]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad_file(path, f"not readable as JSON ({err})") from err


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_folder(folder: str | os.PathLike, files: Mapping[str, str]) -> None:
    """A folder of text files (e.g. a page and its side files) by their relative paths, written
    atomically: all of them or none."""
    with atomic_path(folder) as tmp:
        for name, text in files.items():
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"internal: {name!r} is not a path inside {folder}")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text, encoding="utf-8")


def write_pretrained(folder: str | os.PathLike, *parts: Any) -> None:
    """A ``save_pretrained`` folder (e.g. a model and its tokenizer), written atomically."""
    with atomic_path(folder) as tmp:
        for part in parts:
            part.save_pretrained(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | Tensor):
        return np.asarray(obj).tolist()
    raise TypeError(f"Not JSON serialisable: {type(obj)}")


def _write_tree(path: str | os.PathLike, groups: Mapping[str, xr.Dataset], attrs: dict) -> None:
    tree = xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **groups})
    with atomic_path(path) as tmp:
        tree.to_zarr(tmp, mode="w", consolidated=False)
        _seal(tmp)


def _array_record(arr: zarr.Array, crc: int | None = None, finite: bool | None = None) -> dict:
    """What :func:`_verify` checks of one array: shape, dtype, stored chunks, values."""
    record = {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": int(arr.nchunks_initialized),
    }
    if arr.nbytes <= FULL_CHECK_BYTES:
        values = np.asarray(arr[...])
        crc, finite = _crc(values), _finite(values)
    if crc is not None:
        record["crc32"] = crc
    if finite is not None:
        record["finite"] = finite
    if NAN_IS_DATA_ATTR in arr.attrs:
        record[NAN_IS_DATA_ATTR] = True
    return record


def _crc(values: np.ndarray, start: int = 0) -> int:
    # An ndarray is a buffer; numpy's stubs say so (``__buffer__``) only for Python >= 3.12.
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8), start)  # type: ignore[arg-type]


def _finite(values: np.ndarray) -> bool:
    return bool(values.dtype.kind not in "fc" or np.isfinite(values).all())


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, member in sorted(group.members()):
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        else:
            yield from _arrays(member, f"{prefix}{name}/")


def _seal(path: Path, streamed: Mapping[str, tuple[int, bool]] | None = None) -> None:
    """Record the integrity of a finished store (last write before the rename).

    ``streamed``: CRC-32 and finiteness of large arrays, computed while they were written.
    """
    root = zarr.open_group(path, mode="r+")
    arrays = {
        name: _array_record(arr, *(streamed or {}).get(name, (None, None)))
        for name, arr in _arrays(root)
    }
    root.attrs[INTEGRITY_ATTR] = {"rule": current_rule(), "arrays": arrays}


# Stores already verified by this process, by path and root-metadata mtime.
_verified: set[tuple[str, int]] = set()


def _verify(path: Path) -> dict:
    """Check a store against its integrity record; returns the record."""
    meta = path / "zarr.json"
    if path.is_dir() and not meta.is_file():
        raise DamagedInputError(
            path, ["it holds no Zarr store (no zarr.json): the job that writes it did not finish"]
        )
    try:
        key = (str(path.resolve()), meta.stat().st_mtime_ns)
    except OSError as err:
        raise DamagedInputError(path, [f"not a readable Zarr store ({err})"]) from err
    if key in _verified:
        return _open_record(path)[1]
    root, record = _open_record(path)
    problems = _store_problems(root, record, full=False)
    if problems:
        raise DamagedInputError(path, problems, record.get("rule"))
    _verified.add(key)
    return record


def _open_record(path: Path) -> tuple[zarr.Group, dict]:
    try:
        root = zarr.open_group(path, mode="r")
        record = root.attrs.get(INTEGRITY_ATTR)
    except Exception as err:
        raise DamagedInputError(path, [f"not a readable Zarr store ({err})"]) from err
    if not isinstance(record, dict):
        raise DamagedInputError(
            path,
            ["it has no integrity record: it is incomplete, or was written by an older version"],
        )
    return root, record


def _store_problems(root: zarr.Group, record: dict, full: bool) -> list[str]:
    """What differs from the integrity record. ``full``: also read every large array in full
    and check its CRC-32 (otherwise checked at the end of a full streamed pass)."""
    problems = []
    for name, want in record["arrays"].items():
        try:
            arr = root[name]
        except KeyError:
            problems.append(f"array {name} is missing")
            continue
        if not isinstance(arr, zarr.Array):
            problems.append(f"{name} is a group, written as an array")
            continue
        try:
            got = _array_record(arr) if arr.nbytes <= FULL_CHECK_BYTES else None
            if got is None and full:
                got = _array_record(arr, *_streamed_crc(arr))
        except Exception as err:  # a corrupt chunk fails to decompress: the same damage
            problems.append(f"{name} cannot be read ({type(err).__name__}: {err})")
            continue
        have = got or {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        if have["shape"] != want["shape"] or have["dtype"] != want["dtype"]:
            problems.append(
                f"{name} is {have['dtype']} {have['shape']}, written as {want['dtype']} "
                f"{want['shape']}"
            )
            continue
        chunks = got["chunks"] if got else int(arr.nchunks_initialized)
        if chunks != want["chunks"]:
            problems.append(f"{name} has {chunks} of its {want['chunks']} chunks")
        elif got and "crc32" in want and got.get("crc32") != want["crc32"]:
            problems.append(f"the values of {name} differ from those written (CRC-32)")
        if want.get("finite") is False and not want.get(NAN_IS_DATA_ATTR):
            problems.append(f"{name} holds NaN or inf")
    return problems


def _streamed_crc(arr: zarr.Array) -> tuple[int, bool]:
    """CRC-32 and finiteness of a large array, read in slabs along its first axis (the order
    in which :class:`ActivationWriter` checksummed it), so that memory stays at one slab."""
    row_bytes = max(1, arr.nbytes // max(1, arr.shape[0]))
    step = max(1, FULL_CHECK_BYTES // row_bytes)
    crc, finite = 0, True
    for start in range(0, arr.shape[0], step):
        values = np.asarray(arr[start : start + step])
        crc, finite = _crc(values, crc), finite and _finite(values)
    return crc, finite


def check_store(path: str | os.PathLike) -> list[str]:
    """Everything wrong with a finished store, reading every array in full (``verify``)."""
    try:
        root, record = _open_record(Path(path))
    except DamagedInputError as err:
        return err.problems
    return _store_problems(root, record, full=True)


def check_file(path: str | os.PathLike) -> list[str]:
    """What is wrong with a result file that has no integrity record: a JSON that does not
    parse, a weights.npz that does not read in full (``verify``)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            read_json(path)
        elif path.suffix == ".npz":
            read_weights(path)
    except (DamagedInputError, ValueError, OSError) as err:
        problems = getattr(err, "problems", None)
        return list(problems) if problems else [str(err)]
    return []


def open_store(path: str | os.PathLike, cache: bool = True) -> xr.DataTree:
    """A result store, checked against its integrity record, as a lazily loaded DataTree.

    ``xr.open_datatree(path, engine="zarr", consolidated=False)`` with the check first, and
    without Zarr's warning about the ``.snakemake_timestamp`` file that Snakemake writes into
    every directory output (it has no setting to leave it out), filtered when this module is
    imported. ``cache`` False: an array read is not kept in the tree (each use reads it
    again), so that reading a large store part by part holds one part at a time.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Zarr store {path} does not exist; run the stage that makes it.")
    _verify(path)
    return xr.open_datatree(path, engine="zarr", consolidated=False, cache=cache)


class ActivationWriter:
    """Streams activation batches into a Zarr store, one group per node layer.

    Memory stays at one batch: each batch is appended along ``sample``. After the last batch,
    :meth:`write_stats` adds ``mean``, ``gram`` (feature, feature_t) and the (sample, position)
    ``count`` per layer (or a shard's moment sums). A store given no batch holds only the
    statistics (``extract.store_activations`` false).
    """

    def __init__(self, path: Path, attrs: dict, chunk_samples: int):
        self.path, self.chunk_samples = path, chunk_samples
        self.layers: list[str] = []
        self.streamed: dict[str, tuple[int, bool]] = {}  # CRC-32 and finiteness per layer
        xr.Dataset(attrs=attrs).to_zarr(path, mode="w", consolidated=False)

    def append(self, acts: Mapping[str, Tensor]) -> None:
        first = not self.layers
        for layer, x in acts.items():
            values = x.numpy()
            crc, finite = self.streamed.get(f"{layer}/activations", (0, True))
            self.streamed[f"{layer}/activations"] = (_crc(values, crc), finite and _finite(values))
            ds = xr.Dataset({"activations": (("sample", "position", "feature"), values)})
            if first:
                ds["activations"].encoding["chunks"] = (self.chunk_samples, *x.shape[1:])
                ds.to_zarr(self.path, group=layer, mode="w", consolidated=False)
                self.layers.append(layer)
            else:
                ds.to_zarr(
                    self.path, group=layer, mode="a", append_dim="sample", consolidated=False
                )

    def write_stats(self, stats: Mapping[str, LayerStats | MomentSums]) -> None:
        """Finished statistics (``mean``, ``gram``) or, for a shard, its raw moment sums."""
        for layer, s in stats.items():
            ds = _stats_dataset(layer, s) if isinstance(s, LayerStats) else _moments_dataset(s)
            ds.to_zarr(self.path, group=layer, mode="a", consolidated=False)
        root = xr.open_zarr(self.path, consolidated=False).attrs
        # Without stored activations (extract.store_activations false) the layers are those of
        # the statistics, in the same forward order.
        layers = self.layers or list(stats)
        xr.Dataset(attrs={**root, "node_layers": layers}).to_zarr(
            self.path, mode="a", consolidated=False
        )


def _stats_dataset(layer: str, s: LayerStats) -> xr.Dataset:
    return xr.Dataset(
        {
            "mean": (("feature",), s.mean.numpy()),
            "gram": (("feature", "feature_t"), s.gram.numpy()),
        },
        attrs={"count": s.count, "layer": layer, **_traits_attrs(s.traits)},
    )


def _traits_attrs(t: LayerTraits) -> dict:
    return {"constant": int(t.constant), "variance_first": int(t.variance_first)}


def _read_traits(attrs: Mapping) -> LayerTraits:
    return LayerTraits(bool(attrs["constant"]), bool(attrs["variance_first"]))


def _compensated_vars(name: str, dims: tuple[str, ...], s: CompensatedSum) -> dict:
    """Both words of a compensated sum as variables ``name`` and ``name_lo``."""
    return {name: (dims, s.hi.numpy()), f"{name}_lo": (dims, s.lo.numpy())}


def _read_compensated(group, name: str) -> CompensatedSum:
    return CompensatedSum(
        torch.from_numpy(group[name].values), torch.from_numpy(group[f"{name}_lo"].values)
    )


def _moments_dataset(m: MomentSums) -> xr.Dataset:
    f, ff = ("feature",), ("feature", "feature_t")
    return xr.Dataset(
        {
            "moment_shift": (f, m.shift.numpy()),
            **_compensated_vars("moment_sum", f, m.total),
            **_compensated_vars("moment_gram", ff, m.gram),
        },
        attrs={"count": m.count, "centred": int(m.centred), **_traits_attrs(m.traits)},
    )


def read_moments(path: str | os.PathLike) -> dict[str, MomentSums]:
    """A shard's moment sums per node layer (see :class:`MomentSums`)."""
    tree = open_store(path)
    out = {}
    for layer in tree.attrs["node_layers"]:
        g = tree[layer]
        if "moment_sum" not in g:
            raise ValueError(f"{path} holds no moment sums for {layer!r}: not a shard's store.")
        out[layer] = MomentSums(
            torch.from_numpy(g["moment_shift"].values),
            _read_compensated(g, "moment_sum"),
            _read_compensated(g, "moment_gram"),
            int(g.attrs["count"]),
            bool(g.attrs["centred"]),
            _read_traits(g.attrs),
        )
    return out


def write_stats(path: str | os.PathLike, stats: Mapping[str, LayerStats], attrs: dict) -> None:
    """A store like activations.zarr without the activations: ``mean``, ``gram``, ``count``."""
    groups = {layer: _stats_dataset(layer, s) for layer, s in stats.items()}
    _write_tree(path, groups, {**attrs, "node_layers": list(stats)})


def read_attrs(path: str | os.PathLike) -> dict:
    """The root attributes a stage wrote (without the integrity record)."""
    return {k: v for k, v in open_store(path).attrs.items() if k != INTEGRITY_ATTR}


def write_partial_sums(path: str | os.PathLike, parts: Mapping[str, Partial], attrs: dict) -> None:
    """One shard's sums (one group each: variables ``sum`` and its compensation ``sum_lo``,
    attribute ``count`` of (sample, position) pairs), to be added to the other shards' before
    dividing by the total count."""
    groups = {
        name: xr.Dataset(
            _compensated_vars("sum", ("row", "column"), p.total), attrs={"count": p.count}
        )
        for name, p in parts.items()
    }
    _write_tree(path, groups, {**attrs, "names": list(parts)})


def read_partial_sums(path: str | os.PathLike) -> dict[str, Partial]:
    tree = open_store(path)
    return {
        name: Partial(_read_compensated(tree[name], "sum"), int(tree[name].attrs["count"]))
        for name in tree.attrs["names"]
    }


@contextmanager
def activation_writer(
    path: str | os.PathLike, attrs: dict, chunk_samples: int = 1024
) -> Iterator[ActivationWriter]:
    """An :class:`ActivationWriter` whose store appears at ``path`` only when complete."""
    with atomic_path(path) as tmp:
        writer = ActivationWriter(tmp, attrs, chunk_samples)
        yield writer
        _seal(tmp, writer.streamed)


def read_node_layers(path: str | os.PathLike) -> list[str]:
    return list(open_store(path).attrs["node_layers"])


def read_stats(path: str | os.PathLike) -> dict[str, LayerStats]:
    tree = open_store(path)
    out = {}
    for layer in tree.attrs["node_layers"]:
        g = tree[layer]
        out[layer] = LayerStats(
            torch.from_numpy(g["mean"].values),
            torch.from_numpy(g["gram"].values),
            int(g.attrs["count"]),
            _read_traits(g.attrs),
        )
    return out


class _StreamCheck:
    """Checks a large array's CRC-32 once a pass has read all of it, in order."""

    def __init__(self, path: Path, record: dict, name: str):
        self.path, self.rule = path, record.get("rule")
        self.name, self.want = name, record["arrays"].get(name, {}).get("crc32")
        self.crc, self.next = 0, 0

    def update(self, start: int, values: np.ndarray, total: int) -> None:
        if self.want is None:
            return
        if start != self.next:  # not one pass in order: nothing to check
            self.want = None
            return
        self.crc, self.next = _crc(values, self.crc), start + len(values)
        if self.next == total and self.crc != self.want:
            problem = f"the values of {self.name} differ from those written (CRC-32)"
            raise DamagedInputError(self.path, [problem], self.rule)


class _LayerBatches:
    """One layer's activations, a batch at a time (sized, so that progress bars show an ETA)."""

    def __init__(self, var: xr.DataArray, batch_size: int, check: _StreamCheck):
        self.var, self.batch_size, self.check = var, batch_size, check
        self.n = var.sizes["sample"]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        for start in range(0, self.n, self.batch_size):
            values = self.var.isel(sample=slice(start, start + self.batch_size)).values
            self.check.update(start, values, self.n)
            yield torch.from_numpy(values)


def _array(tree: xr.DataTree, group: str, name: str) -> xr.DataArray:
    """The variable ``name`` of ``group`` (a DataTree's ``[]`` may also give a group)."""
    var = tree[group][name]
    if not isinstance(var, xr.DataArray):
        raise TypeError(f"{group}/{name} is a group, not an array.")
    return var


def _batches_from_tree(path: Path, record: dict, tree: xr.DataTree, batch_size: int) -> BatchSource:
    def batches(layer: str) -> _LayerBatches:
        check = _StreamCheck(path, record, f"{layer}/activations")
        return _LayerBatches(_array(tree, layer, "activations"), batch_size, check)

    return batches


def has_activations(path: str | os.PathLike) -> bool:
    """Whether an activation store keeps the per-token activations (not only the statistics:
    extract.store_activations false)."""
    tree = open_store(path)
    return all("activations" in tree[layer].data_vars for layer in tree.attrs["node_layers"])


def open_activation_batches(path: str | os.PathLike, batch_size: int) -> BatchSource:
    """A BatchSource that reads one batch of samples at a time from the store; a pass that
    reads an activation array to its end checks its CRC-32 before the last batch is given out."""
    tree = open_store(path)
    return _batches_from_tree(Path(path), _verify(Path(path)), tree, batch_size)


def read_activations(path: str | os.PathLike, layer: str) -> Tensor:
    tree = open_store(path)
    values = _array(tree, layer, "activations").values
    _StreamCheck(Path(path), _verify(Path(path)), f"{layer}/activations").update(
        0, values, len(values)
    )
    return torch.from_numpy(values)


def write_bases(
    path: str | os.PathLike,
    bases: Mapping[str, Basis],
    m_dash: Mapping[str, Tensor],
    method: str,
    attrs: dict,
) -> None:
    """One group per node layer: ``C`` (orig, feature), ``C_pinv`` (feature, orig), the
    importance (``Lambda`` for LIB, ``eigenvalues`` for PCA) and, for LIB, ``M_dash``."""
    groups = {}
    importance_name = {"lib": "Lambda", "pca": "eigenvalues"}.get(method, "importance")
    for layer, b in bases.items():
        data = {
            "C": (("orig", "feature"), b.C.numpy()),
            "C_pinv": (("feature", "orig"), b.C_pinv.numpy()),
            importance_name: (("feature",), b.importance.numpy()),
        }
        if layer in m_dash:
            data["M_dash"] = (("orig", "orig_t"), m_dash[layer].numpy())
        groups[layer] = xr.Dataset(data, attrs={"n_masked": b.n_masked, "layer": layer})
    _write_tree(path, groups, {**attrs, "method": method, "node_layers": list(bases)})


def read_bases(path: str | os.PathLike) -> dict[str, Basis]:
    tree = open_store(path)
    out = {}
    for layer in tree.attrs["node_layers"]:
        g = tree[layer]
        name = next(n for n in ("Lambda", "eigenvalues", "importance") if n in g)
        out[layer] = Basis(
            torch.from_numpy(g["C"].values),
            torch.from_numpy(g["C_pinv"].values),
            torch.from_numpy(g[name].values),
            int(g.attrs["n_masked"]),
        )
    return out


def read_m_dash(path: str | os.PathLike) -> dict[str, Tensor]:
    tree = open_store(path)
    return {
        layer: torch.from_numpy(tree[layer]["M_dash"].values)
        for layer in tree.attrs["node_layers"]
        if "M_dash" in tree[layer]
    }


def edge_group_name(in_layer: str, out_layer: str) -> str:
    return f"{in_layer}__{out_layer}"


def write_edges(
    path: str | os.PathLike, edges: Mapping[tuple[str, str], Tensor], attrs: dict
) -> None:
    """One group per adjacent pair ``{in}__{out}`` holding ``E`` (out_feature, in_feature)."""
    groups = {
        edge_group_name(a, b): xr.Dataset(
            {"E": (("out_feature", "in_feature"), e.numpy())},
            attrs={"in_layer": a, "out_layer": b},
        )
        for (a, b), e in edges.items()
    }
    pairs = [list(p) for p in edges]
    _write_tree(path, groups, {**attrs, "pairs": pairs})


def read_edges(path: str | os.PathLike) -> dict[tuple[str, str], Tensor]:
    tree = open_store(path)
    return {
        (a, b): torch.from_numpy(tree[edge_group_name(a, b)]["E"].values)
        for a, b in tree.attrs["pairs"]
    }


def write_graphml(path: str | os.PathLike, graph: Any) -> None:
    with atomic_path(path) as tmp:
        graph.write_graphml(str(tmp))


@contextmanager
def atomic_figure_path(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path`, keeping the suffix so that matplotlib picks the format."""
    final = Path(path)
    with atomic_path(final) as tmp:
        real = tmp.with_name(tmp.name + final.suffix)
        yield real
        os.replace(real, tmp)


def write_token_chunks(
    path: str | os.PathLike, chunks: Mapping[str, np.ndarray], attrs: dict
) -> None:
    """Token chunks ``(chunk, n_ctx + 1)`` per use, as groups: ``fit``, ``eval`` and, when the
    statistics have their own chunks, ``stats``."""
    widths = {name: tokens.shape[1] for name, tokens in chunks.items()}
    if len(set(widths.values())) != 1 or min(widths.values()) < 2:
        raise ValueError(f"Token chunks must share one width n_ctx + 1 >= 2, got {widths}.")
    groups = {}
    for name, tokens in chunks.items():
        ds = xr.Dataset({"tokens": (("chunk", "token"), np.ascontiguousarray(tokens))})
        # Whole rows of ~1 MiB per Zarr chunk: reading a batch of rows decompresses only them,
        # not a block spanning thousands of rows (the default chunking).
        rows = max(1, min(len(tokens), (1 << 20) // (tokens.shape[1] * tokens.itemsize)))
        ds["tokens"].encoding["chunks"] = (rows, tokens.shape[1])
        groups[name] = ds
    _write_tree(path, groups, {**attrs, "n_ctx": next(iter(widths.values())) - 1})


class TokenRows:
    """The chunks of one token group, read from the store only when sliced (``rows[a:b]``)."""

    def __init__(self, var: xr.DataArray):
        self._var = var

    def __len__(self) -> int:
        return self._var.sizes["chunk"]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self._var.isel(chunk=rows).values


def read_token_chunks(path: str | os.PathLike) -> dict[str, TokenRows]:
    """The groups written by :func:`write_token_chunks` (``fit``, ``eval``, maybe ``stats``)."""
    tree = open_store(path)
    missing = {"fit", "eval"} - set(tree.children)
    if missing:
        raise ValueError(
            f"{path} is not a token store (no group {sorted(missing)}); rerun tokenize_dataset."
        )
    return {name: TokenRows(_array(tree, name, "tokens")) for name in tree.children}


def write_features(
    path: str | os.PathLike,
    layers: Mapping[str, Mapping[str, tuple]],
    attrs: dict,
) -> None:
    """Per-feature evidence (``interaction_basis.interpret.features``): one group per node layer,
    its variables given as ``name: (dims, array[, attrs])``; coordinates ``quantile`` where
    present."""
    groups = {}
    for layer, variables in layers.items():
        coords = {k: v for k, v in variables.items() if k == "quantile"}
        data = {k: v for k, v in variables.items() if k not in coords}
        groups[layer] = xr.Dataset(data, coords=coords, attrs={"layer": layer})
    with _text_arrays_quiet():
        _write_tree(path, groups, {**attrs, "node_layers": list(layers)})


def read_features(path: str | os.PathLike) -> xr.DataTree:
    """The store written by :func:`write_features`, loaded (small for the toy models)."""
    with _text_arrays_quiet():
        return open_store(path).load()


def open_features(path: str | os.PathLike) -> xr.DataTree:
    """The store written by :func:`write_features`, checked but not loaded: each array is read
    when it is used. A GPT-2 store holds about 4 GB per method (token texts for 10⁵
    features), so the explorer reads it one layer at a time, and nothing read is kept."""
    with _text_arrays_quiet():
        return open_store(path, cache=False)


@contextmanager
def _text_arrays_quiet() -> Iterator[None]:
    # Labels and tokens are fixed-width text, which zarr-python reads and writes but Zarr v3
    # has no published spec for yet; zarr warns on every such array.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield
