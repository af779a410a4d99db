"""What a language-model experiment's jobs need: memory, runtime, GPUs and disk, from the
config and the model's shape. Pure formulas (no torch, no IO), applied by the workflow while
Snakemake plans (``rules/common.smk``; docs/cluster.md).

The shape comes from the model's ``config.json`` (the Hugging Face keys of GPT-2, GPT-Neo and
GPT-NeoX), which ``planning.read_model_shape`` finds and reads as JSON
(``transformers.AutoConfig`` would import transformers, seconds, into every ``snakemake``
start). The widths of the node layers follow ``models/hf.py`` (``D = d_model + 1``, with the
folded constant): ``ln1``, ``ln2``, ``resid_*``, ``ln_final``, ``unembed``: D; ``ln1_out``,
``ln2_out``, ``ln_final_out``: D + 1 (the variance first); ``attn_in``, ``mlp_in``: 2D; on
parallel-residual blocks ``ln2`` and ``mlp_in`` 2D, ``ln2_out`` 2D + 1; ``output``: the
vocabulary. A unit test checks them against a built model.

Sizes are in bytes, costs in floating-point operations (FLOP). The rates and margins are
named constants for the benchmarks (``benchmarks/``) to update with measured figures.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Bytes per value of each supported dtype.
DTYPE_BYTES = {"float64": 8, "float32": 4}

#: Memory every model job holds besides its arrays: Python, torch and transformers (measured:
#: GPT-2 small loaded in float64 took 4.6 GiB, 2.0 GiB of it this overhead).
RUNTIME_OVERHEAD_BYTES = 2 * 2**30
#: Copies of the weights a job holds at its peak: the loaded Hugging Face model and its
#: bias-folded sections (the embedding and unembedding untied; with the overhead above, GPT-2
#: small comes to 4.4 GiB against the 4.6 GiB measured).
WEIGHT_COPIES = 2
#: The share of the job's memory that the closed forms may use as working memory when
#: ``extract.memory_budget_mb`` is null (its default), and the least it may be.
BUDGET_SHARE = 0.5
MIN_BUDGET_BYTES = 2**30
#: Copies of one batch's activations a Jacobian pass holds per node layer it touches: the
#: input, the output, their gradients and autograd's saved tensors.
GRADIENT_COPIES = 4
#: Floor of every memory request (MB).
MIN_MEM_MB = 2000

#: Sustained float64 rates (FLOP/s) of the Jacobian passes, per CPU thread and per GPU. Stated
#: estimates (a fifth of the peak of a 2020s server core and of an A100/H100's float64 units)
#: until the benchmark of the closed forms measures them: update them from
#: ``benchmarks/`` (docs/performance.md). float32 runs at twice the float64 rate on CPUs.
CPU_FLOPS_PER_THREAD = 5e9
GPU_FLOPS = 1e13
#: Runtime requests are the estimate times this margin, plus the start-up (loading the model
#: and the data) ...
RUNTIME_MARGIN = 3.0
STARTUP_MINUTES = 10
#: ... and at least this many minutes.
MIN_RUNTIME_MINUTES = 15
#: Jobs asking for longer than this (many partitions' limit) are pointed to extract.n_shards.
LONG_JOB_MINUTES = 24 * 60

#: A backward pass (a vector-Jacobian product) costs about this many forward passes.
BACKWARD_COST = 2.0


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a causal LM that the jobs' memory, time and disk depend on."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    vocab_size: int
    parallel: bool = False  # GPT-NeoX's parallel residual (attention and MLP side by side)

    @property
    def n_params(self) -> int:
        """Parameters: embedding, unembedding (untied once folded) and the blocks."""
        d = self.d_model
        block = 4 * d * d + 2 * d * self.d_mlp + 9 * d + self.d_mlp
        return 2 * self.vocab_size * d + self.n_layers * block


# config.json keys of each quantity, in the order the architectures name them.
_KEYS = {
    "n_layers": ("n_layer", "num_layers", "num_hidden_layers"),
    "d_model": ("n_embd", "hidden_size", "d_model"),
    "n_heads": ("n_head", "num_heads", "num_attention_heads"),
    "d_mlp": ("n_inner", "intermediate_size"),
    "vocab_size": ("vocab_size",),
}


def shape_from_config(cfg: dict) -> ModelShape:
    """The shape in a Hugging Face ``config.json`` (GPT-2, GPT-Neo, GPT-NeoX).

    Raises:
        ValueError: a size the config does not give.
    """

    def value(name: str, default: int | None = None) -> int:
        for key in _KEYS[name]:
            if cfg.get(key) is not None:
                return int(cfg[key])
        if default is None:
            raise ValueError(f"config.json gives no {name} (looked for {', '.join(_KEYS[name])}).")
        return default

    d_model = value("d_model")
    return ModelShape(
        n_layers=value("n_layers"),
        d_model=d_model,
        d_mlp=value("d_mlp", 4 * d_model),  # GPT-2 and GPT-Neo: n_inner null means 4 d_model
        n_heads=value("n_heads"),
        vocab_size=value("vocab_size"),
        parallel=bool(cfg.get("use_parallel_residual", False)),
    )


def default_node_layers(shape: ModelShape) -> list[str]:
    """The node layers of ``extract.node_layers: null`` (``hf_node_layers(model, "ln")``)."""
    per_block = ("ln1", "ln1_out", "attn_in", "ln2", "ln2_out", "mlp_in")
    names = [f"{p}.{i}" for i in range(shape.n_layers) for p in per_block]
    return [*names, "ln_final", "ln_final_out", "unembed"]


def node_layer_width(name: str, shape: ModelShape) -> int:
    """Coordinates of one node layer's activations at one position (see the module doc)."""
    d = shape.d_model + 1
    prefix = name.split(".")[0]
    if prefix == "output":
        return shape.vocab_size
    if shape.parallel and prefix in ("ln2", "mlp_in"):
        return 2 * d
    if shape.parallel and prefix == "ln2_out":
        return 2 * d + 1
    widths = {"attn_in": 2 * d, "mlp_in": 2 * d, "ln1_out": d + 1, "ln2_out": d + 1}
    widths["ln_final_out"] = d + 1
    return widths.get(prefix, d)


