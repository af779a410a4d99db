"""Stage entry points of the interpretation stages: ``interpret_features`` (features.zarr) and
``build_explorer`` (explorer.html). Wiring only: the math is in ``features``, the page in
``explorer``, storage in ``io``."""

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from interaction_basis import io, tasks
from interaction_basis.config import ExtractConfig, InterpretConfig, ModelConfig
from interaction_basis.features import (
    compute_activation_evidence,
    compute_direct_effects,
    compute_fourier_evidence,
)
from interaction_basis.stages import provenance

log = logging.getLogger(__name__)


def interpret_features(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    interpret_cfg: InterpretConfig,
    method: str,
    weights_path: str,
    basis_path: str,
    out_path: str,
    tokens_path: str | None = None,
) -> None:
    """Per-feature evidence of one basis on the held-out split (see ``features``)."""
    bases = io.read_bases(basis_path)
    layers = list(bases)
    empty = [layer for layer, b in bases.items() if b.C.shape[1] == 0]
    if empty:
        raise ValueError(
            f"{basis_path}: layer(s) {empty} kept no features, so there is nothing to describe. "
            "Lower basis.truncation or drop the layer from extract.node_layers."
        )
    weights = tasks.load_weights(model_cfg, weights_path)
    with_output = layers if layers[-1] == "output" else [*layers, "output"]
    model = tasks.build_model(
        model_cfg, weights, with_output, extract_cfg.dtype, extract_cfg.device
    )
    inputs, split, labels = _held_out(model_cfg, tokens_path, interpret_cfg.max_samples)
    log.info("%s: %d held-out samples (%s)", method, len(inputs), split)
    evidence = compute_activation_evidence(
        model.activations,
        inputs,
        bases,
        batch_size=interpret_cfg.batch_size,
        top_k=interpret_cfg.top_k,
        n_quantile_rows=interpret_cfg.n_quantile_rows,
        quantiles=interpret_cfg.quantiles,
        window=interpret_cfg.window if model_cfg.kind == "hf" else None,
        seed=interpret_cfg.seed,
        progress=lambda r: tqdm(r, desc="features", unit="batch"),
    )
    direct_layers = _add_direct_effects(model, bases, evidence, interpret_cfg.n_direct)
    if model_cfg.kind == "modadd":
        _add_modadd_evidence(model, bases, evidence, inputs, model_cfg.train.modulus)
    tokenizer = _tokenizer(model_cfg, weights_path)
    for layer, b in bases.items():
        v = evidence[layer]
        v["importance"] = (("feature",), b.importance.numpy())
        constant = np.zeros(b.C.shape[1], dtype=bool)
        constant[0] = extract_cfg.center and b.n_masked >= 1
        v["is_constant"] = (("feature",), constant)
        _add_labels(v, labels, tokenizer)
    attrs = provenance(
        model=model_cfg.model_dump(),
        extract=extract_cfg.model_dump(),
        interpret=interpret_cfg.model_dump(),
    )
    attrs.update(
        method=method,
        model_kind=model_cfg.kind,
        split=split,
        n_samples=len(inputs),
        basis_config_sha256=io.read_attrs(basis_path)["config_sha256"],
        direct_effect_layers=direct_layers,
    )
    io.write_features(out_path, evidence, attrs)


def _held_out(model_cfg: ModelConfig, tokens_path, max_samples):
    """The evaluation split's inputs, its description and the output labels (or None)."""
    if model_cfg.kind == "mlp":
        ds = tasks.load_image_dataset(model_cfg.data)
        return ds.x_test[:max_samples], f"{ds.source}, test split", list(ds.class_names)
    data = tasks.load_task_data(model_cfg, tokens_path)
    inputs = data.test_inputs[:max_samples]
    if model_cfg.kind == "modadd":
        p = model_cfg.train.modulus
        return inputs, f"modular addition mod {p}, test split", [*map(str, range(p)), "="]
    return inputs, "held-out token chunks", None


def _tokenizer(model_cfg: ModelConfig, weights_path: str):
    if model_cfg.kind != "hf":
        return None
    from interaction_basis.text_data import load_tokenizer

    return load_tokenizer(weights_path)


