# Config loading and validation, wildcard constraints, and every function the rules use.
import functools
import os
import re
import sys
from pathlib import Path


from interaction_basis import planning
from interaction_basis import resources as job_sizes
from interaction_basis.data.sources import looks_like_path
from interaction_basis.kinds.registry import KINDS
from interaction_basis.config import (
    EdgeAblationConfig,
    NodeAblationConfig,
    ResolutionsConfig,
    validate_config,
)

# The JSON schema of config/schema.yaml (generated from the pydantic models), then the models:
# the verdict of `python -m interaction_basis.config --check`, in one line per problem.
CONFIG = validate_config(config)
EXPERIMENTS = {e.name: e for e in CONFIG.experiments}
TOY_LMS = {t.name: t for t in CONFIG.toy_lms}
# The toy LMs' models and corpora, which experiments read as local sources (normalised paths).
TOY_LM_MODELS = {os.path.normpath(f"results/toy_lms/{name}/model") for name in TOY_LMS}
TOY_LM_SOURCES = TOY_LM_MODELS | {
    os.path.normpath(f"results/toy_lms/{name}/corpus.txt") for name in TOY_LMS
}

# Planning never deletes anything under results/ (a dry run leaves a user's files as they are).
# A job's unfinished output is left only by a run that was killed: Snakemake marks it
# incomplete, and the next run (rerun-incomplete in both profiles) rebuilds it; every reader
# refuses a store without its integrity record.


def _local_sources():
    """A missing local model or dataset folder fails here, before any job (not after the
    other download has run): (setting, source, whether its download job still has to run)."""
    for name, e in EXPERIMENTS.items():
        if not e.model.downloaded:
            continue
        for section, folder in (("hub", "models"), ("text", "datasets")):
            source = getattr(e.model, section).source
            yield (
                f"experiment {name}: model.{section}.source",
                source,
                not Path(f"resources/{folder}/{name}").exists()
                and os.path.normpath(source) not in TOY_LM_SOURCES,
            )


for _setting, _source, _needed in _local_sources():
    planning.check_local_source(_source, _setting, needed=_needed)


def _resources_in_effect():
    """(where, name, value) of every default and per-rule resource the profiles and the
    command line set."""
    settings = workflow.resource_settings
    sources = [("default-resources", settings.default_resources or {})]
    sources += [(f"set-resources {r}", v) for r, v in settings.overwrite_resources.items()]
    for where, resources in sources:
        for name in resources:
            yield where, name, getattr(resources[name], "raw", resources[name])


# A SLURM profile's placeholders (<account>, <cpu-partition>) stop the run until they are set.
planning.check_placeholders(_resources_in_effect())


def _alternation(names):
    """A regex matching exactly these names (or nothing)."""
    names = sorted(names)
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


wildcard_constraints:
    experiment=_alternation(EXPERIMENTS),
    method="lib|pca|neuron",
    shard=r"\d+",
    layer=r"[A-Za-z0-9_.]+",
    toy_lm=_alternation(TOY_LMS),


HUB = _alternation(n for n, e in EXPERIMENTS.items() if e.model.downloaded)
TRAINED = _alternation(
    n for n, e in EXPERIMENTS.items() if not e.model.downloaded and e.model.weights is None
)
IMPORTED = _alternation(
    n for n, e in EXPERIMENTS.items() if not e.model.downloaded and e.model.weights is not None
)
# Planted-module MLPs: scored against their planted blocks (rules/ground_truth.smk).
PLANTED = _alternation(n for n, e in EXPERIMENTS.items() if e.model.planted)
SHARDED = _alternation(n for n, e in EXPERIMENTS.items() if e.extract.n_shards > 1)
UNSHARDED = _alternation(n for n, e in EXPERIMENTS.items() if e.extract.n_shards == 1)


