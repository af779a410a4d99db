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

#: Sustained float64 rates (FLOP/s) of the closed forms' matrix products (what
#: :func:`section_flops` counts), per CPU thread and per GPU. The CPU rate is measured:
#: ``benchmarks/bench_lm_shapes.py`` at GPT-2 small's real shape ran the attention section,
#: which carries 98 % of a block's M′ and edge FLOP, at 17 GFLOP/s on one thread of a shared,
#: loaded 2-core machine (the other sections at 30-37; docs/performance.md). The GPU rate is
#: **stated, not measured** (no GPU has run the benchmark): 1e13 is 15 % of an H100's 67
#: TFLOP/s float64 peak, half of an A100's 19.5. float32 runs at twice the float64 rate on CPUs.
CPU_FLOPS_PER_THREAD = 1.7e10
GPU_FLOPS = 1e13
#: Runtime requests are the estimate times this margin, plus the start-up (loading the model
#: and the data) ... The FLOP are exact (the counted products, bases as wide as the layers:
#: truncated bases cost less); the margin covers the rates: the attention's M′ alone ran at
#: 14 GFLOP/s (1.25× below the rate), another CPU or a busier node is slower, and the GPU
#: rate is unmeasured (an A100 may sustain half of it). A job past its limit loses all its
#: work, a generous one only waits longer in the queue: 3.
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
    rotary: bool = False  # GPT-NeoX's rotary embedding (queries and keys rotated per position)

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
        rotary=cfg.get("model_type") == "gpt_neox" or "rotary_pct" in cfg,
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


def edge_entries(widths: list[int]) -> int:
    """Entries of the edge matrices between consecutive layers of these widths."""
    return sum(x * y for x, y in zip(widths, widths[1:], strict=False))


def store_sizes(plan: Plan) -> dict[str, int]:
    """Expected bytes of each large store of one experiment (all methods), by store name:
    ``activations`` (the per-token activations and the statistics; without
    ``extract.store_activations`` only the statistics), ``bases`` and ``edges`` (with their
    shard and per-layer parts when sharded). Gradients and Jacobians are never stored. The token
    store, the features and the small JSON and figure outputs are left out (megabytes)."""
    b, w = plan.value_bytes, plan.widths
    grams = sum(x * x + x for x in w) * b  # the mean and centred Gram of every layer
    pairs = edge_entries(w) * b  # every edge matrix
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


#: The closed form of the section from a node layer of the LayerNorm-split set
#: (``models/hf.py``) to the next one, by the input layer's name without its block index.
SECTION_KINDS = {
    "ln1": "LayerNormIn",
    "ln2": "LayerNormIn",  # parallel blocks: the dual LayerNorm-in, 2D wide
    "ln_final": "LayerNormIn",
    "ln1_out": "LayerNormOut",
    "ln2_out": "LayerNormOut",
    "ln_final_out": "LayerNormOut",
    "attn_in": "CausalAttention",
    "mlp_in": "ResidualMLP",
    "unembed": "PerToken",  # the unembedding, into ``output``
}


@dataclass(frozen=True)
class Section:
    """One node-layer pair as its closed form (``lib/closed_form/``) sees it in one call of
    ``jacobians.compute_m_dash_sum`` / ``compute_edges_sum`` on a batch."""

    kind: str  # a value of SECTION_KINDS
    shape: ModelShape
    n_ctx: int
    batch: int  # samples per call: the fixed products of a call are shared by them
    w_in: int  # the node layers' widths
    w_out: int
    k_in: int  # the bases' widths (at most the layers')
    k_out: int
    sources: int | None  # stochastic sources over positions; None: exact
    points: int = 1  # integration points
    budget: int = 2**30  # the closed forms' working memory (bytes): attention's chunks


def _attention_chunks(
    s: Section, features: int, k_in: int = 0, kept: int = 0, row_extra: int = 0, whole: bool = False
) -> tuple[int, int, int]:
    """How ``CausalAttention._plan`` chunks one call: output features per chunk, samples per
    chunk and the (query, key) pairs computed per sample. A chunk of query rows ``t0:t1``
    takes every key up to ``t1`` (causal), so the pairs are the ``P(P+1)/2`` of the mask plus
    the upper halves of the diagonal blocks: all ``P²`` where one chunk holds the sequence.
    The bytes per pair and row are the closed form's own (``_pair_bytes``, ``_row_bytes``);
    GPT-Neo's local layers see fewer keys (counted as causal: an upper bound)."""
    h, dh, n_pos = s.shape.n_heads, s.shape.d_model // s.shape.n_heads, s.n_ctx

    def pair_bytes(f: int) -> int:
        return 8 * h * (5 * f + 4 * dh + h + 6 + k_in)

    def row_bytes(f: int) -> int:
        return 8 * (3 * h * dh * f + 3 * k_in * f + 2 * h * k_in)

    while (
        not whole
        and features > 1
        and n_pos * (pair_bytes(features) + kept * features) + row_bytes(features) > s.budget
    ):
        features = (features + 1) // 2
    pair, row = pair_bytes(features), row_bytes(features) + row_extra
    per_sample = n_pos * (n_pos + 1) // 2 * pair + n_pos * (row + kept * features)
    samples = max(1, min(s.batch, s.budget // max(1, per_sample)))
    room = s.budget - samples * n_pos * kept * features
    pairs, t0 = 0, 0
    while t0 < n_pos:
        t1 = t0 + 1
        while t1 < n_pos and samples * (t1 + 1 - t0) * ((t1 + 1) * pair + row) <= room:
            t1 += 1
        pairs, t0 = pairs + (t1 - t0) * t1, t1
    return features, samples, pairs


def _attention_forward(s: Section) -> float:
    """FLOP of the attention section's forward pass over one sample (dense scores)."""
    p, d, h = s.n_ctx, s.shape.d_model, s.shape.n_heads
    big, dv = d + 1, d // h + 1
    return float(
        2 * p * big * (2 * d + h * dv) + 2 * h * p * p * (2 * dv - 1) + 2 * p * h * dv * big
    )


def _attention(s: Section) -> tuple[float, float]:
    """``CausalAttention`` (``causal_attention.py``), per sample: M′ and the edges."""
    p, b, n, a = s.n_ctx, s.batch, s.sources, s.points
    d, h = s.shape.d_model, s.shape.n_heads
    dh, big = d // h, d + 1
    dv, ki, ko = dh + 1, s.k_in, s.k_out
    resid = s.w_in - big  # the residual's coordinates (C's rows E, C⁺'s columns)
    project = 2 * p * big * (2 * d + h * dv)  # q, k and v, once per chunk of samples
    forward = 0.0 if n is None else _attention_forward(s) / b  # jacobians' probe of the shape
    # --- M′: per chunk of output features, the patterns and their partners over the pairs,
    # then per token the Grams of the rows' low-rank parts; the fixed products per call
    fixed = 2 * h * big * big * ko + 2 * h * h * ko * big + 2 * h * ko * big * big
    fixed += 4 * h * ko * big * d + 8 * big * big * d + 8 * big * d * d + 2 * h * big * ko
    fixed += 4 * big * d * ko + 2 * big * ko * resid + 2 * resid * resid * ko
    if n is None:
        f, samples, pairs = _attention_chunks(s, ko)
        over_pairs = 2 * h * pairs * (dh * -(-ko // f) + a * ko + dh * ko) + 2 * h * h * pairs
        if s.shape.rotary:
            over_pairs += 2 * h * pairs * (h * ko + ko * d + h * dh * dh)
        else:
            over_pairs += 4 * h * h * pairs * ko
        per_token = 2 * ko * d * d + 4 * d * h * ko + 2 * d * d + 2 * d * ko + 2 * h * dv * ko
        per_token += 0 if s.shape.rotary else 2 * h * ko * d + 2 * d * d
    else:
        kept = 8 * (n * (d + h) + 3 * d + 2 * h)
        f, samples, pairs = _attention_chunks(s, ko, kept=kept)
        over_pairs = 2 * h * pairs * (dh * -(-ko // f) + a * ko + dh * ko + n * ko * (1 + dh))
        per_token = 2 * h * dv * ko + 2 * ko * n * h + 2 * (n + 2) * ko * d * d
        per_token += 2 * ko * h * h * n + 2 * ko * h * d * (n + 1)
    m_dash = project + over_pairs + p * per_token + fixed / b + forward
    m_dash += 2 * h * dv * big * ko / samples  # W_O C of a chunk of features, per chunk
    # --- the edges: in value space (d_value columns), every output feature at once
    row_extra = 8 * (3 * ki * ko + 3 * ki * h * dv)
    _, _, pairs = _attention_chunks(s, dv, ki, row_extra=row_extra, whole=True)
    over_pairs = 2 * h * pairs * (dh + a * dv + dh * dv + ki + ki * dv)
    over_pairs += 2 * pairs * d * ki if s.shape.rotary else 2 * p * ki * d
    per_token = 2 * ki * h * dh * dv
    if n is None:
        per_token += 2 * h * ki * ko + 2 * ki * h * dv * ko
        after = 0.0
    else:
        per_token += 2 * n * (h * ki + ki * h * dv + ki)
        after = 2 * n * (h * ki * ko + ki * h * dv * ko)
    fixed = 2 * h * big * big * ko + 2 * h * ki * big * ko + 4 * ki * big * d
    fixed += 2 * ki * resid * ko + 2 * h * dv * big * ko
    edges = project + over_pairs + p * per_token + after + fixed / b + forward
    return float(m_dash), float(edges)


def _layernorm_in(s: Section) -> tuple[float, float]:
    """``LayerNormIn`` (``layernorm.py``), per sample: the Gram of the variance's gradients
    and ``C_x C_xᵀ`` for M′; the projected gradients and, with position sources, their signed
    sums for the edges."""
    p, b, d, n = s.n_ctx, s.batch, s.shape.d_model, s.sources
    w, ki, ko = s.w_in, s.k_in, s.k_out
    m_dash = 2 * p * d * d + 2 * w * w * ko / b
    edges = 2 * p * d * ki + (0 if n is None else 4 * n * p * ki) + 2 * ki * w * ko / b
    return float(m_dash), float(edges)


def _layernorm_out(s: Section) -> tuple[float, float]:
    """``LayerNormOut`` (``layernorm.py``), per sample: ``a = x_c C_n`` per token and the
    fixed ``Q``, ``B`` products for M′; ``a`` and the weighted (or signed) sums of ``f̂`` for
    the edges."""
    p, b, d, n = s.n_ctx, s.batch, s.shape.d_model, s.sources
    w, ki, ko = s.w_in, s.k_in, s.k_out
    m_dash = 2 * p * d * ko + 2 * p * ko + (6 * w * w * ko + 4 * w * ko) / b
    sums = 6 * p * ki * ko if n is None else n * (2 * p * ki * ko + 4 * p * ki)
    edges = 2 * p * d * ko + sums + 4 * ki * w * ko / b
    return float(m_dash), float(edges)


def _mlp_blocks(s: Section, hidden: int) -> int:
    """Blocks of positions per sample of ``ResidualMLP``'s edges with position sources, as
    ``closed_form.common.token_blocks`` plans them from the section's bytes per token, per
    sample and per block (``PerToken.compute_edges_sum``, ``ResidualMLP._edge_bytes``)."""
    big, ki, ko, n = s.shape.d_model + 1, s.k_in, s.k_out, s.sources or 0
    row = 8 * (hidden * (ki + ko) + 2 * ki * ko)  # mlp.block_bytes
    rows = max(1, min(16, s.budget // (2 * row)))
    fixed = max(rows * row, 8 * (2 * ki * hidden + ki * ko))
    token = 8 * (4 * hidden + big) + 8 * (n * ko * 2 + 2 * ki)
    sample = 8 * n * ko * ki * 4
    room = max(0, s.budget - fixed)
    if sample + s.n_ctx * token <= room:
        return 1
    return -(-s.n_ctx // max(1, (room - sample) // token))


def _residual_mlp(s: Section) -> tuple[float, float]:
    """``ResidualMLP`` (``per_token.py``), per sample: the slopes (``x W_in``) and their Gram
    ``S`` for M′, then ``W_in ((P Pᵀ) ∘ S) W_inᵀ``; for the edges, with position sources
    ``G = Σ_t φ_t f̂_t d̄_tᵀ`` and ``G P`` per source, exactly one ``k_in × k_out`` product
    through the neurons per token."""
    p, b, n = s.n_ctx, s.batch, s.sources
    big, hidden = s.shape.d_model + 1, s.shape.d_mlp + 1  # the folded constant column
    resid = s.w_in - big
    ki, ko = s.k_in, s.k_out
    slopes = 2 * p * big * hidden
    forward = 0.0 if n is None else 4 * p * big * hidden / b  # jacobians' probe of the shape
    fixed = 2 * hidden * big * ko + 2 * hidden * hidden * ko + 2 * big * hidden * hidden
    fixed += 2 * big * big * hidden + 2 * big * hidden * ko + 2 * big * ko * resid
    fixed += 2 * resid * resid * ko
    m_dash = slopes + 2 * p * hidden * hidden + fixed / b + forward
    setup = 2 * hidden * big * ko + 2 * ki * big * hidden + 2 * ki * resid * ko
    if n is None:  # dense slopes (0/1 ones, ReLU's, sum over the active half at most)
        through = 2 * p * ki * hidden * ko
    else:  # G P once per block of positions: one block per sample where one fits the budget
        through = n * (2 * ki * p * hidden + 2 * ki * hidden * ko * _mlp_blocks(s, hidden))
    edges = slopes + through + setup / b + 4 * big * hidden + forward
    return float(m_dash), float(edges)


def _per_token(s: Section) -> tuple[float, float]:
    """``PerToken`` (``per_token.py``; the unembedding ``x W_U`` into ``output``), per sample:
    the rows ``J̄_t C`` from one forward-mode pass per input coordinate (primal and tangent)
    and their Gram for M′; the pushforward of the ``k_in`` rows of ``C⁺`` for the edges."""
    p, b, n, a = s.n_ctx, s.batch, s.sources, s.points
    w, wo, ki, ko = s.w_in, s.w_out, s.k_in, s.k_out
    # jacobians' probe of the output's shape (one sample) and the closed form's (one token)
    forward = (2 * w * wo + (0 if n is None else 2 * p * w * wo)) / b
    # forward mode through ``x W``: three products per (token, tangent), as counted
    m_dash = p * (a * 6 * w * w * wo + 2 * w * wo * ko + 2 * w * w * ko) + forward
    signed = 0 if n is None else 2 * n * p * ki * ko
    edges = p * (a * 6 * ki * w * wo + 2 * ki * wo * ko) + signed + forward
    return float(m_dash), float(edges)


_CLOSED_FORMS = {
    "LayerNormIn": _layernorm_in,
    "LayerNormOut": _layernorm_out,
    "CausalAttention": _attention,
    "ResidualMLP": _residual_mlp,
    "PerToken": _per_token,
}


def section_flops(s: Section) -> tuple[float, float]:
    """FLOP per sample of M′ and of the edges of one section in its closed form: the matrix
    products of its contractions (``lib/closed_form/``; elementwise work left out), with
    ``jacobians``' part of the call (the edges' features ``f̂ = x C`` and ``f̂ C⁺``, and with
    stochastic sources one forward pass of the section over a sample, for its output's
    shape). Fixed products of a call are shared by its ``batch`` samples. Checked against
    the FLOP that ``benchmarks/bench_lm_shapes.py`` counts (``tests/workflow/
    test_resource_flops.py``: within 10 % per section and phase)."""
    m_dash, edges = _CLOSED_FORMS[s.kind](s)
    return float(m_dash), float(edges + 4 * s.n_ctx * s.w_in * s.k_in)


def _generic_flops(plan: Plan, directions: int, pos: int | None) -> float:
    """FLOP per sample of the generic path (``jacobians``' autograd) of a section that has
    no closed form in these settings (a pair of node layers that are not neighbours in the
    LayerNorm-split set; M′ with sources over hidden dimensions): one backward pass
    (``BACKWARD_COST`` forward passes of the section) per output direction and position."""
    n_pos = plan.n_ctx if pos is None else pos
    section = forward_flops_per_token(plan.shape, plan.n_ctx) / max(1, len(plan.node_layers) - 1)
    return float(
        plan.integration_points * directions * n_pos * BACKWARD_COST * section * plan.n_ctx
    )


def pair_section(plan: Plan, index: int, phase: str) -> Section | None:
    """The section from node layer ``index`` to the next as its closed form sees it in
    ``phase`` (``m_dash``, ``edges``), or None where it takes the generic path."""
    layers = plan.node_layers
    name, nxt = layers[index], layers[index + 1]
    full = [*default_node_layers(plan.shape), "output"]
    kind = SECTION_KINDS.get(name.split(".")[0])
    if kind is None or name not in full or full[full.index(name) + 1] != nxt:
        return None
    if phase == "m_dash" and plan.m_dash_hidden is not None:
        return None  # hidden sources: per-token sections form rows, attention is generic
    w = plan.widths
    return Section(
        kind=kind,
        shape=plan.shape,
        n_ctx=plan.n_ctx,
        batch=plan.batch_size,
        w_in=w[index],
        w_out=w[index + 1],
        k_in=w[index],
        k_out=w[index + 1],
        sources=plan.m_dash_pos if phase == "m_dash" else plan.edges_pos,
        points=plan.integration_points,
        budget=working_budget_bytes(plan, phase),
    )


def stage_flops_per_sample(plan: Plan, stage: str, layer: str | None = None) -> float:
    """FLOP per fitting sample of ``stage``: ``extract`` (a forward pass), ``m_dash`` (one
    method's M′ of every layer, or of ``layer`` alone), ``edges`` (one method's edges of every
    pair), each pair in its closed form (:func:`section_flops`, bases as wide as the layers:
    an upper bound) or else the generic path; M′ and edges without stored activations add a
    forward pass up to each layer."""
    forward = forward_flops_per_token(plan.shape, plan.n_ctx) * plan.n_ctx
    if stage == "extract":
        return forward
    if stage not in ("m_dash", "edges"):
        raise ValueError(f"Unknown stage {stage!r}; use extract, m_dash or edges.")
    w, n = plan.widths, len(plan.node_layers)
    pairs = range(n - 1) if layer is None else [plan.node_layers.index(layer)]
    recompute = 0.0 if plan.store_activations else sum(forward * i / (n - 1) for i in pairs)
    total = recompute
    for i in pairs:
        section = pair_section(plan, i, stage)
        if section is not None:
            total += section_flops(section)[0 if stage == "m_dash" else 1]
        elif stage == "m_dash":
            hidden = plan.m_dash_hidden
            total += _generic_flops(plan, w[i + 1] if hidden is None else hidden, plan.m_dash_pos)
        else:
            total += _generic_flops(plan, w[i + 1], plan.edges_pos)
    return float(total)


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


#: Bins of each feature's histogram (``interpret.features.N_HISTOGRAM_BINS``).
N_HISTOGRAM_BINS = 24


#: Characters of the widest text label in features.zarr: the token windows and the direct
#: effects' outputs are stored as fixed-width text, 4 bytes a character, each array as wide as
#: its longest decoded token. **Stated, not measured**: no published tokenizer is at hand here
#: (the GPT-2-shaped benchmark's tiny one gave 13); GPT-2's vocabulary has tokens of 32
#: characters ("rawdownloadcloneembedreportprint") and long runs of "-", "=" or spaces. A wider
#: label costs more; the retry doubles the request.
LABEL_CHARS = 32


def feature_evidence_bytes(
    plan: Plan,
    *,
    n_held_out: int,
    top_k: int,
    window: int,
    n_quantiles: int,
    n_quantile_rows: int,
    n_direct: int,
    label_chars: int = LABEL_CHARS,
) -> int:
    """Bytes one feature's evidence takes until features.zarr is written
    (``interpret.features``, float64 and int64 values): the quantile subsample (at most
    ``n_quantile_rows`` of the held-out rows), the top and bottom ``top_k`` examples with their
    ``±window`` token windows (values and tokens), the quantile examples' windows, every
    example's earlier occurrence with its 6-token context, the histogram, the direct effects,
    and their text labels (``label_chars`` per label, 4 bytes a character). Measured on the
    GPT-2-small-shaped benchmark: 64 kB a feature, 86 % of it the labels (docs/cluster.md)."""
    rows = min(n_quantile_rows, n_held_out * plan.n_ctx)
    examples = 2 * top_k + n_quantiles  # top, bottom and one per quantile level
    width = 2 * window + 1
    values = (
        rows  # the quantile subsample
        + 2 * top_k * width * 2  # the top and bottom windows: values and tokens
        + n_quantiles * width  # the quantile examples' window tokens
        + examples * (6 + 1)  # each example's earlier occurrence: context tokens, position
        + examples * 4  # value, sample, position and the row kept while streaming
        + N_HISTOGRAM_BINS
        + 4 * n_direct  # promoted and suppressed outputs and values
        + 8  # moments, extremes, importance, direct variance
    )
    labels = examples * (width + 6) + 2 * n_direct
    return int(8 * values + 4 * label_chars * labels)


def features_memory_bytes(
    plan: Plan,
    *,
    n_held_out: int,
    batch_size: int,
    top_k: int,
    window: int,
    n_quantiles: int,
    n_quantile_rows: int,
    n_direct: int,
    label_chars: int = LABEL_CHARS,
) -> int:
    """Peak host memory of an ``interpret_features`` job (the feature evidence of one method),
    the sum of what its phases hold (stages/interpret.py; docs/cluster.md):

    - the weights, loaded twice but one copy at a time (the model, then the final readout's);
    - the basis, ``C`` and ``C⁺`` of every layer in float64, as wide as the layers (an upper
      bound: truncated bases keep fewer features);
    - one batch of held-out chunks through the model: every node layer's activations at once,
      and one layer's features three times (the projection, its float64 copy and the signed
      copy the top-k reads);
    - every feature's evidence (:func:`feature_evidence_bytes`), held until the store is
      written.
    """
    w = plan.widths
    batch = min(batch_size, n_held_out) * plan.n_ctx
    bases = 2 * sum(x * x for x in w) * 8
    activations = batch * (sum(w) * plan.value_bytes + 3 * max(w) * 8)
    evidence = sum(w) * feature_evidence_bytes(
        plan,
        n_held_out=n_held_out,
        top_k=top_k,
        window=window,
        n_quantiles=n_quantiles,
        n_quantile_rows=n_quantile_rows,
        n_direct=n_direct,
        label_chars=label_chars,
    )
    return int(weights_bytes(plan) + bases + activations + evidence)


def working_budget_bytes(plan: Plan, stage: str) -> int:
    """The closed forms' working memory in one job of ``stage`` (``lib.budget``):
    ``extract.memory_budget_mb`` where set, else ``BUDGET_SHARE`` of the job's memory request
    (on a GPU, of its free memory: more on a 40-80 GB card, whose larger chunks of attention
    pairs add a few percent to the pairs counted)."""
    if plan.memory_budget_mb is not None:
        return plan.memory_budget_mb * 2**20
    return int(BUDGET_SHARE * stage_memory_bytes(plan, stage))


def mem_mb(n_bytes: int | float) -> int:
    return max(MIN_MEM_MB, math.ceil(n_bytes / 1e6))


# --- the interaction graph -------------------------------------------------------------------

#: Peak bytes per graph edge of a cluster job above the edge store: igraph's graph with its
#: ``weight`` and ``E`` attributes (Python floats), the build's temporaries and the Leiden
#: code's own state. ``benchmarks/bench_clustering.py`` on the random-weight GPT-2's LIB graph
#: measured 156 (igraph, 15.6 million edges) and 186 (leidenalg, 11.7 million;
#: docs/performance.md).
GRAPH_EDGE_BYTES = 200
#: Seconds per graph edge and Leiden iteration on one thread, per implementation, and per edge
#: for building the graph once: the same benchmark measured 4.7e-6, 4.4e-7 and 0.8-1.3e-6 at
#: load 4-5 on two cores (upper bounds).
LEIDEN_SECONDS_PER_EDGE = {"leidenalg": 5e-6, "igraph": 5e-7}
GRAPH_BUILD_SECONDS_PER_EDGE = 1.3e-6
#: Iterations assumed for ``cluster.n_iterations: -1`` (until stable).
UNTIL_STABLE_ITERATIONS = 10


def graph_edges(plan: Plan) -> int:
    """The most edges the interaction graph can have: every feature pair of consecutive graph
    layers (all node layers but the last, ``cluster.layers``' default; an ε or fewer features
    only remove edges)."""
    return edge_entries(plan.widths[:-1])


def cluster_memory_bytes(plan: Plan) -> int:
    """Peak memory of a cluster job: the edge store, read whole (float64), and the graph."""
    store = 8 * edge_entries(plan.widths)
    return int(RUNTIME_OVERHEAD_BYTES + store + GRAPH_EDGE_BYTES * graph_edges(plan))


def cluster_minutes(plan: Plan, *, implementation: str, n_iterations: int, n_runs: int) -> int:
    """A runtime request (minutes) for a cluster job that runs Leiden ``n_runs`` times (one
    per resolution), with the margin."""
    iterations = n_iterations if n_iterations > 0 else UNTIL_STABLE_ITERATIONS
    per_edge = GRAPH_BUILD_SECONDS_PER_EDGE
    per_edge += n_runs * iterations * LEIDEN_SECONDS_PER_EDGE[implementation]
    minutes = RUNTIME_MARGIN * per_edge * graph_edges(plan) / 60 + STARTUP_MINUTES
    return max(MIN_RUNTIME_MINUTES, math.ceil(minutes))


# --- the explorer page -----------------------------------------------------------------------

#: Peak bytes per card of ``build_explorer`` beyond the bases and edges it reads: the layer's
#: evidence arrays, the cards' HTML (held twice while the folder is written) and the page's
#: columns. ``benchmarks/bench_explorer.py`` at GPT-2's full widths (152,312 cards, two
#: methods) peaked at 8.5 GB, 2.4 GB of it above the runtime, bases and edges: 16 kB a card.
CARD_BYTES = 20_000


def explorer_memory_bytes(plan: Plan) -> int:
    """Peak memory of ``build_explorer``: per method the bases (``C`` and ``C⁺``) and the edges
    it reads whole (float64), and a card per feature of every node layer, bases as wide as
    the layers (an upper bound)."""
    w = plan.widths
    arrays = 8 * (2 * sum(x * x for x in w) + edge_entries(w))
    return int(RUNTIME_OVERHEAD_BYTES + plan.n_methods * (arrays + CARD_BYTES * sum(w)))