def _add_direct_effects(model, bases, evidence, n_direct: int) -> list[str]:
    """Direct effects for the layer feeding the logits linearly, and for the logits."""
    before = model.node_layers[model.node_layers.index("output") - 1]
    sections = {before: model.sections[model.node_layers.index(before)]}
    sections["output"] = lambda x: x
    done = []
    for layer, section in sections.items():
        if layer not in bases:
            continue
        try:
            evidence[layer] |= compute_direct_effects(section, bases[layer], n_direct)
            done.append(layer)
        except ValueError as err:
            log.info("%s: %s", layer, err)
    return done


def _add_modadd_evidence(model, bases, evidence, inputs, modulus: int) -> None:
    from interaction_basis.data import build_modadd_dataset

    tokens, _ = build_modadd_dataset(modulus)
    with torch.no_grad():
        acts = model.activations(tokens.to(torch.long))
    for layer, fourier in compute_fourier_evidence(acts, bases, modulus).items():
        v = evidence[layer]
        v |= fourier
        for name in ("top", "bottom"):
            sample = v[f"{name}_sample"][1]
            v[f"{name}_a"] = (("rank", "feature"), inputs[sample, 0].numpy())
            v[f"{name}_b"] = (("rank", "feature"), inputs[sample, 1].numpy())


def _add_labels(v: dict, labels, tokenizer) -> None:
    """Readable names of the direct effects' outputs and of the windows' tokens."""
    if tokenizer is not None:

        def name(ids: np.ndarray) -> np.ndarray:
            uniq, inverse = np.unique(ids, return_inverse=True)
            text = np.array([tokenizer.decode([int(i)]) if i >= 0 else "" for i in uniq])
            return text[inverse].reshape(ids.shape)

    elif labels is not None:

        def name(ids: np.ndarray) -> np.ndarray:
            text = [labels[i] if 0 <= i < len(labels) else str(i) for i in ids.flat]
            return np.array(text).reshape(ids.shape)

    else:
        return
    for key in ("promoted", "suppressed"):
        if f"{key}_output" in v:
            dims, ids = v[f"{key}_output"]
            v[f"{key}_label"] = (dims, name(ids))
    for key in ("top", "bottom"):
        if f"{key}_window_token" in v and tokenizer is not None:
            dims, ids = v[f"{key}_window_token"]
            v[f"{key}_window_text"] = (dims, name(ids))


def build_explorer(
    experiment: str,
    model_cfg: ModelConfig,
    interpret_cfg: InterpretConfig,
    methods: list[str],
    basis_paths: list[str],
    edges_paths: list[str],
    modules_paths: list[str | None],
    features_paths: list[str],
    summary_path: str | None,
    evaluation_path: str | None,
    out_path: str,
) -> None:
    """explorer.html from each method's basis, edges, modules and features."""
    from interaction_basis.explorer import MethodData, build_page, check_features

    data = {}
    for m, bp, ep, mp, fp in zip(
        methods, basis_paths, edges_paths, modules_paths, features_paths, strict=True
    ):
        bases = io.read_bases(bp)
        features = io.read_features(fp)
        check_features(features, bases, io.read_attrs(bp)["config_sha256"], fp)
        modules = io.read_json(mp) if mp else None
        data[m] = MethodData(bases, io.read_edges(ep), modules, features)
    page = build_page(
        experiment,
        data,
        summary=io.read_json(summary_path) if summary_path else None,
        evaluation=io.read_json(evaluation_path) if evaluation_path else None,
        max_edges=interpret_cfg.max_edges,
        page_examples=interpret_cfg.page_examples,
        thumbnails=_thumbnails(model_cfg, data, interpret_cfg.page_examples),
    )
    log.info("explorer page: %.2f MB", len(page.encode()) / 1e6)
    io.write_text(out_path, page)


def _thumbnails(model_cfg: ModelConfig, data, n: int) -> dict[int, str]:
    """Image models: PNG thumbnails of the held-out inputs shown on the cards."""
    if model_cfg.kind != "mlp":
        return {}
    from interaction_basis.explorer import thumbnail_uri

    ds = tasks.load_image_dataset(model_cfg.data)
    wanted = set()
    for d in data.values():
        for layer in d.features.children:
            g = d.features[layer].ds
            for key in ("top_sample", "bottom_sample"):
                wanted |= {int(s) for s in np.unique(g[key].values[:n])}
    return {s: thumbnail_uri(ds.x_test[s].reshape(ds.image_shape).numpy()) for s in sorted(wanted)}
