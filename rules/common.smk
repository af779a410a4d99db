# Config loading and validation, wildcard constraints, and every function the rules use.
import functools
import os
import re
from pathlib import Path


from interaction_basis import planning
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
        parts.append("explorer.html")
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
# account, GPU model) live only in profiles/.
COMPUTE_THREADS = CONFIG.resources.threads
GPUS = CONFIG.resources.gpu


def mem_mb(base):
    """Memory request (MB) that doubles with each retry."""

    def mem(wildcards, attempt):
        return int(base * CONFIG.resources.mem_mb_scale * 2 ** (attempt - 1))

    return mem


def runtime(minutes):
    """Runtime request (minutes)."""
    return max(1, round(minutes * CONFIG.resources.runtime_scale))


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
