"""Stage 8: per-feature evidence of each basis on held-out data (features.zarr). The math is in
``interpret.features``; what a model kind adds (Fourier spectra, token windows, class names)
comes from its ``kinds/<kind>/interpretation.py``."""

import logging

import numpy as np
import torch

from interaction_basis import storage
from interaction_basis.config import ExtractConfig, FeaturesConfig, ModelConfig
from interaction_basis.interpret.features import (
    compute_activation_evidence,
    compute_direct_effects,
    compute_readout_direct_effects,
)
from interaction_basis.kinds import data, interpretation, network
from interaction_basis.kinds.registry import KINDS
from interaction_basis.progress import progress
from interaction_basis.stages.common import log_device_peak, provenance, resolve_device

log = logging.getLogger(__name__)


def interpret_features(
    model: ModelConfig,
    extract: ExtractConfig,
    interpret: FeaturesConfig,
    method: str,
    weights: str,
    basis: str,
    features: str,
    tokens: str | None = None,
) -> None:
    """Per-feature evidence of one basis on the held-out split (see ``interpret.features``)."""
    kind = interpretation.get(model.kind)
    bases = storage.read_bases(basis)
    layers = list(bases)
    empty = [layer for layer, b in bases.items() if b.C.shape[1] == 0]
    if empty:
        raise ValueError(
            f"{basis}: layer(s) {empty} kept no features, so there is nothing to describe. "
            "Lower basis.truncation or drop the layer from extract.node_layers."
        )
    with_output = layers if layers[-1] == "output" else [*layers, "output"]
    device = resolve_device(extract.device, model.kind)
    net = network.load_model(model, weights, with_output, extract.dtype, device)
    inputs, split, labels = data.get(model.kind).held_out(model, tokens, interpret.max_samples)
    log.info("%s: %d held-out samples (%s)", method, len(inputs), split)
    evidence = compute_activation_evidence(
        net.activations,
        inputs,
        bases,
        batch_size=interpret.batch_size,
        top_k=interpret.top_k,
        n_quantile_rows=interpret.n_quantile_rows,
        quantiles=interpret.quantiles,
        window=interpret.window if KINDS[model.kind].text else None,
        seed=interpret.seed,
        progress=lambda r: progress(r, "features"),
        device=device,
    )
    direct_layers = _add_direct_effects(net, bases, evidence, interpret.n_direct)
    kind.add_feature_evidence(model, net, bases, evidence, inputs)
    # The readout loads its own copy of the model: drop this one first, so that the job holds
    # one copy at a time (two made GPT-2 small's job 2.4 GB larger; issue 27).
    del net
    readout = kind.final_readout(model, weights, extract.dtype, device)
    linearised = _add_readout_effects(
        readout, bases, evidence, inputs, direct_layers, interpret.n_direct, interpret.batch_size
    )
    del readout
    log_device_peak(device)
    tokenizer = kind.tokenizer(model, weights)
    for layer, b in bases.items():
        v = evidence[layer]
        v["importance"] = (("feature",), b.importance.numpy())
        constant = np.zeros(b.C.shape[1], dtype=bool)
        constant[0] = extract.center and b.n_masked >= 1
        v["is_constant"] = (("feature",), constant)
        _add_labels(v, labels, tokenizer)
    attrs = provenance(
        model=model,
        extract=extract,
        interpret=interpret,
    )
    attrs.update(
        method=method,
        model_kind=model.kind,
        split=split,
        n_samples=len(inputs),
        basis_config_sha256=storage.read_attrs(basis)["config_sha256"],
        direct_effect_layers=direct_layers + linearised,
        direct_effect_linearised=linearised,
    )
    storage.write_features(features, evidence, attrs)


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
            evidence[layer] |= compute_direct_effects(
                section, bases[layer], n_direct, device=model.device
            )
            done.append(layer)
        except ValueError as err:
            log.info("%s: %s", layer, err)
    return done


def _add_readout_effects(
    readout, bases, evidence, inputs, done: list[str], n_direct: int, batch_size: int
) -> list[str]:
    """Language models: the direct effect of every residual-stream layer's features through the
    final LayerNorm, frozen at the scale of each feature's top example, and the unembedding."""
    if readout is None:
        return []
    out = []
    for layer, b in bases.items():
        if layer in done or not readout.reads(layer, b.C.shape[0]):
            continue
        sample = np.asarray(evidence[layer]["top_sample"][1][0])
        position = np.asarray(evidence[layer]["top_position"][1][0])
        uniq, inverse = np.unique(sample, return_inverse=True)
        var = torch.cat(
            [
                readout.variance(inputs[torch.as_tensor(uniq[s : s + batch_size])]).cpu()
                for s in range(0, len(uniq), batch_size)
            ]
        )
        at = var[torch.as_tensor(inverse), torch.as_tensor(position)]
        evidence[layer] |= compute_readout_direct_effects(b, readout, at, n_direct)
        out.append(layer)
    return out


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
    for key in (
        "top",
        "bottom",
        "quantile_example",
        "top_previous",
        "bottom_previous",
        "quantile_example_previous",
    ):
        if f"{key}_window_token" in v and tokenizer is not None:
            dims, ids = v[f"{key}_window_token"]
            v[f"{key}_window_text"] = (dims, name(ids))