def stage_code(rule):
    """Input function: the package modules that ``scripts/<rule>.py`` imports, transitively, and
    the experiment's model-kind module with its imports where the stage uses one (see
    ``interaction_basis.planning``). Editing any of them reruns the rule and what follows.

    Relative to the working directory, so that Snakemake's record of a job's inputs does not
    change when the project (workflow and results together) moves to another path.
    """
    script = Path(workflow.basedir) / "scripts" / f"{rule}.py"
    package = Path(workflow.basedir) / "src" / "interaction_basis"

    def inputs(wildcards):
        kind = experiment(wildcards).model.kind if "experiment" in wildcards.keys() else None
        return [os.path.relpath(f) for f in planning.stage_code(script, kind, package)]

    return inputs


def experiment(wildcards):
    return EXPERIMENTS[wildcards.experiment]


def is_hub(wildcards):
    return experiment(wildcards).model.downloaded


def model_input(wildcards):
    """The trained/imported weights.npz, or a hub model's downloaded folder."""
    if is_hub(wildcards):
        return f"resources/models/{wildcards.experiment}"
    return f"results/{wildcards.experiment}/model/weights.npz"


def tokens_input(wildcards):
    return f"results/{wildcards.experiment}/tokens.zarr" if is_hub(wildcards) else []


def recompute_tokens(wildcards):
    """tokens.zarr where the basis and edge jobs recompute a language model's activations
    (extract.store_activations false); the other kinds' inputs need no file."""
    return [] if experiment(wildcards).extract.store_activations else tokens_input(wildcards)


def metrics_input(wildcards):
    return [] if is_hub(wildcards) else f"results/{wildcards.experiment}/model/metrics.json"


def ground_truth_input(wildcards):
    """ground_truth.json where the model has planted modules to score against."""
    planted = experiment(wildcards).model.planted
    return f"results/{wildcards.experiment}/ground_truth.json" if planted else []


def model_targets():
    return [
        f"resources/models/{name}" if e.model.downloaded else f"results/{name}/model/weights.npz"
        for name, e in EXPERIMENTS.items()
    ]


def download_targets():
    return [
        f"resources/{what}/{name}"
        for name, e in EXPERIMENTS.items()
        if e.model.downloaded
        for what in ("models", "datasets")
    ]


def imported_weights(wildcards):
    path = experiment(wildcards).model.weights
    return path.replace("{reference_dir}", CONFIG.reference_dir)


def model_params(wildcards):
    """Only the model settings of the experiment's kind (see ModelConfig.settings)."""
    return experiment(wildcards).model.settings()


def toy_lm_params(wildcards):
    return TOY_LMS[wildcards.toy_lm].model_dump(mode="json")


def toy_lm_output(section):
    """Input function: a hub or text source that is a toy LM's output (so that the download
    rule waits for its training); [] for any other source, which is read as it is."""

    def inputs(wildcards):
        source = getattr(experiment(wildcards).model, section).source
        return [source] if os.path.normpath(source) in TOY_LM_SOURCES else []

    return inputs


def model_section(section):
    """Params: the model kind and one section of it (downloads: hub or text)."""

    def params(wildcards):
        return experiment(wildcards).model.settings(section)

    return params


def extract_params(wildcards):
    return experiment(wildcards).extract.model_dump(mode="json")


def basis_params(wildcards):
    """One method's basis settings (BasisConfig.settings): not the list of methods, nor for PCA
    and neuron LIB's M' settings, which would rerun them for a change that is not theirs."""
    # shard_m_dash has no method wildcard: it computes LIB's M' only.
    method = wildcards.method if "method" in wildcards.keys() else "lib"
    return experiment(wildcards).basis.settings(method).model_dump(mode="json")


def edges_params(wildcards):
    return experiment(wildcards).edges.model_dump(mode="json")


def cluster_params(wildcards):
    return experiment(wildcards).cluster.model_dump(mode="json")


def evaluate_params(part):
    """The evaluate settings one rule uses (``part``, a sub-model of EvaluateConfig), so that
    other changes do not rerun it."""

    def params(wildcards):
        return experiment(wildcards).evaluate.part(part).model_dump(mode="json")

    return params


def device_params(wildcards):
    """extract.device alone, for the stages that run the model but read no other extract
    setting (the ablations), so that those settings do not rerun them."""
    return experiment(wildcards).extract.device


