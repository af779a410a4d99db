"""What the tiny end-to-end run stored, checked numerically through xarray.

The stores are opened with xarray directly (not through ``interaction_basis.storage``), so these
tests pin the published layout: group and variable names, dims, attrs, and the method §A.9
invariants of the numbers themselves.
"""

import hashlib
import json
import re
import warnings
from importlib.metadata import version
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image
from smk_helpers import load_yaml, partial_files

from interaction_basis.config import WorkflowConfig
from invariants import (
    assert_constant_node,
    assert_final_linear_edges,
    assert_uncorrelated,
    assert_whitened_gradients,
)

pytestmark = pytest.mark.slow

METHODS = ("lib", "pca")
IMPORTANCE = {"lib": "Lambda", "pca": "eigenvalues"}


def open_tree(path) -> xr.DataTree:
    assert path.is_dir(), f"missing store {path}"
    with warnings.catch_warnings():
        # Snakemake's .snakemake_timestamp inside directory() outputs is not a Zarr node.
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
        return xr.open_datatree(path, engine="zarr", consolidated=False)


def t(da: xr.DataArray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(da.values))


@pytest.fixture(scope="module")
def experiment(tiny_run):
    return WorkflowConfig.model_validate(load_yaml(tiny_run.configfile)).experiments[0]


@pytest.fixture(scope="module")
def node_layers(experiment):
    # tiny.yaml leaves node_layers at the model's default: the mod-add layers.
    return experiment.extract.node_layers or ["ln1.0", "ln2.0", "unembed", "output"]


@pytest.fixture(scope="module")
def out(tiny_run):
    return tiny_run.results()


@pytest.fixture(scope="module")
def acts(out):
    return open_tree(out / "activations.zarr")


@pytest.fixture(scope="module")
def stats(acts, node_layers):
    return {
        layer: SimpleNamespace(
            mean=t(acts[layer]["mean"]),
            gram=t(acts[layer]["gram"]),
            count=int(acts[layer].attrs["count"]),
        )
        for layer in node_layers
    }


@pytest.fixture(scope="module", params=METHODS)
def method(request):
    return request.param


@pytest.fixture(scope="module")
def basis_tree(out, method):
    return open_tree(out / method / "basis.zarr")


@pytest.fixture(scope="module")
def bases(basis_tree, method, node_layers):
    return {
        layer: SimpleNamespace(
            C=t(basis_tree[layer]["C"]),
            C_pinv=t(basis_tree[layer]["C_pinv"]),
            importance=t(basis_tree[layer][IMPORTANCE[method]]),
            n_masked=int(basis_tree[layer].attrs["n_masked"]),
        )
        for layer in node_layers
    }


@pytest.fixture(scope="module")
def edges_tree(out, method):
    return open_tree(out / method / "edges.zarr")


# --- the run itself -----------------------------------------------------------------------


def test_run_left_no_partial_outputs(tiny_run):
    assert partial_files(tiny_run.workdir / "results") == []


def test_every_rule_wrote_its_log(tiny_run, method):
    logs = tiny_run.workdir / "results" / "logs"
    for rel in (
        "train_model/tiny.log",
        "extract_activations/tiny.log",
        f"fit_basis/tiny/{method}.log",
        f"compute_edges/tiny/{method}.log",
        f"cluster_graph/tiny/{method}.log",
        "summarize_experiment/tiny.log",
        f"interpret_features/tiny/{method}.log",
        "build_explorer/tiny.log",
    ):
        assert (logs / rel).is_file(), rel


# --- activations.zarr ----------------------------------------------------------------------


def test_activations_groups_and_provenance(acts, node_layers):
    assert sorted(acts.children) == sorted(node_layers)
    assert list(acts.attrs["node_layers"]) == list(node_layers)
    _check_provenance(acts.attrs)


def test_activation_statistics_match_the_stored_activations(acts, stats, node_layers):
    """mean and centred Gram (method §A.2) recomputed from the stored activations."""
    for layer in node_layers:
        x = t(acts[layer]["activations"]).to(torch.float64)
        assert acts[layer]["activations"].dims == ("sample", "position", "feature")
        flat = x.reshape(-1, x.shape[-1])
        s = stats[layer]
        assert s.count == flat.shape[0]
        mean = flat.mean(0)
        constant = layer != "output"  # every layer but the logits has the folded constant
        if constant:
            torch.testing.assert_close(flat[:, -1], torch.ones(len(flat), dtype=flat.dtype))
        torch.testing.assert_close(s.mean, mean, rtol=1e-10, atol=1e-12)
        # Centred with μ̃ (the mean without its constant entry); the logits are not centred.
        shift = mean.clone() if constant else torch.zeros_like(mean)
        shift[-1] = 0.0
        c = flat - shift
        gram = c.T @ c / len(flat)
        torch.testing.assert_close(s.gram, gram, rtol=1e-9, atol=1e-9 * float(gram.abs().max()))