@dataclass(frozen=True)
class Plan:
    """One language-model experiment's sizes: what the formulas below read."""

    shape: ModelShape
    node_layers: tuple[str, ...]
    dtype: str
    batch_size: int
    n_ctx: int
    n_samples: int
    n_stats_samples: int | None  # separate statistics chunks (null: the fitting chunks)
    n_shards: int
    store_activations: bool
    lib: bool  # whether LIB is among the methods (M' stores and jobs)
    n_methods: int
    # Stochastic sources (null: exact): positions and hidden directions of M', edge positions.
    m_dash_pos: int | None = None
    m_dash_hidden: int | None = None
    edges_pos: int | None = None
    integration_points: int = 1
    memory_budget_mb: int | None = None

    @property
    def widths(self) -> list[int]:
        return [node_layer_width(n, self.shape) for n in self.node_layers]

    @property
    def value_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def shard_samples(self) -> int:
        """Fitting chunks of the largest shard (shards are whole batches)."""
        n_batches = -(-self.n_samples // self.batch_size)
        return min(self.n_samples, -(-n_batches // self.n_shards) * self.batch_size)


# --- disk ------------------------------------------------------------------------------------


def store_sizes(plan: Plan) -> dict[str, int]:
    """Expected bytes of each large store of one experiment (all methods), by store name:
    ``activations`` (the per-token activations and the statistics; without
    ``extract.store_activations`` only the statistics), ``bases`` and ``edges`` (with their
    shard and per-layer parts when sharded). Gradients and Jacobians are never stored. The token
    store, the features and the small JSON and figure outputs are left out (megabytes)."""
    b, w = plan.value_bytes, plan.widths
    grams = sum(x * x + x for x in w) * b  # the mean and centred Gram of every layer
    pairs = sum(x * y for x, y in zip(w, w[1:], strict=False)) * b  # every edge matrix
    acts = plan.n_samples * plan.n_ctx * sum(w) * b if plan.store_activations else 0
    bases = plan.n_methods * 2 * grams  # C and C_pinv of every layer, per method
    m_dash = grams if plan.lib else 0  # LIB's M', kept with its basis
    if plan.n_shards == 1:
        return {
            "activations": acts + grams,
            "bases": bases + m_dash,
            "edges": plan.n_methods * pairs,
        }
    # Sharded: each shard keeps its moment sums and its M' and edge sums (compensated: value and
    # error, twice the bytes); the gathered statistics; each layer's basis is stored alone, then
    # assembled (twice).
    shards = plan.n_shards * 2
    return {
        "activations": acts + shards * grams + grams,
        "bases": 2 * (bases + m_dash) + shards * m_dash,
        "edges": plan.n_methods * (pairs + shards * pairs),
    }


def format_bytes(n: int | float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


# --- compute ---------------------------------------------------------------------------------


def forward_flops_per_token(shape: ModelShape, n_ctx: int) -> float:
    """FLOP of one forward pass per token: the weight products (2 per weight), attention's
    scores and mixing (causal: half of n_ctx on average, twice) and the unembedding."""
    d = shape.d_model
    block = 2 * (4 * d * d + 2 * d * shape.d_mlp) + 2 * n_ctx * d
    return float(shape.n_layers * block + 2 * d * shape.vocab_size)


def jacobian_flops_per_sample(plan: Plan, directions: Sequence[int], pos: int | None) -> float:
    """FLOP of the Jacobian pass of one stage (M' or the edges) per fitting sample: per node
    layer pair, one backward pass through the section per output direction (``directions``:
    the next layer's width, or the stochastic sources) and output position (``pos`` sources,
    or every position), at every integration point."""
    n_pos = plan.n_ctx if pos is None else pos
    section = forward_flops_per_token(plan.shape, plan.n_ctx) / max(1, len(plan.node_layers) - 1)
    per_pair = [n * n_pos * BACKWARD_COST * section * plan.n_ctx for n in directions]
    return float(plan.integration_points * sum(per_pair))


def stage_flops_per_sample(plan: Plan, stage: str, layer: str | None = None) -> float:
    """FLOP per fitting sample of ``stage``: ``extract`` (a forward pass), ``m_dash`` (one
    method's M' of every layer, or of ``layer`` alone), ``edges`` (one method's edges of every
    pair); M' and edges without stored activations add a forward pass up to each layer."""
    forward = forward_flops_per_token(plan.shape, plan.n_ctx) * plan.n_ctx
    if stage == "extract":
        return forward
    w, n = plan.widths, len(plan.node_layers)
    pairs = range(n - 1) if layer is None else [plan.node_layers.index(layer)]
    recompute = 0.0 if plan.store_activations else sum(forward * i / (n - 1) for i in pairs)
    if stage == "m_dash":
        hidden = plan.m_dash_hidden
        directions = [w[i + 1] if hidden is None else hidden for i in pairs]
        return jacobian_flops_per_sample(plan, directions, plan.m_dash_pos) + recompute
    if stage == "edges":
        directions = [w[i + 1] for i in pairs]
        return jacobian_flops_per_sample(plan, directions, plan.edges_pos) + recompute
    raise ValueError(f"Unknown stage {stage!r}; use extract, m_dash or edges.")


def compute_seconds(
    flops: int | float, *, gpu: bool, threads: int, dtype: str = "float64"
) -> float:
    """Seconds of computation for ``flops`` at the stated rate (no margin, no start-up)."""
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * threads * (2 if dtype == "float32" else 1)
    return float(flops / rate)


def runtime_minutes(flops: int | float, *, gpu: bool, threads: int, dtype: str = "float64") -> int:
    """A runtime request (minutes) for ``flops`` at the stated rate, with the margin."""
    seconds = compute_seconds(flops, gpu=gpu, threads=threads, dtype=dtype)
    minutes = RUNTIME_MARGIN * seconds / 60 + STARTUP_MINUTES
    return max(MIN_RUNTIME_MINUTES, math.ceil(minutes))


# --- memory ----------------------------------------------------------------------------------


def weights_bytes(plan: Plan) -> int:
    return WEIGHT_COPIES * plan.shape.n_params * plan.value_bytes + RUNTIME_OVERHEAD_BYTES


def _working(fixed: int | float, plan: Plan) -> int | float:
    """``fixed`` plus the closed forms' working memory: ``extract.memory_budget_mb`` where set,
    else the job gives them ``BUDGET_SHARE`` of its memory, so the request is fixed / (1 - share)
    (and holds at least ``MIN_BUDGET_BYTES`` for them)."""
    if plan.memory_budget_mb is not None:
        return float(fixed + plan.memory_budget_mb * 2**20)
    return float(max(fixed / (1 - BUDGET_SHARE), fixed + MIN_BUDGET_BYTES))


def stage_memory_bytes(plan: Plan, stage: str) -> int:
    """Peak host memory of one job of ``stage`` (on a GPU, its device memory is at most this):

    - ``extract``: the weights, one batch's activations of every node layer (on the device and
      copied to the host) and each layer's compensated moment sums (mean and Gram, twice);
    - ``m_dash`` and ``edges``: the weights, a batch's activations and gradients of the largest
      adjacent pair (``GRADIENT_COPIES``), the attention patterns of the batch, the stored
      arrays the stage holds (M': the statistics, the bases and M' of every layer; edges: the
      bases and the edge sums) and the closed forms' working memory.
    """
    b, w = plan.value_bytes, plan.widths
    batch = plan.batch_size * plan.n_ctx * b
    grams = sum(x * x for x in w) * b
    if stage == "extract":
        return int(weights_bytes(plan) + 2 * batch * sum(w) + 2 * grams)
    pair = max(x + y for x, y in zip(w, w[1:], strict=False))
    patterns = plan.batch_size * plan.shape.n_heads * plan.n_ctx * plan.n_ctx * b
    recompute = 0 if plan.store_activations else 2 * batch * max(w)
    if stage == "m_dash":
        stored = 4 * grams  # statistics, C, C_pinv, M'
    elif stage == "edges":
        stored = 2 * grams + 3 * max(x * y for x, y in zip(w, w[1:], strict=False)) * b
    else:
        raise ValueError(f"Unknown stage {stage!r}; use extract, m_dash or edges.")
    fixed = weights_bytes(plan) + GRADIENT_COPIES * batch * pair + patterns + stored + recompute
    return int(_working(fixed, plan))


def mem_mb(n_bytes: int | float) -> int:
    return max(MIN_MEM_MB, math.ceil(n_bytes / 1e6))