def cluster_sweep_params(wildcards):
    """cluster_resolutions takes its γ from evaluate.resolutions, not cluster.resolution."""
    return experiment(wildcards).cluster.model_dump(mode="json", exclude={"resolution"})


def lm_mem_mb(memory_bytes):
    """Memory request (MB) of a job, doubling with each retry: ``memory_bytes(plan)`` for a
    language model of known shape (a formula of interaction_basis.resources), else 2000; times
    resources.mem_mb_scale."""

    def mem(wildcards, attempt):
        name = wildcards.get("experiment")
        mb = 2000
        if LM_PLANS.get(name) is not None:
            mb = job_sizes.mem_mb(memory_bytes(LM_PLANS[name][1]))
        return int(mb * CONFIG.resources.mem_mb_scale * 2 ** (attempt - 1))

    return mem


def cluster_runtime(sweep):
    """Runtime request (minutes) of a cluster job: Leiden once (cluster_graph) or once per
    evaluate.resolutions (``sweep``) on the largest possible graph of a language model of known
    shape, with the margin, else 30; times resources.runtime_scale."""

    def request(wildcards):
        name = wildcards.get("experiment")
        minutes = 30
        if LM_PLANS.get(name) is not None:
            e = EXPERIMENTS[name]
            minutes = job_sizes.cluster_minutes(
                LM_PLANS[name][1],
                implementation=e.cluster.implementation,
                n_iterations=e.cluster.n_iterations,
                n_runs=len(e.evaluate.resolutions) if sweep else 1,
            )
        return max(1, round(minutes * CONFIG.resources.runtime_scale))

    return request


def features_params(wildcards):
    """interpret_features' settings: not the page's (max_edges, page_examples), which would
    rerun every method's features."""
    return experiment(wildcards).interpret.features().model_dump(mode="json")


def explorer_params(wildcards):
    return experiment(wildcards).interpret.model_dump(mode="json")


def evaluation_input(wildcards):
    """evaluation.json where the evaluation runs: the explorer shows its ablation results."""
    enabled = experiment(wildcards).evaluate.enabled
    return f"results/{wildcards.experiment}/evaluation.json" if enabled else []


def heads_input(wildcards):
    """heads.json for the toy LMs trained here: the explorer marks the heads' features."""
    name = wildcards.experiment
    return f"results/{name}/heads.json" if _reads_toy_lm(name) else []


def methods(wildcards):
    return experiment(wildcards).basis.methods


def per_method(pattern):
    """Input function: ``pattern`` expanded over the experiment's basis methods."""

    def inputs(wildcards):
        return expand(pattern, experiment=wildcards.experiment, method=methods(wildcards))

    return inputs


def final_targets(wildcards):
    """The inputs of `all`, every result the workflow makes (every output of every job
    under results/: the README's stage table), so that a plain run rebuilds whatever is missing,
    and only what is computed from it. The downloads (resources/) are not results: a job that
    needs one fetches it again, and `all_downloads` fetches them all."""
    targets = [f"results/toy_lms/{name}/{part}" for name in TOY_LMS for part in TOY_LM_OUTPUTS]
    for name in EXPERIMENTS:
        targets += experiment_results(name)
    return targets


TOY_LM_OUTPUTS = ("model", "corpus.txt", "metrics.json")
MODEL_OUTPUTS = ("model/weights.npz", "model/metrics.json", "model/training.png")
SUMMARY_OUTPUTS = ("summary.md", "summary.json", "spectra.png", "graph.png")
REPORT_OUTPUTS = (
    "evaluation.json",
    "node_ablation.png",
    "edge_ablation.png",
    "edge_distribution.png",
    "modules.png",
)
METHOD_OUTPUTS = ("basis.zarr", "edges.zarr", "modules.json", "graph.graphml")
EVALUATION_OUTPUTS = ("node_ablation.json", "edge_ablation.json", "modules_by_resolution.json")


