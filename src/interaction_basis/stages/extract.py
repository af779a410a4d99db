"""Stage 2: activations at every node layer with their means and centred Grams, whole or per
shard (then gathered by adding the shards' moment sums)."""

import logging

import torch

from interaction_basis import storage
from interaction_basis.config import ExtractConfig, ModelConfig
from interaction_basis.kinds import data, network
from interaction_basis.lib.statistics import MomentSums, shard_range
from interaction_basis.progress import progress
from interaction_basis.stages.common import log_device_peak, provenance, resolve_device

log = logging.getLogger(__name__)


def extract_activations(
    model: ModelConfig,
    extract: ExtractConfig,
    weights: str,
    acts: str,
    tokens: str | None = None,
    shard: int | None = None,
) -> None:
    """Activations on the fitting split at every node layer, with means and Grams (over the
    statistics' own inputs when the task has them); with ``shard``, only that shard's samples,
    and its raw moment sums in place of the statistics."""
    model_cfg, extract_cfg = model, extract
    net = network.build_model(
        model_cfg,
        network.get(model_cfg.kind).load_weights(model_cfg, weights),
        extract_cfg.node_layers,
        extract_cfg.dtype,
        resolve_device(extract_cfg.device, model_cfg.kind),
    )
    task = data.get(model_cfg.kind).load_data(model_cfg, tokens)
    size = extract_cfg.batch_size
    start, stop = _shard_bounds(len(task.fit_inputs), extract_cfg, shard)
    attrs = provenance(model=model_cfg, extract=extract_cfg)
    attrs.update(model_kind=model_cfg.kind, dataset=task.description, dtype=extract_cfg.dtype)
    if shard is not None:
        attrs.update(shard=shard, n_shards=extract_cfg.n_shards, sample_start=start)
        attrs.update(first_batch=start // size)
        log.info("shard %d of %d: samples %d..%d", shard, extract_cfg.n_shards, start, stop - 1)
    attrs.update(n_samples=stop - start)
    separate = task.stats_inputs is not None
    stats_inputs = task.stats_inputs if separate else task.fit_inputs
    with torch.no_grad():
        # Every shard centres its sums on the first batch of the whole run, so they add up.
        first = net.activations(stats_inputs[:size].to(net.device))
    moments = {
        layer: MomentSums.start(x, net.traits(layer), extract_cfg.center)
        for layer, x in first.items()
    }

    def add(batch_acts):
        return {layer: m.add(batch_acts[layer], layer) for layer, m in moments.items()}

    def run(inputs, b0: int, batch):
        # The run's first statistics batch has already been through the model, for the shift.
        if inputs is stats_inputs and b0 == 0:
            return first
        return net.activations(batch.to(net.device))

    with storage.activation_writer(acts, attrs, chunk_samples=size) as store:
        with torch.no_grad():
            for b0, batch in _batches(task.fit_inputs, start, stop, size, "extract"):
                batch_acts = run(task.fit_inputs, b0, batch)
                if extract_cfg.store_activations:
                    store.append({layer: x.cpu() for layer, x in batch_acts.items()})
                if not separate:
                    moments = add(batch_acts)
            if separate:
                bounds = _shard_bounds(len(stats_inputs), extract_cfg, shard)
                log.info("statistics over separate samples %d..%d", bounds[0], bounds[1] - 1)
                for b0, batch in _batches(stats_inputs, *bounds, size, "statistics"):
                    moments = add(run(stats_inputs, b0, batch))
        if shard is None:
            store.write_stats({layer: m.finalize(layer) for layer, m in moments.items()})
        else:
            store.write_stats({layer: m.cpu() for layer, m in moments.items()})
    log_device_peak(net.device)


def _shard_bounds(n: int, extract_cfg: ExtractConfig, shard: int | None) -> tuple[int, int]:
    """Samples ``[start, stop)`` of one shard (all ``n`` without sharding)."""
    if shard is None:
        return 0, n
    return shard_range(n, extract_cfg.batch_size, extract_cfg.n_shards, shard)


def _batches(inputs, start: int, stop: int, size: int, desc: str):
    """``(b0, inputs[b0:b0 + size])`` over ``[start, stop)``, read one at a time, with a
    progress bar."""
    for b0 in progress(range(start, stop, size), desc):
        yield b0, inputs[b0 : min(b0 + size, stop)]


def extract_shard(
    model: ModelConfig,
    extract: ExtractConfig,
    weights: str,
    acts: str,
    shard: int,
    tokens: str | None = None,
) -> None:
    """One shard's activations and raw moment sums (see :func:`extract_activations`)."""
    extract_activations(model, extract, weights, acts, tokens, shard)


def gather_stats(shards: list[str], stats: str) -> None:
    """Pooled means and centred Grams: the shards' moment sums added (no pass over the data)."""
    parts = [storage.read_moments(p) for p in shards]
    pooled = {}
    for layer, first in parts[0].items():
        for part in parts[1:]:
            first = first.merge(part[layer])
        pooled[layer] = first.finalize(layer)
    attrs = {k: v for k, v in storage.read_attrs(shards[0]).items() if not _is_shard_attr(k)}
    attrs["n_samples"] = sum(int(storage.read_attrs(p)["n_samples"]) for p in shards)
    log.info("%d shards, %d samples", len(shards), attrs["n_samples"])
    storage.write_stats(stats, pooled, attrs)


def _is_shard_attr(key: str) -> bool:
    return key in ("shard", "sample_start", "first_batch", "node_layers")