# --- basis.zarr ----------------------------------------------------------------------------


def test_basis_groups_and_provenance(basis_tree, method, node_layers, bases):
    assert sorted(basis_tree.children) == sorted(node_layers), "one group per node layer"
    assert basis_tree.attrs["method"] == method
    assert list(basis_tree.attrs["node_layers"]) == list(node_layers)
    _check_provenance(basis_tree.attrs)
    for layer in node_layers:
        g = basis_tree[layer]
        assert g["C"].dims == ("orig", "feature")
        assert g["C_pinv"].dims == ("feature", "orig")
        b = bases[layer]
        assert b.C.shape == b.C_pinv.T.shape
        assert b.importance.shape == (b.C.shape[1],)
        # C⁺ is a left inverse of C.
        torch.testing.assert_close(
            b.C_pinv @ b.C, torch.eye(b.C.shape[1], dtype=b.C.dtype), rtol=0, atol=1e-8
        )
    has_m_dash = sorted(layer for layer in node_layers if "M_dash" in basis_tree[layer])
    assert has_m_dash == (sorted(node_layers[:-1]) if method == "lib" else [])


def test_features_are_uncorrelated(bases, stats, node_layers):
    """A.9 (1): C^T G_raw C = diag(Λ), G_raw = Y^{-T} G Y^{-1} (the uncentred second moment)."""
    for layer in node_layers[:-1]:
        assert_uncorrelated(bases[layer], stats[layer])


def test_constant_node(bases, stats, acts, node_layers):
    """A.9 (2): feature 0 is the constant direction, ±√Λ_0 on every sample."""
    for layer in node_layers[:-1]:
        assert_constant_node(bases[layer], t(acts[layer]["activations"]), stats[layer])


def test_lib_gradients_are_whitened(out, stats, node_layers):
    """A.9 (3): C⁺ M′ C⁺ᵀ = I on the [n_masked:, n_masked:] block (M′ is stored for LIB)."""
    tree = open_tree(out / "lib" / "basis.zarr")
    for layer in node_layers[:-1]:
        g = tree[layer]
        basis = SimpleNamespace(
            C_pinv=t(g["C_pinv"]), importance=t(g["Lambda"]), n_masked=int(g.attrs["n_masked"])
        )
        assert_whitened_gradients(basis, t(g["M_dash"]))


def test_final_layer_keeps_the_neuron_basis(bases, node_layers):
    final = bases[node_layers[-1]]
    torch.testing.assert_close(final.C, torch.eye(final.C.shape[0], dtype=final.C.dtype))


# --- edges.zarr ----------------------------------------------------------------------------


def test_edge_groups_dims_and_shapes(edges_tree, bases, node_layers):
    pairs = list(zip(node_layers[:-1], node_layers[1:], strict=True))
    assert sorted(edges_tree.children) == sorted(f"{a}__{b}" for a, b in pairs)
    assert [tuple(p) for p in edges_tree.attrs["pairs"]] == pairs
    _check_provenance(edges_tree.attrs)
    for a, b in pairs:
        g = edges_tree[f"{a}__{b}"]
        assert g.attrs["in_layer"] == a and g.attrs["out_layer"] == b
        assert g["E"].dims == ("out_feature", "in_feature")
        assert g["E"].shape == (bases[b].C.shape[1], bases[a].C.shape[1])
        e = t(g["E"])
        assert torch.isfinite(e).all()
        assert (e >= -1e-12 * float(e.abs().max())).all(), "edges are mean squares"


def test_edges_into_output(edges_tree, bases, acts, method, node_layers):
    """A.9 (4): ΣE = mean ||logits||² in any basis; for LIB the column sums are Λ."""
    last_in, final = node_layers[-2], node_layers[-1]
    e = t(edges_tree[f"{last_in}__{final}"]["E"])
    logits = t(acts[final]["activations"])
    if method == "lib":
        assert_final_linear_edges(e, bases[last_in], logits)
    else:
        total = logits.to(torch.float64).square().sum(-1).mean()
        torch.testing.assert_close(e.sum(), total, rtol=1e-8, atol=0)


# --- modules.json, graph, summary, figures --------------------------------------------------