def experiment_results(name):
    """Every output of the experiment's jobs, as the stage table lists them (paths relative to
    results/{name}/ in the tuples above)."""
    e = EXPERIMENTS[name]
    parts = ["tokens.zarr"] if e.model.downloaded else list(MODEL_OUTPUTS)
    parts += SUMMARY_OUTPUTS
    per_method = list(METHOD_OUTPUTS)
    if e.extract.n_shards == 1:
        parts.append("activations.zarr")
    else:
        shards = range(e.extract.n_shards)
        parts += [f"shards/{i}/activations.zarr" for i in shards] + ["stats.zarr"]
        per_method += [f"shards/{i}/edges.zarr" for i in shards]
        # The per-layer outputs are named once the statistics are gathered; until then every
        # layer is rebuilt anyway, and a dry run still lists the whole plan.
        if Path(f"results/{name}/stats.zarr/zarr.json").is_file():
            layers = experiment_node_layers(name)
            per_method += [f"layers/{layer}.zarr" for layer in layers]
            if "lib" in e.basis.methods:
                parts += [
                    f"lib/shards/{i}/m_dash/{layer}.zarr" for i in shards for layer in layers[:-1]
                ]
    if e.model.planted:
        parts.append("ground_truth.json")
    if e.evaluate.enabled:
        parts += REPORT_OUTPUTS
        per_method += EVALUATION_OUTPUTS
    if e.interpret.enabled:
        parts += ["explorer", "explorer.html"]
        per_method.append("features.zarr")
    if _reads_toy_lm(name):
        parts += ["heads.json", "heads.md"]
    parts += [f"{method}/{part}" for method in e.basis.methods for part in per_method]
    return [f"results/{name}/{part}" for part in parts]


def _reads_toy_lm(name):
    """Whether the experiment's model is a toy LM trained here (a GPT-2: attribute_heads)."""
    e = EXPERIMENTS[name]
    return e.model.downloaded and os.path.normpath(e.model.hub.source) in TOY_LM_MODELS


def basis_targets():
    return [
        f"results/{name}/{method}/basis.zarr"
        for name, e in EXPERIMENTS.items()
        for method in e.basis.methods
    ]


def cluster_targets():
    return [
        f"results/{name}/{method}/modules.json"
        for name, e in EXPERIMENTS.items()
        for method in e.basis.methods
    ]


# Job resources, scaled by the config's `resources` section; cluster specifics (partition,
# account, GPU model) live only in profiles/. A language model's model jobs (a `stage` below)
# ask for what the formulas of interaction_basis.resources give for its shape and settings; every
# other job, and a language model whose config.json is not there yet, for the rule's default.
COMPUTE_THREADS = CONFIG.resources.threads
GPUS = CONFIG.resources.gpu


def _lm_plan(name):
    """(config.json, job_sizes.Plan) of a language-model experiment; None for other kinds and
    while its shape is unknown (not downloaded, not in the hub cache)."""
    e = EXPERIMENTS[name]
    if not e.model.downloaded:
        return None
    source = e.model.hub.source
    folders = [f"resources/models/{name}"] + ([source] if looks_like_path(source) else [])
    found = planning.read_model_shape(folders, source, e.model.hub.revision)
    if found is None:
        return None
    shape, config_file = found
    text, x, b = e.model.text, e.extract, e.basis
    points = max(1, b.integration.n_intervals + (b.integration.method == "trapezoidal"))
    plan = job_sizes.Plan(
        shape=shape,
        node_layers=tuple(x.node_layers or job_sizes.default_node_layers(shape)),
        dtype=x.dtype,
        batch_size=x.batch_size,
        n_ctx=text.n_ctx,
        n_samples=text.n_samples,
        n_stats_samples=text.n_stats_samples,
        n_shards=x.n_shards,
        store_activations=x.store_activations,
        lib="lib" in b.methods,
        n_methods=len(b.methods),
        m_dash_pos=b.sources.n_pos,
        m_dash_hidden=b.sources.n_hidden,
        edges_pos=e.edges.n_sources_pos,
        integration_points=points,
        memory_budget_mb=x.memory_budget_mb,
    )
    return config_file, plan


LM_PLANS = {name: _lm_plan(name) for name in EXPERIMENTS}


def _uses_gpu(name):
    e = EXPERIMENTS[name]
    return e.extract.device == "cuda" and KINDS[e.model.kind].uses_gpu


