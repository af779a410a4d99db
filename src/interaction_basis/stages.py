"""Workflow stage entry points: each wires ``io`` reads, package computations and ``io``
writes for one Snakemake rule. No math and no file handling of their own."""

import functools
import hashlib
import json
import logging
import os
import socket
import sys
import time
from importlib.metadata import version

import torch
from tqdm.auto import tqdm

from interaction_basis import io, tasks
from interaction_basis.basis import Truncation
from interaction_basis.build import (
    MomentSums,
    add_partials,
    compute_edge_sums,
    compute_m_dash,
    fit_bases,
    fit_final_basis,
    fit_layer_basis,
    next_basis_matrix,
    shard_range,
)
from interaction_basis.build import compute_edges as build_edges
from interaction_basis.clustering import build_interaction_graph, compute_modules
from interaction_basis.config import (
    BasisConfig,
    ClusterConfig,
    EdgesConfig,
    ExtractConfig,
    ModelConfig,
)
from interaction_basis.jacobians import Integration, Sources
from interaction_basis.summary import (
    compute_epsilon_from_mass,
    compute_summary,
    label_modadd_clusters,
    render_markdown,
)

log = logging.getLogger(__name__)


def provenance(**slices: object) -> dict:
    """Store attrs: package version and a hash of the config slices that made the output."""
    blob = json.dumps(slices, sort_keys=True, default=str)
    return {
        "package_version": version("interaction-basis"),
        "config_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "config": blob,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _curve(history: list, path: str) -> None:
    from interaction_basis.plotting import plot_training_curve

    with io.atomic_figure_path(path) as tmp:
        plot_training_curve(history, tmp)


def train_model(
    model_cfg: ModelConfig, weights_out: str, metrics_out: str, curve_out: str, threads: int = 1
) -> None:
    """Train the configured model; save weights, accuracies and the loss curve."""
    data = tasks.load_task_data(model_cfg)
    result = tasks.train(model_cfg, data, threads)
    log.info("trained: train acc %.6f, test acc %.6f", result.train_accuracy, result.test_accuracy)
    io.write_weights(weights_out, result.weights)
    metrics = {
        "source": "trained",
        **tasks.compute_accuracies(model_cfg, result.weights, data),
        "history": result.history,
    }
    io.write_json(metrics_out, metrics)
    _curve(result.history, curve_out)


def import_model(
    model_cfg: ModelConfig, weights_in: str, weights_out: str, metrics_out: str, curve_out: str
) -> None:
    """Validate existing weights, copy them into results and record their accuracy."""
    weights = io.read_weights(weights_in)
    tasks.validate_weights(model_cfg, weights, weights_in)
    weights = {k: v for k, v in weights.items() if not k.endswith(io.NON_PARAMETER_BUFFERS)}
    io.write_weights(weights_out, weights)
    data = tasks.load_task_data(model_cfg)
    metrics = {
        "source": os.path.abspath(weights_in),
        **tasks.compute_accuracies(model_cfg, weights, data),
        "history": [],
    }
    log.info("imported %s: %s", weights_in, metrics)
    io.write_json(metrics_out, metrics)
    _curve([], curve_out)


def download_model(model_cfg: ModelConfig, out_dir: str) -> None:
    """Fetch a hub model (pinned revision; token from HF_TOKEN) or copy a local folder."""
    from interaction_basis import hub

    info = hub.download_model(model_cfg.hub.source, model_cfg.hub.revision, out_dir)
    log.info("model %s at %s -> %s", info.get("repo_id"), info.get("commit"), out_dir)


def download_dataset(model_cfg: ModelConfig, out_dir: str) -> None:
    """Fetch a hub dataset snapshot or copy local text/parquet/jsonl files."""
    from interaction_basis import hub

    info = hub.download_dataset(model_cfg.text.source, model_cfg.text.revision, out_dir)
    log.info("dataset %s at %s -> %s", info.get("repo_id"), info.get("commit"), out_dir)


def tokenize_dataset(
    model_cfg: ModelConfig, model_dir: str, dataset_dir: str, out_path: str
) -> None:
    """Chunks of n_ctx + 1 tokens for fitting, maybe more for the statistics, and (from the
    last documents) for evaluation."""
    from interaction_basis import text_data

    t = model_cfg.text
    tokenizer = text_data.load_tokenizer(model_dir)
    kw = dict(split=t.split, text_column=t.text_column, txt_separator=t.txt_separator)
    texts = text_data.load_texts(dataset_dir, max_documents=t.max_documents, **kw)
    stream = text_data.tokenize_texts(texts, tokenizer)
    chunks = {"fit": text_data.pack_token_chunks(stream, t.n_ctx, t.n_samples, seed=t.seed)}
    if t.n_stats_samples is not None:
        chunks["stats"] = text_data.pack_token_chunks(
            stream, t.n_ctx, t.n_stats_samples, seed=t.seed
        )
    held_out = text_data.load_held_out_texts(
        dataset_dir, n_documents=t.n_eval_documents, n_fit_documents=t.max_documents, **kw
    )
    chunks["eval"] = text_data.tokenize_to_chunks(
        held_out, tokenizer, t.n_ctx, t.n_eval_samples, seed=t.seed
    )
    log.info("token chunks: %s", {name: c.shape for name, c in chunks.items()})
    attrs = provenance(text=t.model_dump(), hub=model_cfg.hub.model_dump())
    io.write_token_chunks(out_path, chunks, attrs)


def extract_activations(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    weights_path: str,
    out_path: str,
    tokens_path: str | None = None,
    shard: int | None = None,
) -> None:
    """Activations on the fitting split at every node layer, with means and Grams (over the
    statistics' own inputs when the task has them); with ``shard``, only that shard's samples,
    and its raw moment sums in place of the statistics."""
    weights = tasks.load_weights(model_cfg, weights_path)
    model = tasks.build_model(
        model_cfg, weights, extract_cfg.node_layers, extract_cfg.dtype, extract_cfg.device
    )
    log.info("device: %s", model.device)
    data = tasks.load_task_data(model_cfg, tokens_path)
    size = extract_cfg.batch_size
    start, stop = _shard_bounds(len(data.fit_inputs), extract_cfg, shard)
    attrs = provenance(model=model_cfg.settings(), extract=extract_cfg.model_dump())
    attrs.update(model_kind=model_cfg.kind, dataset=data.description, dtype=extract_cfg.dtype)
    if shard is not None:
        attrs.update(shard=shard, n_shards=extract_cfg.n_shards, sample_start=start)
        attrs.update(first_batch=start // size)
        log.info("shard %d of %d: samples %d..%d", shard, extract_cfg.n_shards, start, stop - 1)
    attrs.update(n_samples=stop - start)
    separate = data.stats_inputs is not None
    stats_inputs = data.stats_inputs if separate else data.fit_inputs
    with torch.no_grad():
        # Every shard centres its sums on the first batch of the whole run, so they add up.
        first = model.activations(stats_inputs[:size].to(model.device))
    moments = {layer: MomentSums.start(x, layer, extract_cfg.center) for layer, x in first.items()}

    def add(acts):
        return {layer: m.add(acts[layer], layer) for layer, m in moments.items()}

    def run(inputs, b0: int, batch):
        # The run's first statistics batch has already been through the model, for the shift.
        if inputs is stats_inputs and b0 == 0:
            return first
        return model.activations(batch.to(model.device))

    with io.activation_writer(out_path, attrs, chunk_samples=size) as store:
        with torch.no_grad():
            for b0, batch in _batches(data.fit_inputs, start, stop, size, "extract"):
                acts = run(data.fit_inputs, b0, batch)
                store.append({layer: x.cpu() for layer, x in acts.items()})
                if not separate:
                    moments = add(acts)
            if separate:
                bounds = _shard_bounds(len(stats_inputs), extract_cfg, shard)
                log.info("statistics over separate samples %d..%d", bounds[0], bounds[1] - 1)
                for b0, batch in _batches(stats_inputs, *bounds, size, "statistics"):
                    moments = add(run(stats_inputs, b0, batch))
        if shard is None:
            store.write_stats({layer: m.finalize(layer) for layer, m in moments.items()})
        else:
            store.write_stats({layer: m.cpu() for layer, m in moments.items()})


def _shard_bounds(n: int, extract_cfg: ExtractConfig, shard: int | None) -> tuple[int, int]:
    """Samples ``[start, stop)`` of one shard (all ``n`` without sharding)."""
    if shard is None:
        return 0, n
    return shard_range(n, extract_cfg.batch_size, extract_cfg.n_shards, shard)


def _batches(inputs, start: int, stop: int, size: int, desc: str):
    """``(b0, inputs[b0:b0 + size])`` over ``[start, stop)``, read one at a time, with a
    progress bar."""
    for b0 in tqdm(range(start, stop, size), desc=desc, unit="batch"):
        yield b0, inputs[b0 : min(b0 + size, stop)]


def gather_stats(shard_paths: list[str], out_path: str) -> None:
    """Pooled means and centred Grams: the shards' moment sums added (no pass over the data)."""
    parts = [io.read_moments(p) for p in shard_paths]
    stats = {}
    for layer, first in parts[0].items():
        for part in parts[1:]:
            first = first.merge(part[layer])
        stats[layer] = first.finalize(layer)
    attrs = {k: v for k, v in io.read_attrs(shard_paths[0]).items() if not _is_shard_attr(k)}
    attrs["n_samples"] = sum(int(io.read_attrs(p)["n_samples"]) for p in shard_paths)
    log.info("%d shards, %d samples", len(shard_paths), attrs["n_samples"])
    io.write_stats(out_path, stats, attrs)


def _is_shard_attr(key: str) -> bool:
    return key in ("shard", "sample_start", "first_batch", "node_layers")


def _integration(cfg) -> Integration:
    return Integration(cfg.method, cfg.n_intervals)


def _m_dash_settings(basis_cfg: BasisConfig) -> dict:
    """The M′ settings, shared by the unsharded and the sharded paths so that they agree."""
    return dict(
        integration=_integration(basis_cfg.integration),
        sources=Sources(basis_cfg.sources.n_pos, basis_cfg.sources.n_hidden),
        seed=basis_cfg.seed,
    )


def _edge_settings(edges_cfg: EdgesConfig) -> dict:
    """The edge settings, shared by the unsharded and the sharded paths so that they agree."""
    return dict(
        integration=_integration(edges_cfg.integration),
        sources=Sources(edges_cfg.n_sources_pos),
        seed=edges_cfg.seed,
    )


def fit_basis(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    basis_cfg: BasisConfig,
    method: str,
    weights_path: str,
    acts_path: str,
    out_path: str,
) -> None:
    """Bases of every node layer for one method, backwards from the output."""
    model = _build(model_cfg, extract_cfg, weights_path, acts_path)
    bases, m_dash = fit_bases(
        model,
        io.open_activation_batches(acts_path, extract_cfg.batch_size),
        io.read_stats(acts_path),
        method,
        truncation=Truncation(basis_cfg.truncation, basis_cfg.relative),
        center=extract_cfg.center,
        rotate_final=basis_cfg.rotate_final,
        **_m_dash_settings(basis_cfg),
        progress=True,
    )
    for layer, b in bases.items():
        log.info("%s %s: %d of %d directions kept", method, layer, b.C.shape[1], b.C.shape[0])
    io.write_bases(out_path, bases, m_dash, method, _basis_attrs(model_cfg, extract_cfg, basis_cfg))


def _basis_attrs(model_cfg, extract_cfg, basis_cfg) -> dict:
    return provenance(
        model=model_cfg.settings(), extract=extract_cfg.model_dump(), basis=basis_cfg.model_dump()
    )


def _build(model_cfg: ModelConfig, extract_cfg: ExtractConfig, weights_path: str, store: str):
    """The sectioned model with the node layers recorded in an activation or stats store."""
    weights = tasks.load_weights(model_cfg, weights_path)
    layers = io.read_node_layers(store)
    return tasks.build_model(model_cfg, weights, layers, extract_cfg.dtype, extract_cfg.device)


def compute_shard_m_dash(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    basis_cfg: BasisConfig,
    layer: str,
    weights_path: str,
    shard_path: str,
    next_basis_path: str,
    out_path: str,
) -> None:
    """One shard's sum behind a layer's ``M′``, given the next layer's (gathered) basis."""
    model = _build(model_cfg, extract_cfg, weights_path, shard_path)
    nxt = model.node_layers[model.node_layers.index(layer) + 1]
    c_next = next_basis_matrix(
        model.node_layers, layer, io.read_bases(next_basis_path), basis_cfg.rotate_final
    )
    part = compute_m_dash(
        model,
        io.open_activation_batches(shard_path, extract_cfg.batch_size),
        layer,
        c_next,
        **_m_dash_settings(basis_cfg),
        first_batch=int(io.read_attrs(shard_path)["first_batch"]),
        progress=True,
    )
    log.info("M' %s (next %s): %d (sample, position) pairs", layer, nxt, part.count)
    io.write_partial_sums(out_path, {layer: part}, provenance(layer=layer))


def fit_layer(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    basis_cfg: BasisConfig,
    method: str,
    layer: str,
    stats_path: str,
    m_dash_paths: list[str],
    out_path: str,
) -> None:
    """One layer's basis from the pooled statistics and, for LIB, the shards' ``M′`` sums."""
    layers = io.read_node_layers(stats_path)
    stats = io.read_stats(stats_path)[layer]
    truncation = Truncation(basis_cfg.truncation, basis_cfg.relative)
    m_dash = {}
    if layer == layers[-1]:
        basis = fit_final_basis(
            stats,
            layer,
            truncation=truncation,
            center=extract_cfg.center,
            rotate_final=basis_cfg.rotate_final,
        )
    else:
        if method == "lib":
            parts = [io.read_partial_sums(p)[layer] for p in m_dash_paths]
            m_dash[layer] = add_partials(parts).mean()
        basis = fit_layer_basis(
            stats,
            layer,
            method,
            m_dash.get(layer),
            truncation=truncation,
            center=extract_cfg.center,
        )
    log.info("%s %s: %d of %d directions kept", method, layer, basis.C.shape[1], basis.C.shape[0])
    attrs = _basis_attrs(model_cfg, extract_cfg, basis_cfg)
    io.write_bases(out_path, {layer: basis}, m_dash, method, attrs)


def assemble_basis(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    basis_cfg: BasisConfig,
    method: str,
    layer_paths: list[str],
    out_path: str,
) -> None:
    """The per-layer bases of a sharded run as one basis.zarr, in forward order."""
    bases, m_dash = {}, {}
    for path in layer_paths:
        bases |= io.read_bases(path)
        m_dash |= io.read_m_dash(path)
    io.write_bases(out_path, bases, m_dash, method, _basis_attrs(model_cfg, extract_cfg, basis_cfg))


def compute_shard_edges(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    edges_cfg: EdgesConfig,
    weights_path: str,
    shard_path: str,
    basis_path: str,
    out_path: str,
) -> None:
    """One shard's sums behind the edges of every adjacent pair."""
    model = _build(model_cfg, extract_cfg, weights_path, shard_path)
    sums = compute_edge_sums(
        model,
        io.open_activation_batches(shard_path, extract_cfg.batch_size),
        io.read_bases(basis_path),
        **_edge_settings(edges_cfg),
        first_batch=int(io.read_attrs(shard_path)["first_batch"]),
        progress=True,
    )
    io.write_partial_sums(
        out_path,
        {io.edge_group_name(a, b): part for (a, b), part in sums.items()},
        provenance(edges=edges_cfg.model_dump()),
    )


def gather_edges(edges_cfg: EdgesConfig, basis_path: str, part_paths: list[str], out_path: str):
    """The edges of a sharded run: the shards' sums added, divided by the total count."""
    layers = io.read_node_layers(basis_path)
    parts = [io.read_partial_sums(p) for p in part_paths]
    edges = {
        (a, b): add_partials(part[io.edge_group_name(a, b)] for part in parts).mean()
        for a, b in zip(layers, layers[1:])
    }
    io.write_edges(out_path, edges, provenance(edges=edges_cfg.model_dump()))


def compute_edges(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    edges_cfg: EdgesConfig,
    weights_path: str,
    acts_path: str,
    basis_path: str,
    out_path: str,
) -> None:
    """Edges between every pair of adjacent node layers."""
    model = _build(model_cfg, extract_cfg, weights_path, acts_path)
    bases = io.read_bases(basis_path)
    edges = build_edges(
        model,
        io.open_activation_batches(acts_path, extract_cfg.batch_size),
        bases,
        **_edge_settings(edges_cfg),
        progress=True,
    )
    attrs = provenance(edges=edges_cfg.model_dump())
    io.write_edges(out_path, edges, attrs)


def cluster_graph(
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    cluster_cfg: ClusterConfig,
    weights_path: str,
    basis_path: str,
    edges_path: str,
    modules_out: str,
    graph_out: str,
) -> None:
    """Leiden modules of the interaction graph, labelled by Fourier frequency for mod-add."""
    edges = io.read_edges(edges_path)
    node_layers = [a for a, _ in edges] + [list(edges)[-1][1]]
    layers = cluster_cfg.layers or node_layers[:-1]
    unknown = [layer for layer in layers if layer not in node_layers]
    if unknown:
        raise ValueError(f"cluster.layers {unknown} are not node layers: {node_layers}.")
    epsilon = cluster_cfg.epsilon
    if epsilon is None and cluster_cfg.edge_norm in ("log", "node_log"):
        epsilon = {
            a: compute_epsilon_from_mass(e, cluster_cfg.epsilon_mass) for (a, _), e in edges.items()
        }
    graph = build_interaction_graph(edges, layers, edge_norm=cluster_cfg.edge_norm, epsilon=epsilon)
    modules = compute_modules(
        graph,
        resolution=cluster_cfg.resolution,
        seed=cluster_cfg.seed,
        n_iterations=cluster_cfg.n_iterations,
    )
    graph.vs["cluster"] = modules.membership
    result = {
        "resolution": modules.resolution,
        "seed": modules.seed,
        "n_iterations": modules.n_iterations,
        "edge_norm": cluster_cfg.edge_norm,
        "epsilon": epsilon,
        "modularity": modules.modularity,
        "n_clusters": modules.n_clusters,
        "n_non_singleton": modules.n_non_singleton,
        "n_graph_edges": graph.ecount(),
        "layers": layers,
        "nodes": [
            {"layer": v["layer"], "index": v["index"], "cluster": c}
            for v, c in zip(graph.vs, modules.membership, strict=True)
        ],
        "clusters": [
            {"id": i, "features": f, "layer_spans": s}
            for i, (f, s) in enumerate(
                zip(modules.cluster_features, modules.layer_spans, strict=True)
            )
        ],
    }
    if model_cfg.kind == "modadd":
        model = tasks.build_model(
            model_cfg, tasks.load_weights(model_cfg, weights_path), node_layers, extract_cfg.dtype
        )
        labels = label_modadd_clusters(
            model, io.read_bases(basis_path), modules, model_cfg.train.modulus
        )
        for cluster, label in zip(result["clusters"], labels, strict=True):
            cluster["frequency"] = label
    io.write_json(modules_out, result)
    io.write_graphml(graph_out, graph)


def summarize(
    experiment: str,
    methods: list[str],
    model_metrics: str,
    basis_paths: list[str],
    edges_paths: list[str],
    modules_paths: list[str],
    out_md: str,
    out_json: str,
    spectra_png: str,
    graph_png: str,
    ground_truth: str | None = None,
) -> None:
    """The LIB-vs-PCA comparison: summary.md, summary.json and figures; with
    ``ground_truth`` (ground_truth.json), the scores against the planted modules too."""
    from interaction_basis.plotting import plot_interaction_graphs, plot_spectra

    bases = {m: io.read_bases(p) for m, p in zip(methods, basis_paths, strict=True)}
    edges = {m: io.read_edges(p) for m, p in zip(methods, edges_paths, strict=True)}
    modules = {m: io.read_json(p) for m, p in zip(methods, modules_paths, strict=True)}
    summary = compute_summary(
        experiment,
        methods,
        io.read_json(model_metrics) if model_metrics else {},
        bases,
        edges,
        modules,
    )
    markdown = render_markdown(summary)
    if ground_truth:
        from interaction_basis.ground_truth import render_ground_truth

        summary["ground_truth"] = io.read_json(ground_truth)
        markdown += "\n".join(["", *render_ground_truth(summary["ground_truth"])])
    io.write_json(out_json, summary)
    io.write_text(out_md, markdown)
    with io.atomic_figure_path(spectra_png) as path:
        plot_spectra(bases, path)
    with io.atomic_figure_path(graph_png) as path:
        title = "Leiden modules, log edge norm with ε from the edge mass"
        plot_interaction_graphs(edges, modules, title, path)


def score_ground_truth(
    model_cfg: ModelConfig,
    methods: list[str],
    weights_path: str,
    basis_paths: list[str],
    edges_paths: list[str],
    modules_paths: list[str],
    out_json: str,
) -> None:
    """Block purity, cross-block edges and module ARI of every method against the planted
    blocks (lib_spec H)."""
    from interaction_basis.ground_truth import score_method
    from interaction_basis.models.modular_mlp import compute_block_labels, mixing_of

    cfg = model_cfg.modular_mlp
    blocks = compute_block_labels(cfg.width, cfg.first_block)
    weights = io.read_weights(weights_path)
    tasks.validate_weights(model_cfg, weights, weights_path)
    scores = {}
    paths = zip(methods, basis_paths, edges_paths, modules_paths, strict=True)
    for method, basis_path, edges_path, modules_path in paths:
        bases = io.read_bases(basis_path)
        mixings = {layer: mixing_of(weights, layer) for layer in bases}
        modules = io.read_json(modules_path)
        edges = io.read_edges(edges_path)
        scores[method] = score_method(bases, edges, modules, blocks, mixings)
        log.info(
            "%s: min purity %s, ARI %s", method, scores[method]["min_purity"], scores[method]["ari"]
        )
    io.write_json(out_json, scores)


#: Seconds between two progress lines in a rule log.
PROGRESS_INTERVAL = 10.0


class _ProgressLog:
    """A file for tqdm that turns each refresh into one log line (count, rate and ETA)."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            log.info("%s", line)

    def flush(self) -> None:
        pass


def progress_to_log(interval: float = PROGRESS_INTERVAL) -> None:
    """Every tqdm bar of this process, the package's or a library's, writes into the log: a line
    every ``interval`` seconds and its final state (also of bars made with ``leave=False``), so
    that ``tail -f`` on a rule log shows a long job advance."""
    import tqdm.std

    init = getattr(tqdm.std.tqdm.__init__, "_to_log_of", tqdm.std.tqdm.__init__)

    @functools.wraps(init)
    def to_log(self, *args, **kwargs):
        kwargs.update(file=_ProgressLog(), mininterval=interval, ascii=True)
        if len(args) < 4:  # leave is the fourth positional parameter
            kwargs["leave"] = True
        init(self, *args, **kwargs)

    to_log._to_log_of = init
    tqdm.std.tqdm.__init__ = to_log


def set_threads(threads: int) -> None:
    """Start of every job: thread count, where it runs, progress bars and uncaught errors into
    the rule log."""
    torch.set_num_threads(max(1, int(threads)))
    progress_to_log()
    log.info(
        "torch threads: %d, host %s, SLURM job %s",
        torch.get_num_threads(),
        socket.gethostname(),
        os.environ.get("SLURM_JOB_ID", "-"),
    )

    def log_uncaught(kind, value, tb):
        # The traceback goes to the log only; the console gets the message once (Snakemake
        # shows a failed job's stderr, and its log where --show-failed-logs is set).
        log.error("job failed", exc_info=(kind, value, tb))
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        files = [h.baseFilename for h in logging.getLogger().handlers if hasattr(h, "baseFilename")]
        where = f" (traceback in {files[-1]})" if files else ""
        print(f"{kind.__name__}: {value}{where}", file=sys.stderr)

    sys.excepthook = log_uncaught