def test_modules(out, method, bases, experiment, node_layers):
    modules = json.loads((out / method / "modules.json").read_text())
    cfg = experiment.cluster
    assert modules["resolution"] == cfg.resolution
    assert modules["seed"] == cfg.seed
    assert modules["n_iterations"] == cfg.n_iterations
    assert modules["implementation"] == cfg.implementation
    assert modules["edge_norm"] == cfg.edge_norm
    layers = modules["layers"]
    assert layers == (cfg.layers or node_layers[:-1])
    assert -0.5 <= modules["modularity"] <= 1
    assert modules["n_clusters"] == len(modules["clusters"]) >= 1
    # Every feature of every graph layer is one node, in exactly one cluster.
    nodes = modules["nodes"]
    for layer in layers:
        idx = sorted(n["index"] for n in nodes if n["layer"] == layer)
        assert idx == list(range(bases[layer].C.shape[1])), layer
    assert {n["cluster"] for n in nodes} == set(range(modules["n_clusters"]))
    for cluster in modules["clusters"]:
        members = {(n["layer"], n["index"]) for n in nodes if n["cluster"] == cluster["id"]}
        listed = {(layer, i) for layer, idx in cluster["features"].items() for i in idx}
        assert members == listed, cluster["id"]
        assert "frequency" in cluster  # mod-add clusters carry a Fourier label
    n_singletons = sum(1 for c in modules["clusters"] if sum(map(len, c["features"].values())) == 1)
    assert modules["n_non_singleton"] == modules["n_clusters"] - n_singletons
    graph = out / method / "graph.graphml"
    assert graph.is_file() and "<graphml" in graph.read_text()[:2000]


def test_summary(out, bases, method):
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert summary["experiment"] == "tiny"
    assert isinstance(summary["test_accuracy"], float)
    assert 0 <= summary["test_accuracy"] <= 1
    assert summary["test_accuracy"] == metrics["test_accuracy"]
    assert summary["methods"][method]["features_kept"] == {
        layer: b.C.shape[1] for layer, b in bases.items()
    }
    assert (out / "summary.md").read_text().strip()


def test_features_store(out, method, basis_tree, bases, node_layers, experiment):
    feats = open_tree(out / method / "features.zarr")
    _check_provenance(feats.attrs)
    assert feats.attrs["basis_config_sha256"] == basis_tree.attrs["config_sha256"]
    assert list(feats.attrs["node_layers"]) == node_layers
    p = experiment.model.train.modulus
    for layer in node_layers:
        g = feats[layer]
        n = bases[layer].C.shape[1]
        assert g.sizes["feature"] == n and g.sizes["rank"] == 20
        np.testing.assert_array_equal(g["importance"].values, bases[layer].importance.numpy())
        assert bool(g["is_constant"].values[0]) == (layer != "output")
        assert not g["is_constant"].values[1:].any()
        top, bottom = g["top_value"].values, g["bottom_value"].values
        assert (np.diff(top, axis=0) <= 0).all() and (np.diff(bottom, axis=0) >= 0).all()
        np.testing.assert_array_equal(top[0], g["max"].values)
        np.testing.assert_array_equal(bottom[0], g["min"].values)
        assert ((g["top_a"].values >= 0) & (g["top_a"].values < p)).all()
        assert g["dominant_term"].dims == ("feature",)
    assert list(feats.attrs["direct_effect_layers"]) == ["unembed", "output"]
    # The logits layer keeps the neuron basis: each feature promotes its own output most.
    promoted = feats["output"]["promoted_output"].values[0]
    np.testing.assert_array_equal(promoted, np.arange(len(promoted)))


def test_figures_are_valid_pngs(out):
    figures = sorted(out.rglob("*.png"))
    names = {str(p.relative_to(out)) for p in figures}
    assert {"spectra.png", "graph.png", "model/training.png"} <= names, names
    for path in figures:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG", path
            assert min(img.size) >= 50, path


def test_model_outputs(out):
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["source"] == "trained"
    assert 0 <= metrics["train_accuracy"] <= 1
    with np.load(out / "model" / "weights.npz", allow_pickle=False) as w:
        assert all(np.isfinite(w[k]).all() for k in w.files)


def _check_provenance(attrs):
    assert attrs["package_version"] == version("interaction-basis")
    assert re.fullmatch(r"[0-9a-f]{64}", attrs["config_sha256"])
    if "config" in attrs:  # the hashed config slices are stored beside the hash
        assert hashlib.sha256(attrs["config"].encode()).hexdigest() == attrs["config_sha256"]