def gpus(wildcards):
    """GPUs of a model job: resources.gpu, or with extract.device cuda one per job of a
    language model."""
    name = wildcards.get("experiment")
    if GPUS or name is None:
        return GPUS
    return 1 if _uses_gpu(name) else 0


def _job_samples(plan, rule_name):
    """Fitting samples one job of rule ``rule_name`` passes over (a shard's when sharded)."""
    # (`rule_name`: the linter reads a line with "rule", a space and a colon as a rule.)
    stats = plan.n_stats_samples or 0
    if rule_name.startswith("extract"):
        sharded = rule_name == "extract_shard"
        return (
            plan.shard_samples + -(-stats // plan.n_shards) if sharded else plan.n_samples + stats
        )
    return plan.shard_samples if rule_name.startswith("shard_") else plan.n_samples


def _stage_cost(name, rule, wildcards):
    """(memory bytes, FLOP) of one job of ``rule`` for a language model with a known shape."""
    plan = LM_PLANS[name][1]
    stage = MODEL_RULES[rule][0]
    method = wildcards.get("method", "lib")
    layer = wildcards.get("layer")
    if stage == "features":
        return _features_memory(name, plan), None
    memory = job_sizes.stage_memory_bytes(plan, "extract" if stage == "forward" else stage)
    if stage == "forward" or (stage == "m_dash" and method != "lib"):
        return memory, None  # no pass over the fitting data: the rule's default runtime
    flops = job_sizes.stage_flops_per_sample(plan, stage, layer) * _job_samples(plan, rule)
    return memory, flops


def _features_memory(name, plan):
    """interpret_features' memory (bytes) from the experiment's interpret settings."""
    e = EXPERIMENTS[name]
    f = e.interpret
    held_out = e.model.text.n_eval_samples
    return job_sizes.features_memory_bytes(
        plan,
        n_held_out=min(held_out, f.max_samples or held_out),
        batch_size=f.batch_size,
        top_k=f.top_k,
        window=f.window,
        n_quantiles=len(f.quantiles),
        n_quantile_rows=f.n_quantile_rows,
        n_direct=f.n_direct,
    )


# The model rules of a language model: the formula their resources follow (a forward pass over
# the data: extract; M': m_dash; the edges; a job that holds the model and a batch: forward;
# the feature evidence: features),
# and the requests (MB, minutes) for the other kinds and a language model of unknown shape.
MODEL_RULES = {
    "extract_activations": ("extract", 4000, 60),
    "extract_shard": ("extract", 4000, 60),
    "fit_basis": ("m_dash", 4000, 120),
    "shard_m_dash": ("m_dash", 4000, 120),
    "compute_edges": ("edges", 4000, 120),
    "shard_edges": ("edges", 4000, 120),
    "ablate_nodes": ("forward", 4000, 60),
    "ablate_edges": ("forward", 4000, 120),
    "interpret_features": ("features", 4000, 60),
}


def mem_mb(base):
    """Memory request (MB) that doubles with each retry."""

    def mem(wildcards, attempt):
        return int(base * CONFIG.resources.mem_mb_scale * 2 ** (attempt - 1))

    return mem


def runtime(minutes):
    """Runtime request (minutes)."""
    return max(1, round(minutes * CONFIG.resources.runtime_scale))


def model_mem_mb(rule):
    """Memory request (MB) of a model rule, doubling with each retry: its formula for a
    language model of known shape, else its default in MODEL_RULES; times
    resources.mem_mb_scale."""

    def mem(wildcards, attempt):
        name = wildcards.get("experiment")
        mb = MODEL_RULES[rule][1]
        if LM_PLANS.get(name) is not None:
            mb = job_sizes.mem_mb(_stage_cost(name, rule, wildcards)[0])
        return int(mb * CONFIG.resources.mem_mb_scale * 2 ** (attempt - 1))

    return mem


def model_runtime(rule):
    """Runtime request (minutes) of a model rule: one job's cost for a language model of known
    shape at the stated rate, with the margin (interaction_basis.resources), else its default
    in MODEL_RULES; times resources.runtime_scale."""

    def request(wildcards):
        name = wildcards.get("experiment")
        minutes = MODEL_RULES[rule][2]
        flops = _stage_cost(name, rule, wildcards)[1] if LM_PLANS.get(name) else None
        if flops is not None:
            minutes = job_sizes.runtime_minutes(
                flops,
                gpu=_uses_gpu(name) or GPUS > 0,
                threads=COMPUTE_THREADS,
                dtype=EXPERIMENTS[name].extract.dtype,
            )
        return max(1, round(minutes * CONFIG.resources.runtime_scale))

    return request


def _model_jobs(name):
    """(rule, wildcards, number of jobs) of a language model's model jobs, one row per kind of
    job (the wildcards of one of them)."""
    e = EXPERIMENTS[name]
    plan = LM_PLANS[name][1]
    n, methods = e.extract.n_shards, e.basis.methods
    first = {"experiment": name, "method": methods[0]}
    if n == 1:
        rows = [("extract_activations", first, 1)]
        rows += [("fit_basis", {**first, "method": m}, 1) for m in methods]
        rows.append(("compute_edges", first, len(methods)))
    else:
        rows = [("extract_shard", first, n)]
        if plan.lib:
            layers = plan.node_layers[:-1]
            rows += [("shard_m_dash", {**first, "layer": layer}, n) for layer in layers]
        rows.append(("shard_edges", first, n * len(methods)))
    if e.evaluate.enabled:
        rows += [("ablate_nodes", first, len(methods)), ("ablate_edges", first, len(methods))]
    if e.interpret.enabled:
        rows.append(("interpret_features", first, len(methods)))
    return rows


def _lm_disk(name, scheduled):
    """The stores of a language-model experiment that the run writes (their paths among the
    ``scheduled`` jobs' outputs): store -> bytes."""
    e = EXPERIMENTS[name]
    sizes = job_sizes.store_sizes(LM_PLANS[name][1])
    written = {
        "activations": [
            f"results/{name}/activations.zarr",
            f"results/{name}/stats.zarr",
            *(f"results/{name}/shards/{i}/activations.zarr" for i in range(e.extract.n_shards)),
        ],
        "bases": [f"results/{name}/{m}/basis.zarr" for m in e.basis.methods],
        "edges": [f"results/{name}/{m}/edges.zarr" for m in e.basis.methods],
    }
    return {
        store: size if any(os.path.normpath(p) in scheduled for p in written[store]) else 0
        for store, size in sizes.items()
    }


def _print_lm_plans():
    """At planning: per language model, its stores' sizes and its model jobs' requests."""
    for name, found in LM_PLANS.items():
        e = EXPERIMENTS[name]
        if not e.model.downloaded:
            continue
        if found is None:
            print(
                f"Plan of {name}: the shape of {e.model.hub.source} is not known yet (no "
                f"config.json in resources/models/{name} or the hub cache), so its jobs ask "
                "for the rules' defaults (4000 MB, 60-120 min). Download it first "
                "(snakemake --cores 1 all_downloads), then plan again.",
                file=sys.stderr,
            )
            continue
        config_file, plan = found
        shape = plan.shape
        sizes = job_sizes.store_sizes(plan)
        print(
            f"Plan of {name} ({config_file}: {shape.n_layers} layers, d_model "
            f"{shape.d_model}, {len(plan.node_layers)} node layers, {plan.n_samples} chunks of "
            f"{plan.n_ctx} tokens, {plan.dtype}):\n  disk: "
            + ", ".join(f"{k} {job_sizes.format_bytes(v)}" for k, v in sizes.items())
            + ("" if plan.store_activations else " (extract.store_activations: false)"),
            file=sys.stderr,
        )
        hours, computing, longest = 0.0, 0.0, (0, "")
        on_gpu = _uses_gpu(name) or GPUS > 0
        for rule, wildcards, count in _model_jobs(name):
            mb = model_mem_mb(rule)(wildcards, 1)
            minutes = model_runtime(rule)(wildcards)
            n_gpus = gpus(wildcards)
            hours += count * minutes / 60 * max(1, n_gpus)
            longest = max(longest, (minutes, rule))
            flops = _stage_cost(name, rule, wildcards)[1] or 0
            seconds = job_sizes.compute_seconds(
                flops, gpu=on_gpu, threads=COMPUTE_THREADS, dtype=plan.dtype
            )
            computing += count * seconds / 3600 * max(1, n_gpus)
            print(
                f"  {rule} x{count}"
                + (f" ({wildcards['layer']})" if "layer" in wildcards else "")
                + (f" ({wildcards['method']})" if rule == "fit_basis" else "")
                + f": mem_mb {mb}, runtime {minutes} min, gpu {n_gpus}",
                file=sys.stderr,
            )
        unit = "GPU" if on_gpu else "job"
        print(
            f"  {unit}-hours: {hours:.0f} requested by these jobs, of which about "
            f"{computing:.0f} of M', edges and extraction at the stated rate "
            "(interaction_basis.resources)",
            file=sys.stderr,
        )
        if longest[0] > job_sizes.LONG_JOB_MINUTES:
            print(
                f"  The longest job ({longest[1]}) asks for {longest[0] / 60:.1f} h: "
                "extract.n_shards splits the passes over the data into one job per shard (and "
                "M' into one job per layer and shard); see docs/cluster.md.",
                file=sys.stderr,
            )


def check_disk_space():
    """Refuse to start a run whose language-model stores need more than the free space of the
    results folder's filesystem (onstart: real runs only, not dry runs)."""
    if not CONFIG.resources.check_disk:
        return
    scheduled = {os.path.normpath(f) for job in workflow.dag.needrun_jobs() for f in job.output}
    needed = {n: _lm_disk(n, scheduled) for n, found in LM_PLANS.items() if found is not None}
    hints = []
    stored = [
        n for n in needed if needed[n]["activations"] and EXPERIMENTS[n].extract.store_activations
    ]
    if stored:
        hints.append(
            f"extract.store_activations: false ({', '.join(stored)}: keeps only the means and "
            "Grams; the basis and edge jobs recompute the activations)"
        )
    hints.append("fewer text.n_samples or extract.node_layers")
    if any(EXPERIMENTS[n].extract.n_shards > 1 for n in needed):
        hints.append("fewer extract.n_shards (each shard keeps its own sums)")
    planning.check_disk(needed, "results", hints)


if workflow.is_main_process:
    _print_lm_plans()


# Sharded experiments (extract.n_shards > 1): the node layers are known once the statistics
# are gathered (a checkpoint), and each layer's M' shards need the next layer's basis.


def shard_paths(pattern):
    """Input function: ``pattern`` expanded over the experiment's shards."""

    def inputs(wildcards):
        n = experiment(wildcards).extract.n_shards
        return expand(pattern, **wildcards, shard=range(n))

    return inputs


@functools.cache
def _stored_node_layers(path, mtime_ns):
    return planning.read_node_layers(path)


def node_layers(wildcards):
    return experiment_node_layers(wildcards.experiment)


def experiment_node_layers(name):
    """Read once per store version: every per-layer and per-shard job's inputs ask for them."""
    stats = checkpoints.gather_stats.get(experiment=name).output.stats
    return _stored_node_layers(stats, Path(stats).stat().st_mtime_ns)


def next_layer_basis(wildcards):
    layers = node_layers(wildcards)
    nxt = layers[layers.index(wildcards.layer) + 1]
    return f"results/{wildcards.experiment}/lib/layers/{nxt}.zarr"


def m_dash_parts(wildcards):
    """The shards' M' sums a layer's basis needs: LIB layers before the last only."""
    if wildcards.method != "lib" or wildcards.layer == node_layers(wildcards)[-1]:
        return []
    return shard_paths("results/{experiment}/lib/shards/{shard}/m_dash/{layer}.zarr")(wildcards)


def layer_bases(wildcards):
    return expand(
        "results/{experiment}/{method}/layers/{layer}.zarr",
        experiment=wildcards.experiment,
        method=wildcards.method,
        layer=node_layers(wildcards),
    )
