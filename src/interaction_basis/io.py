"""All storage: weights, Zarr stores (through xarray), JSON. Every write is atomic.

Outputs are written to a sibling temporary path and renamed into place, so a job killed
halfway leaves nothing that a later stage (or a rerun) would mistake for a finished result.
"""

import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from interaction_basis.basis import Basis
from interaction_basis.build import BatchSource, LayerStats, MomentSums, Partial
from interaction_basis.summation import CompensatedSum

warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
# Snakemake marks directory outputs with a .snakemake_timestamp file inside the store.
warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _remove(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays of a ``weights.npz`` (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist. Check model.weights in the config "
            "(and reference_dir if it uses '{reference_dir}')."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as err:  # zipfile/pickle/format errors all mean the same to a user
        raise ValueError(
            f"Cannot read {path} as a .npz of arrays ({err}). Expected a file written by "
            "numpy.savez with one array per state-dict tensor."
        ) from err


def write_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **weights)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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


def _open_tree(path: str | os.PathLike) -> xr.DataTree:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Zarr store {path} does not exist; run the stage that makes it.")
    return xr.open_datatree(path, engine="zarr", consolidated=False)


class ActivationWriter:
    """Streams activation batches into a Zarr store, one group per node layer.

    Memory stays at one batch: each batch is appended along ``sample``. After the last batch,
    :meth:`write_stats` adds ``mean``, ``gram`` (feature, feature_t) and the (sample, position)
    ``count`` per layer (or a shard's moment sums).
    """

    def __init__(self, path: Path, attrs: dict, chunk_samples: int):
        self.path, self.chunk_samples = path, chunk_samples
        self.layers: list[str] = []
        xr.Dataset(attrs=attrs).to_zarr(path, mode="w", consolidated=False)

    def append(self, acts: Mapping[str, Tensor]) -> None:
        first = not self.layers
        for layer, x in acts.items():
            ds = xr.Dataset({"activations": (("sample", "position", "feature"), x.numpy())})
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
        xr.Dataset(attrs={**root, "node_layers": self.layers}).to_zarr(
            self.path, mode="a", consolidated=False
        )


def _stats_dataset(layer: str, s: LayerStats) -> xr.Dataset:
    return xr.Dataset(
        {
            "mean": (("feature",), s.mean.numpy()),
            "gram": (("feature", "feature_t"), s.gram.numpy()),
        },
        attrs={"count": s.count, "layer": layer},
    )


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
        attrs={"count": m.count, "centred": int(m.centred)},
    )


def read_moments(path: str | os.PathLike) -> dict[str, MomentSums]:
    """A shard's moment sums per node layer (see :class:`MomentSums`)."""
    tree = _open_tree(path)
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
        )
    return out


def write_stats(path: str | os.PathLike, stats: Mapping[str, LayerStats], attrs: dict) -> None:
    """A store like activations.zarr without the activations: ``mean``, ``gram``, ``count``."""
    groups = {layer: _stats_dataset(layer, s) for layer, s in stats.items()}
    _write_tree(path, groups, {**attrs, "node_layers": list(stats)})


def read_attrs(path: str | os.PathLike) -> dict:
    return dict(_open_tree(path).attrs)


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
    tree = _open_tree(path)
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
        yield ActivationWriter(tmp, attrs, chunk_samples)


def read_node_layers(path: str | os.PathLike) -> list[str]:
    return list(_open_tree(path).attrs["node_layers"])


def read_stats(path: str | os.PathLike) -> dict[str, LayerStats]:
    tree = _open_tree(path)
    out = {}
    for layer in tree.attrs["node_layers"]:
        g = tree[layer]
        out[layer] = LayerStats(
            torch.from_numpy(g["mean"].values),
            torch.from_numpy(g["gram"].values),
            int(g.attrs["count"]),
        )
    return out


def _batches_from_tree(tree: xr.DataTree, batch_size: int) -> BatchSource:
    def batches(layer: str) -> Iterator[Tensor]:
        var = tree[layer]["activations"]
        n = var.sizes["sample"]
        for start in range(0, n, batch_size):
            yield torch.from_numpy(var.isel(sample=slice(start, start + batch_size)).values)

    return batches


def open_activation_batches(path: str | os.PathLike, batch_size: int) -> BatchSource:
    """A BatchSource that reads one batch of samples at a time from the store."""
    return _batches_from_tree(_open_tree(path), batch_size)


def read_activations(path: str | os.PathLike, layer: str) -> Tensor:
    return torch.from_numpy(_open_tree(path)[layer]["activations"].values)


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
    tree = _open_tree(path)
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
    tree = _open_tree(path)
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
    tree = _open_tree(path)
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
    tree = _open_tree(path)
    missing = {"fit", "eval"} - set(tree.children)
    if missing:
        raise ValueError(
            f"{path} is not a token store (no group {sorted(missing)}); rerun tokenize_dataset."
        )
    return {name: TokenRows(tree[name]["tokens"]) for name in tree.children}


def write_features(
    path: str | os.PathLike,
    layers: Mapping[str, Mapping[str, tuple[tuple[str, ...], np.ndarray]]],
    attrs: dict,
) -> None:
    """Per-feature evidence (``interaction_basis.features``): one group per node layer, its
    variables given as ``name: (dims, array)``; coordinates ``quantile`` where present."""
    groups = {}
    for layer, variables in layers.items():
        coords = {k: v for k, v in variables.items() if k == "quantile"}
        data = {k: v for k, v in variables.items() if k not in coords}
        groups[layer] = xr.Dataset(data, coords=coords, attrs={"layer": layer})
    with _text_arrays_quiet():
        _write_tree(path, groups, {**attrs, "node_layers": list(layers)})


def read_features(path: str | os.PathLike) -> xr.DataTree:
    """The store written by :func:`write_features`, loaded (it is small)."""
    with _text_arrays_quiet():
        return _open_tree(path).load()


@contextmanager
def _text_arrays_quiet() -> Iterator[None]:
    # Labels and tokens are fixed-width text, which zarr-python reads and writes but Zarr v3
    # has no published spec for yet; zarr warns on every such array.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield
