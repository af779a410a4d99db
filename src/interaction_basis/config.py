"""Experiment configuration: pydantic models, one per workflow stage.

``config/schema.yaml`` is generated from :class:`WorkflowConfig` (``python -m
interaction_basis.config``) and a test keeps the two in sync. Building a config never does IO.
"""

from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from interaction_basis.kinds.registry import KINDS

Method = Literal["lib", "pca", "neuron"]
DType = Literal["float64", "float32"]
Device = Literal["auto", "cpu", "cuda"]
Activation = Literal["relu", "gelu", "tanh"]


class _Frozen(BaseModel):
    """Every config section: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


_Beta = Annotated[float, Field(ge=0, lt=1)]


class ModAddTrainConfig(_Frozen):
    """How to train the mod-add transformer (defaults: the fast recipe described in
    ``interaction_basis.training.modadd``)."""

    modulus: int = Field(
        113, ge=2, description="p: inputs are (a, b, =) with a, b < p; the vocabulary has p + 1."
    )
    frac_train: float = Field(
        0.3, gt=0, lt=1, description="Fraction of the p² pairs in the train split (paper: 0.3)."
    )
    data_seed: int = Field(
        0, ge=0, description="Seed of the train/test split (random_split order; paper: 0)."
    )
    seed: int = Field(0, ge=0, description="Seed of the model initialisation (paper: 0..4).")
    d_model: int = Field(128, ge=1, description="Residual width.")
    n_heads: int = Field(4, ge=1, description="Attention heads.")
    d_head: int = Field(32, ge=1, description="Width of each head.")
    d_mlp: int = Field(512, ge=1, description="MLP hidden width (ReLU).")
    n_epochs: int = Field(
        3000,
        ge=1,
        description="Maximum number of full-batch epochs (one optimiser step each); training "
        "stops earlier once the early-stopping target is met.",
    )
    lr: float = Field(1e-2, gt=0, description="AdamW peak learning rate (paper: 1e-3).")
    weight_decay: float = Field(2.5, ge=0, description="AdamW decoupled weight decay (paper: 1).")
    betas: tuple[_Beta, _Beta] = Field((0.9, 0.98), description="AdamW betas (paper: (0.9, 0.98)).")
    warmup_steps: int = Field(
        10, ge=0, description="Linear warm-up: the lr factor is min(step / warmup_steps, 1)."
    )
    eval_every: int = Field(
        10, ge=1, description="Evaluate the train and test splits every this many epochs."
    )
    target_test_accuracy: float | None = Field(
        0.999,
        gt=0,
        le=1,
        description="Stop early once the test accuracy is at least this for `patience` "
        "consecutive evaluations; None trains all n_epochs.",
    )
    patience: int = Field(
        5, ge=1, description="Consecutive evaluations at the target before stopping early."
    )


class MLPTrainConfig(_Frozen):
    """How to train an image-classifier MLP (defaults: the reference CIFAR-10 run)."""

    hidden_sizes: tuple[int, ...] = Field(
        (100, 100),
        description="Widths of the hidden layers; the reference CIFAR-10 MLP uses [100, 100].",
    )
    activation: Activation = Field("relu", description="Hidden activation: relu, gelu or tanh.")
    bias: bool = Field(True, description="Whether the linear layers have biases.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam (L2) weight decay; 0 as reference.")
    batch_size: int = Field(64, ge=1, description="Minibatch size.")
    epochs: int = Field(12, ge=1, description="Passes over the training set.")
    seed: int = Field(0, ge=0, description="Seeds the initialisation and the shuffling.")
    eval_batch_size: int = Field(
        4096,
        ge=1,
        description="Batch size for the loss/accuracy evaluations (no effect on the result).",
    )


class ImageDataConfig(_Frozen):
    """Image dataset of an MLP experiment (kind: mlp)."""

    source: Literal["digits", "cifar10", "mnist", "hub"] = Field(
        "digits",
        description="digits: scikit-learn's 8x8 digits (no download); cifar10: the python-format "
        "archive in `path`; mnist: the idx .gz files in `path`; hub: `datasets` id `name`.",
    )
    path: str | None = Field(None, description="Local folder or file for cifar10/mnist.")
    name: str | None = Field(None, description="Hub dataset id for source 'hub'.")
    revision: str | None = Field(None, description="Hub dataset revision (commit SHA) to pin.")
    verify_checksum: bool = Field(True, description="Check the archive's published md5.")
    normalize: Literal["none", "standardize"] = Field(
        "none", description="none: pixels in [0, 1] (the paper); standardize: train mean/std."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Test share where the source has no split (digits)."
    )
    split_seed: int = Field(0, ge=0, description="Seed of that split.")
    max_fit_samples: int | None = Field(
        None, ge=1, description="Fit LIB on at most this many training samples (null: all)."
    )


class HubModelConfig(_Frozen):
    """A causal language model from the HuggingFace hub or a local folder (kind: hf)."""

    source: str = Field(
        "roneneldan/TinyStories-1M",
        description="Hub model id, or a local folder holding config.json, weights and tokenizer.",
    )
    revision: str | None = Field(
        None, description="Hub commit SHA to pin (a branch name works but warns)."
    )
    fold_value_biases: bool = Field(
        True,
        description="Move the attention value bias into the output bias, as TransformerLens "
        "(and so the paper) does. No activation changes, but the attention sections' "
        "derivative with respect to the constant input does, hence the constant feature's Λ "
        "and edges.",
    )


class TextDataConfig(_Frozen):
    """Text dataset of a language-model experiment (kind: hf)."""

    source: str = Field(
        "roneneldan/TinyStories",
        description="Hub dataset id, or a local .txt/.parquet/.jsonl file or folder.",
    )
    revision: str | None = Field(None, description="Hub dataset commit SHA to pin.")
    split: str = Field("train", description="Dataset split.")
    text_column: str = Field("text", description="Column holding the documents.")
    max_documents: int | None = Field(
        None, ge=1, description="Read at most this many documents for fitting (null: all)."
    )
    n_ctx: int = Field(200, ge=2, description="Tokens per chunk (paper: 200 for TinyStories).")
    n_samples: int = Field(64, ge=1, description="Chunks to fit LIB on (paper: 50000).")
    n_stats_samples: int | None = Field(
        None,
        ge=1,
        description="Chunks for the means and Grams alone (paper, GPT-2: 50000, against 500 "
        "for the bases and edges). They are cut from the same documents with the same "
        "permutation, so a larger set contains the fitting chunks. null: the fitting chunks.",
    )
    n_eval_documents: int = Field(
        20, ge=1, description="Held-out documents (the last ones) for evaluation."
    )
    n_eval_samples: int = Field(8, ge=1, description="Held-out chunks for evaluation.")
    txt_separator: str | None = Field(
        "", description="For .txt sources: document separator line ('' = blank line)."
    )
    seed: int = Field(0, ge=0, description="Seed of the chunk sampling.")


class ModularMLPConfig(_Frozen):
    """The reference's ``modular_mlp_config`` (method §H), plus the hidden variant."""

    n_hidden_layers: int = Field(4, ge=1, description="Hidden layers (n_hidden_layers + 1 linear).")
    width: int = Field(4, ge=2, description="Input, every hidden and the output size.")
    first_block_width: int | None = Field(
        None, ge=1, description="Width of the first block; null: width // 2."
    )
    weight_variances: list[float] = Field(
        [1.0, 1.0],
        min_length=2,
        max_length=2,
        description="Scale of each block's standard-normal weights. As in the reference they "
        "multiply the draw: standard deviations, despite the name.",
    )
    weight_equal_columns: bool = Field(
        False, description="Each block has identical columns (one draw per row)."
    )
    bias: float = Field(0.0, description="Value of every bias entry.")
    activation_fn: Activation = Field("relu", description="Activation after all but the last.")
    dtype: Literal["float64", "float32"] = Field(
        "float32",
        description="dtype of the weight draws, cast to the run's dtype afterwards. The "
        "reference's default is float32 (its sample build does not set it); float64 draws with "
        "the same seed are other numbers.",
    )
    seed: int = Field(
        0, ge=0, description="torch.manual_seed before each layer's draw: all layers are equal."
    )
    hidden: bool = Field(
        False,
        description="Mix every hidden layer with a fixed random orthogonal matrix, un-mixed in "
        "the next layer (same function; blocks invisible in the hidden neuron basis).",
    )
    hidden_seed: int = Field(0, ge=0, description="Seed of the mixing matrices.")

    @model_validator(mode="after")
    def _blocks_fit(self) -> "ModularMLPConfig":
        if self.first_block_width is not None and self.first_block_width >= self.width:
            raise ValueError(
                f"modular_mlp.first_block_width ({self.first_block_width}) must be smaller "
                f"than width ({self.width}): both blocks need a neuron."
            )
        return self

    @property
    def first_block(self) -> int:
        return self.first_block_width or self.width // 2


class BlockVectorConfig(_Frozen):
    """The reference's ``block_vector`` dataset (method §H); there are no labels."""

    size: int = Field(1000, ge=1, description="Number of vectors.")
    length: int = Field(4, ge=2, description="Length of each vector (the MLP's width).")
    first_block_length: int | None = Field(
        None, ge=1, description="Length of the first block; null: length // 2."
    )
    data_variances: list[float] = Field(
        [1.0, 1.0],
        min_length=2,
        max_length=2,
        description="Scale of each block. As in the reference they multiply a standard "
        "normal: standard deviations, despite the name.",
    )
    data_perfect_correlation: bool = Field(
        False, description="One draw per sample and block, repeated across the block."
    )
    dtype: Literal["float64", "float32"] = Field(
        "float64", description="dtype of the draws (float32 draws are other numbers)."
    )
    seed: int = Field(0, ge=0, description="torch.manual_seed before drawing.")

    @model_validator(mode="after")
    def _blocks_fit(self) -> "BlockVectorConfig":
        if self.first_block_length is not None and self.first_block_length >= self.length:
            raise ValueError(
                f"block_vector.first_block_length ({self.first_block_length}) must be smaller "
                f"than length ({self.length}): both blocks need a coordinate."
            )
        return self

    @property
    def first_block(self) -> int:
        return self.first_block_length or self.length // 2


class ModelConfig(_Frozen):
    """Where the model comes from."""

    kind: str = Field(
        "modadd",
        description="Architecture: "
        + ", ".join(f"'{name}' ({k.description})" for name, k in KINDS.items())
        + ".",
        json_schema_extra={"enum": list(KINDS)},
    )
    weights: str | None = Field(
        None,
        description="Path to an existing weights.npz to analyse instead of training "
        "(TransformerLens naming for modadd; layers.{i}.W/b for mlp); '{reference_dir}' expands "
        "to the top-level reference_dir. null: train.",
    )
    train: ModAddTrainConfig = Field(
        default_factory=ModAddTrainConfig,
        description="kind modadd: training recipe and data split (the split is also used for "
        "imported weights: LIB is fitted on the train split, evaluations use the test split).",
    )
    mlp: MLPTrainConfig = Field(
        default_factory=MLPTrainConfig, description="kind mlp: architecture and training."
    )
    data: ImageDataConfig = Field(
        default_factory=ImageDataConfig, description="kind mlp: the image dataset."
    )
    hub: HubModelConfig = Field(
        default_factory=HubModelConfig, description="kind hf: the model to download."
    )
    text: TextDataConfig = Field(
        default_factory=TextDataConfig, description="kind hf: the text dataset."
    )
    # kind modular_mlp (the planted-module MLP, method §H).
    modular_mlp: ModularMLPConfig = Field(
        default_factory=ModularMLPConfig,
        description="kind modular_mlp: the reference's modular_mlp_config, plus `hidden`.",
    )
    block_vector: BlockVectorConfig = Field(
        default_factory=BlockVectorConfig,
        description="kind modular_mlp: the reference's block_vector dataset (no labels).",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown model kind {kind!r}; supported: {', '.join(KINDS)}")
        return kind

    @model_validator(mode="after")
    def _modular_mlp_is_constructed(self) -> "ModelConfig":
        if self.kind != "modular_mlp":
            return self
        if self.weights is not None:
            raise ValueError(
                "model.kind 'modular_mlp' is constructed from model.modular_mlp; remove "
                "model.weights."
            )
        if self.block_vector.length != self.modular_mlp.width:
            raise ValueError(
                f"block_vector.length ({self.block_vector.length}) must equal "
                f"modular_mlp.width ({self.modular_mlp.width}): the vectors are the inputs."
            )
        return self

    def settings(self, *sections: str) -> dict:
        """The settings of this kind (JSON types): ``kind`` and the sections it reads, or of
        those only ``sections``. Stage params and stored provenance hold only these, so that
        another kind's settings rerun nothing and are not recorded as if they mattered."""
        used = KINDS[self.kind].sections
        unknown = set(sections) - set(used)
        if unknown:
            raise ValueError(f"kind {self.kind!r} does not use {sorted(unknown)}")
        return self.model_dump(mode="json", include={"kind", *(sections or used)})

    @property
    def downloaded(self) -> bool:
        """Whether the model and its data come from the hub (rules download_model,
        download_dataset, tokenize_dataset) instead of results/<experiment>/model/."""
        return "hub" in KINDS[self.kind].sections

    @property
    def planted(self) -> bool:
        """Whether the network has planted modules to score against (rule score_ground_truth)."""
        return KINDS[self.kind].planted


class ExtractConfig(_Frozen):
    """Activation extraction at the node layers (method §A.1, A.2)."""

    node_layers: list[str] | None = Field(
        None,
        min_length=2,
        description="Node layers in forward order; the last one is not rotated unless "
        "basis.rotate_final. null: the model's default (mod-add: ln1.0, ln2.0, unembed, output; "
        "MLP: layers.0 ... output).",
    )
    dtype: DType = Field("float64", description="Precision of the model and activations.")
    batch_size: int = Field(
        1024, ge=1, description="Samples per batch for extraction and all later passes."
    )
    center: bool = Field(
        True, description="Mean-centre (keep the constant as feature 0; method §A.2)."
    )
    device: Device = Field(
        "auto",
        description="Where the models run: extraction and statistics, M', edges, both "
        "ablations and the feature evidence (the basis solves run on the CPU). auto: CUDA for "
        "language models when present; cuda: stop if there is none (mod-add and MLP models "
        "always run on the CPU).",
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=1,
        description="MiB that the largest intermediates of one M' or edge call may take: the "
        "closed forms and the generic path chunk over positions, output features and samples "
        "to stay within it (results do not depend on it). null: half the memory the job has "
        "(the GPU's free memory on CUDA, else the SLURM job's memory, else the machine's "
        "available memory; method §A.8).",
    )
    n_shards: int = Field(
        1,
        ge=1,
        description="Contiguous shards of whole batches: extraction, statistics, M' and edges "
        "run as one job per shard and are summed by gather jobs. 1: no shard jobs.",
    )
    store_activations: bool = Field(
        True,
        description="Keep the per-token activations (activations.zarr; GPT-2 small: 0.62 GB "
        "per 1024-token chunk). false (language models): only the means and Grams are stored, "
        "and the basis and edge jobs recompute the activations with a forward pass of the "
        "model over the token chunks (the same values: far less disk, a little more compute).",
    )


class IntegrationConfig(_Frozen):
    """Integration rule over the path α·f (method §A.7)."""

    method: Literal["gradient", "trapezoidal", "gauss-legendre"] = Field(
        "gradient", description="gradient (α = 1, every paper config), trapezoidal, gauss-legendre."
    )
    n_intervals: int = Field(0, ge=0, description="Intervals; 0 for 'gradient'.")

    @model_validator(mode="after")
    def _gradient_has_no_intervals(self) -> "IntegrationConfig":
        if self.method == "gradient" and self.n_intervals != 0:
            raise ValueError("integration.method 'gradient' requires n_intervals: 0")
        return self


class SourcesConfig(_Frozen):
    """Stochastic ±1 sources (method §A.3, A.6); null means exact."""

    n_pos: int | None = Field(None, ge=1, description="Sources over output positions.")
    n_hidden: int | None = Field(
        None, ge=1, description="Sources over output dimensions (basis only)."
    )


class _BasisMethods(_Frozen):
    methods: list[Method] = Field(
        ["lib", "pca"], min_length=1, description="Bases to build: lib, pca, neuron."
    )


class BasisSettings(_Frozen):
    """What the jobs of one basis method read (see :meth:`BasisConfig.settings`), so that
    adding a method, or changing LIB's M′ settings, reruns no other method's jobs."""

    truncation: float = Field(
        1e-10,
        gt=0,
        description="Drop Gram eigenvalues D and Λ at or below this. Relative (to the largest "
        "eigenvalue) by default: float64 rounding is ~1e-16 of the largest, so 1e-10 removes "
        "only noise and null directions with six orders of margin (method §A.8). The paper "
        "used an absolute 1e-15.",
    )
    relative: bool = Field(True, description="Whether `truncation` is relative to the maximum.")
    rotate_final: bool = Field(
        False, description="Give the last node layer a PCA basis instead of the neuron basis."
    )
    integration: IntegrationConfig = Field(default_factory=IntegrationConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    seed: int = Field(0, ge=0, description="Seed of the stochastic sources.")


class BasisConfig(BasisSettings, _BasisMethods):
    """Per-layer bases (method §A.3, A.4, A.8)."""

    def settings(self, method: str) -> BasisSettings:
        """The settings of one method's jobs (its rules' params): not the list of methods, and
        for the PCA and neuron bases not the settings of LIB's M′ (integration, sources, seed),
        which they do not read (left at their defaults), so that changing those reruns LIB
        only."""
        lib_only = set() if method == "lib" else {"integration", "sources", "seed"}
        return BasisSettings.model_validate(self.model_dump(exclude={"methods", *lib_only}))


class EdgesConfig(_Frozen):
    """Interaction edges between adjacent node layers (method §A.6)."""

    integration: IntegrationConfig = Field(default_factory=IntegrationConfig)
    n_sources_pos: int | None = Field(
        None, ge=1, description="Stochastic sources over output positions; null: exact."
    )
    seed: int = Field(0, ge=0, description="Seed of the stochastic sources.")


class ClusterConfig(_Frozen):
    """The interaction graph and its Leiden modules (method §D)."""

    layers: list[str] | None = Field(
        None, description="Node layers in the graph; null: all but the last ('output')."
    )
    edge_norm: Literal["log", "sqrt", "abs", "max", "node_log"] = Field(
        "log", description="Edge weight: log = max(0, log10(E/ε_l)) (the paper's), sqrt, ..."
    )
    epsilon: float | dict[str, float] | None = Field(
        None,
        description="ε of the log norm: one value or one per input layer. null: derive ε_l "
        "from `epsilon_mass`.",
    )
    epsilon_mass: float = Field(
        0.99,
        gt=0,
        le=1,
        description="If epsilon is null: ε_l is the smallest of the strongest non-constant "
        "edges that together hold this fraction of layer l's non-constant edge weight.",
    )
    resolution: float = Field(1.0, gt=0, description="Leiden resolution γ (paper: 0.5 and 1).")
    seed: int = Field(0, ge=0, description="Leiden seed.")
    n_iterations: int = Field(10, description="Leiden iterations (paper: 10; -1: to convergence).")
    implementation: Literal["leidenalg", "igraph"] = Field(
        "leidenalg",
        description="Leiden code: leidenalg (the method's) or igraph (same objective, 10-17x "
        "faster on graphs of millions of edges; different partitions of similar quality).",
    )


_Part = TypeVar("_Part", bound=BaseModel)


class _EvaluationSettings(_Frozen):
    """What both ablation stages read."""

    enabled: bool = Field(True, description="Run the evaluation stages and the report.")
    metric: Literal["accuracy", "ce_loss"] = Field(
        "accuracy", description="accuracy (classifiers) or ce_loss (language models)."
    )
    dtype: DType = Field("float32", description="Evaluation precision (paper: float32).")
    batch_size: int = Field(4096, ge=1, description="Evaluation batch size.")
    max_samples: int | None = Field(
        None, ge=1, description="Evaluate on at most this many held-out samples (null: all)."
    )


class NodeAblationConfig(_EvaluationSettings):
    """The evaluate settings of rule ablate_nodes."""

    node_schedule: Literal["exponential", "linear"] = Field(
        "exponential", description="Kept-feature counts to score (method §E)."
    )
    ablate_every_vec_cutoff: int = Field(
        10, ge=0, description="exponential: score every kept count up to this, ..."
    )
    exp_base: float = Field(1.05, gt=1, description="... then step down by base**x.")
    n_points: int = Field(20, ge=2, description="linear: number of kept counts.")


class EdgeAblationConfig(_EvaluationSettings):
    """The evaluate settings of rule ablate_edges."""

    edge_delta: float = Field(
        0.001,
        gt=0,
        description="Edge ablation: keep the score within this of the unablated one "
        "(accuracy drop, or CE increase).",
    )
    edge_scaling: Literal["linear", "logarithmic"] = Field(
        "linear", description="Bisection midpoint (paper: linear for mod-add, log for LMs)."
    )


class ResolutionsConfig(_Frozen):
    """The evaluate settings of rule cluster_resolutions."""

    resolutions: list[float] = Field(
        [0.5, 1.0],
        min_length=1,
        description="Leiden resolutions γ for the modules with ε from the edge ablation.",
    )


# One flat config section made of one sub-model per rule: each rule gets (and reruns for) only
# its own part, and its stage function can read nothing else.
class EvaluateConfig(ResolutionsConfig, EdgeAblationConfig, NodeAblationConfig):
    """Ablations on held-out data and modules from the ablation threshold (method §D, E)."""

    def part(self, model: type[_Part]) -> _Part:
        """The settings of one rule: ``NodeAblationConfig``, ``EdgeAblationConfig`` or
        ``ResolutionsConfig``."""
        return model.model_validate(self.model_dump(include=set(model.model_fields)))


class FeaturesConfig(_Frozen):
    """What rule interpret_features reads: the interpret settings but the page's, so that a
    setting of the page reruns no method's features."""

    enabled: bool = Field(True, description="Make features.zarr and explorer.html.")
    max_samples: int | None = Field(
        None, ge=1, description="Describe features on at most this many held-out samples."
    )
    batch_size: int = Field(1024, ge=1, description="Held-out samples per batch.")
    top_k: int = Field(20, ge=1, description="Top and bottom examples kept per feature.")
    window: int = Field(8, ge=0, description="Language models: ± tokens around each example.")
    quantiles: list[float] = Field(
        [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99],
        min_length=1,
        description="Quantile levels of each feature's activation.",
    )
    n_quantile_rows: int = Field(
        20000,
        ge=10,
        description="Quantiles come from a uniform random subsample of this many (sample, "
        "position) rows (exact when the split has fewer).",
    )
    n_direct: int = Field(
        10, ge=1, description="Top promoted and suppressed outputs per feature (direct effect)."
    )
    seed: int = Field(0, ge=0, description="Seed of the quantile subsample.")


class InterpretConfig(FeaturesConfig):
    """Per-feature evidence (features.zarr) and the interactive explorer page."""

    max_edges: int = Field(
        5000, ge=1, description="Explorer: draw at most this many strongest edges per method."
    )
    page_examples: int = Field(
        8, ge=1, description="Explorer: top examples shown on each feature's card."
    )

    def features(self) -> FeaturesConfig:
        """The settings of rule interpret_features (its params)."""
        return FeaturesConfig.model_validate(
            self.model_dump(include=set(FeaturesConfig.model_fields))
        )


class ExperimentConfig(_Frozen):
    """One model analysed end to end."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Folder name under results/ (letters, digits, '-', '_').",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    basis: BasisConfig = Field(default_factory=BasisConfig)
    edges: EdgesConfig = Field(default_factory=EdgesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    interpret: InterpretConfig = Field(default_factory=InterpretConfig)

    @model_validator(mode="after")
    def _node_layers_exist(self) -> "ExperimentConfig":
        # Where the kind knows its layers from the config alone, a misspelt name fails here,
        # before any job; otherwise the first job that builds the model checks it.
        chosen = self.extract.node_layers
        known = KINDS[self.model.kind].node_layer_names(self.model)
        if chosen is None or known is None:
            return self
        unknown = [name for name in chosen if name not in known]
        if unknown:
            raise ValueError(
                f"extract.node_layers: unknown node layer(s) {unknown}; this {self.model.kind} "
                f"model has: {', '.join(known)}."
            )
        positions = [known.index(name) for name in chosen]
        if positions != sorted(set(positions)):
            raise ValueError(
                f"extract.node_layers {chosen} must be distinct and in forward order: "
                f"{', '.join(known)}."
            )
        return self

    @model_validator(mode="after")
    def _modular_mlp_has_no_labels(self) -> "ExperimentConfig":
        if self.model.kind == "modular_mlp" and (self.evaluate.enabled or self.interpret.enabled):
            raise ValueError(
                "model.kind 'modular_mlp' has no labels or held-out split: set "
                "evaluate.enabled and interpret.enabled to false."
            )
        return self

    @model_validator(mode="after")
    def _language_models_have_no_class_labels(self) -> "ExperimentConfig":
        if self.model.downloaded and self.evaluate.enabled and self.evaluate.metric == "accuracy":
            raise ValueError(
                f"evaluate.metric 'accuracy' needs class labels, which a language model "
                f"(model.kind {self.model.kind!r}) does not have: set evaluate.metric: ce_loss "
                "(next-token cross-entropy) or evaluate.enabled: false."
            )
        return self

    @model_validator(mode="after")
    def _only_language_models_recompute(self) -> "ExperimentConfig":
        if not self.extract.store_activations and not self.model.downloaded:
            raise ValueError(
                "extract.store_activations false recomputes the activations from a language "
                f"model's token chunks; model.kind {self.model.kind!r} has none. Set it to "
                "true (its activations are small)."
            )
        return self

    @model_validator(mode="after")
    def _shards_fit_the_text_data(self) -> "ExperimentConfig":
        if not self.model.downloaded:
            return self  # other tasks' sample counts are known only when their data loads
        t, e = self.model.text, self.extract
        sets = {"text.n_samples": t.n_samples, "text.n_stats_samples": t.n_stats_samples}
        for key, n in sets.items():
            n_batches = None if n is None else -(-n // e.batch_size)
            if n_batches is not None and n_batches < e.n_shards:
                raise ValueError(
                    f"extract.n_shards={e.n_shards} is more than the {n_batches} "
                    f"batches of {key}={n} at extract.batch_size={e.batch_size}: every shard "
                    "needs a batch. Lower n_shards or batch_size, or raise the sample count."
                )
        return self


class ResourcesConfig(_Frozen):
    """What each job asks the scheduler for (SLURM: --cpus-per-task, --mem, -t, --gpus)."""

    threads: int = Field(
        2,
        ge=1,
        description="Threads of the jobs that run the model (train, extract, M', edges, "
        "ablations); the small solve, gather and plotting jobs use 1.",
    )
    mem_mb_scale: float = Field(
        1.0, gt=0, description="Multiplies every rule's memory request (doubled on each retry)."
    )
    runtime_scale: float = Field(
        1.0, gt=0, description="Multiplies every rule's runtime request (minutes)."
    )
    gpu: int = Field(
        0,
        ge=0,
        description="GPUs per model-running job (SLURM --gpus). Language models compute on "
        "them with extract.device auto or cuda; mod-add and MLP models use the CPU. 0 with "
        "extract.device cuda: one per language-model job.",
    )
    check_disk: bool = Field(
        True,
        description="Refuse to start a run whose language-model stores (activations, bases, "
        "edges; printed at planning) need more space than the results folder's filesystem "
        "has free. false: start anyway.",
    )


# --- toy language models trained by the workflow (rule train_toy_lm) ---

#: Distinct two-syllable pseudo-words ``induction_corpus`` can make (14 consonants, 5 vowels).
MAX_PSEUDO_WORDS = 14**2 * 5**2


class InductionCorpusConfig(_Frozen):
    """The synthetic corpus of a toy language model."""

    n_words: int = Field(
        64,
        ge=2,
        le=MAX_PSEUDO_WORDS,
        description="Vocabulary: distinct two-syllable pseudo-words (one token each).",
    )
    n_documents: int = Field(
        20000, ge=1, description="Training documents (the first ones in corpus.txt)."
    )
    n_held_out: int = Field(
        200,
        ge=1,
        description="Held-out documents, written last in corpus.txt and never trained on: "
        "the accuracy is measured on them, and an experiment's text.n_eval_documents up to "
        "this many read only them.",
    )
    length: int = Field(20, ge=3, description="Words per document.")
    span_min: int = Field(8, ge=2, description="Shortest repeated span (words).")
    span_max: int = Field(10, ge=2, description="Longest repeated span (words).")
    skip_probability: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the words, before the span is copied, replaced by f(the word two "
        "back), f a fixed random map of the vocabulary: makes a previous-token head useful on "
        "its own, the first half of the copying circuit. 0: every word uniform at random.",
    )
    seed: int = Field(0, ge=0, description="Seed of the vocabulary and the documents.")

    @model_validator(mode="after")
    def _spans_fit(self) -> "InductionCorpusConfig":
        if self.span_min > self.span_max:
            raise ValueError(f"span_min={self.span_min} is larger than span_max={self.span_max}.")
        if 2 * self.span_max > self.length:
            raise ValueError(
                f"Two copies of a span of span_max={self.span_max} words do not fit in a "
                f"document of length={self.length}: raise length or lower span_max."
            )
        return self


class ToyGPT2Config(_Frozen):
    """The architecture of a toy GPT-2 (dropout off: the analysis runs the model as trained)."""

    n_layer: int = Field(2, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention heads per block.")
    d_model: int = Field(64, ge=1, description="Residual stream width (a multiple of n_head).")
    d_mlp: int = Field(256, ge=1, description="MLP hidden width.")
    n_ctx: int = Field(32, ge=2, description="Positions (the longest input, in tokens).")


class ToyLMTrainConfig(_Frozen):
    """How to train the toy language model."""

    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (after a linear warm-up).")
    warmup_steps: int = Field(100, ge=0, description="Steps of linear learning-rate warm-up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=1, description="Windows per optimiser step.")
    windows: Literal["packed", "documents"] = Field(
        "packed",
        description="packed: random n_ctx-token windows of the packed training stream (the "
        "copies are often cut apart); documents: each window is EOS and one whole document.",
    )
    max_steps: int = Field(
        10000, ge=1, description="Give up (and fail) after this many steps below the target."
    )
    eval_every: int = Field(200, ge=1, description="Steps between held-out evaluations.")
    target_accuracy: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Stop at the first evaluation whose accuracy on the predictable words of "
        "the held-out repeated spans reaches this.",
    )
    seed: int = Field(0, ge=0, description="Seeds the initialisation and the window sampling.")


class ToyLMConfig(_Frozen):
    """A toy language model trained by the workflow (rule train_toy_lm)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Folder under results/toy_lms/; an experiment uses it with model.kind hf, "
        "hub.source results/toy_lms/<name>/model and text.source "
        "results/toy_lms/<name>/corpus.txt.",
    )
    corpus: InductionCorpusConfig = Field(default_factory=InductionCorpusConfig)
    model: ToyGPT2Config = Field(default_factory=ToyGPT2Config)
    train: ToyLMTrainConfig = Field(default_factory=ToyLMTrainConfig)


class WorkflowConfig(_Frozen):
    """The whole config file."""

    reference_dir: str = Field(
        "../shared/reference",
        description="Folder holding reference checkpoints; '{reference_dir}' in model.weights "
        "expands to it. Relative paths are relative to the working directory.",
    )
    experiments: list[ExperimentConfig] = Field(
        min_length=1, description="Experiments to run (a list, so --configfile replaces it)."
    )
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    toy_lms: list[ToyLMConfig] = Field(
        [],
        description="Toy language models trained by the workflow (results/toy_lms/<name>/), "
        "for experiments to read as local model and text sources.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "WorkflowConfig":
        for what, items in (("experiment", self.experiments), ("toy LM", self.toy_lms)):
            names = [e.name for e in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {dupes}")
        return self


def workflow_schema() -> dict:
    """The JSON Schema written to config/schema.yaml."""
    schema = WorkflowConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def check_yaml(path: str) -> None:
    """Raise a ValueError naming the file, line and column if ``path`` is not valid YAML.

    Snakemake's own message for an unparsable config file names neither.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
        raise ValueError(
            f"{where}: invalid YAML ({err.problem or err.context}). Indent with spaces only, "
            "and quote values that contain ': ' or start with a special character."
        ) from None


class ConfigError(ValueError):
    """A config the workflow refuses: one line naming the setting, the problem and the fix."""


def validate_config(raw: dict) -> WorkflowConfig:
    """The verdict of the workflow on a (merged) config: the JSON schema of
    ``config/schema.yaml`` (generated from these models; YAML's reading of the file matters,
    e.g. ``1e-10`` without a decimal point is text, not a number), then the models.

    Raises:
        ConfigError: the first problem, in one line, with the close matches of an unknown key.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(workflow_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        raise ConfigError(f"Invalid config: {_schema_problem(error, raw)}")
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = _where(first["loc"], raw)
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"Invalid config: {where + ': ' if where else ''}{msg}") from None


def _where(path, raw: dict) -> str:
    """``experiments[0] (modadd).basis.truncation`` for a JSON path into the config."""
    out = ""
    node: object = raw
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _schema_problem(error, raw: dict) -> str:
    import difflib

    where = _where(error.absolute_path, raw)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        problems = []
        for key in [k for k in error.instance if k not in allowed]:
            close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.6)
            hint = (
                f"did you mean {' or '.join(map(repr, close))}?"
                if close
                else f"known keys: {', '.join(allowed)}"
            )
            problems.append(f"unknown key {key!r} ({hint})")
        return f"{where or 'the top level'}: {'; '.join(problems)}"
    hint = ""
    if error.validator == "type" and isinstance(error.instance, str):
        try:
            float(error.instance)
            hint = (
                f" YAML reads {error.instance} as text (a number needs a decimal point, as in "
                "1.0e-10, or no exponent)."
            )
        except ValueError:
            pass
    return f"{where}: {error.message}.{hint}" if where else f"{error.message}.{hint}"


def default_config_file() -> Path | None:
    """The workflow's ``config/config.yaml`` that every ``--configfile`` is merged onto: the
    one in the working directory (where ``snakemake`` runs), else the checkout's."""
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2]):
        path = folder / "config" / "config.yaml"
        if path.is_file():
            return path
    return None


def check_files(paths: list[str], default: Path | None) -> WorkflowConfig:
    """What ``snakemake --configfile <paths>`` would run: each file read as Snakemake reads it
    and merged, in order, onto ``default`` (the workflow's config.yaml), then validated."""
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config

    merged: dict = {}
    for path in ([str(default)] if default else []) + paths:
        check_yaml(path)
        update_config(merged, load_configfile(path))
    return validate_config(merged)


if __name__ == "__main__":
    import sys

    import yaml

    if sys.argv[1:2] == ["--check"]:
        # Check config files before a run (Snakemake cannot say where a --configfile is
        # broken), with the workflow's verdict: merged onto the default config, as Snakemake
        # merges --configfile, and validated exactly as rules/common.smk does.
        default = default_config_file()
        files = sys.argv[2:]
        others = [f for f in files if default is None or Path(f).resolve() != default]
        try:
            check_files(others, default)
        except ValueError as err:
            named = any(str(err).startswith(f) for f in files)
            sys.exit(str(err) if named else f"{' + '.join(files)}: {err}")
        merged = f" (merged onto {default})" if default and others else ""
        print(f"{', '.join(files) or default}: valid{merged}")
        sys.exit(0)
    print("# Generated by `python -m interaction_basis.config`; do not edit by hand.")
    print(yaml.safe_dump(workflow_schema(), sort_keys=False, allow_unicode=True), end="")
