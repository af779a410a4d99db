"""Every model-running stage of a language-model experiment, run in-process on a tiny model
with a chosen ``extract.device``: the CPU-device test (tests/integration/test_device_path.py)
and the GPU test (tests/gpu/test_gpu_path.py) share it."""

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from interaction_basis import storage
from interaction_basis.config import (
    BasisConfig,
    EdgeAblationConfig,
    EdgesConfig,
    ExtractConfig,
    FeaturesConfig,
    InductionCorpusConfig,
    ModelConfig,
    NodeAblationConfig,
    ToyGPT2Config,
)
from interaction_basis.stages import basis as basis_stages
from interaction_basis.stages import edges as edges_stages
from interaction_basis.stages import evaluate as evaluate_stages
from interaction_basis.stages import extract as extract_stages
from interaction_basis.stages import interpret as interpret_stages
from lm_fixtures import randomise_lm, write_corpus, write_tiny_gpt2

#: The stage modules that resolve ``extract.device`` (a test that fakes the device patches
#: their ``resolve_device``).
STAGE_MODULES = (extract_stages, basis_stages, edges_stages, evaluate_stages, interpret_stages)


class LM(NamedTuple):
    model_dir: Path
    tokens: Path
    n_ctx: int


def write_gpt2(
    root: Path, n_layer: int = 1, n_ctx: int = 8, n_fit: int = 12, n_eval: int = 4
) -> LM:
    """The tiny GPT-2 of ``lm_fixtures`` (random, nonzero biases) and random token chunks."""
    model_dir = write_tiny_gpt2(root / "gpt2", write_corpus(root / "corpus.txt"), n_layer=n_layer)
    from transformers import GPT2LMHeadModel

    model = randomise_lm(GPT2LMHeadModel.from_pretrained(model_dir), seed=1)
    model.save_pretrained(model_dir)
    return LM(model_dir, _write_tokens(root, model.config.vocab_size, n_ctx, n_fit, n_eval), n_ctx)


def write_induction_lm(root: Path, n_ctx: int = 12, n_fit: int = 12, n_eval: int = 4) -> LM:
    """The toy induction LM's architecture and word tokenizer (untrained: the stages' arithmetic
    does not depend on what the weights learned), on its own corpus's documents."""
    from interaction_basis.data.induction_corpus import make_induction_corpus
    from interaction_basis.models.toy_gpt2 import build_toy_gpt2
    from interaction_basis.training.toy_lm import encode_documents, train_word_tokenizer

    corpus = InductionCorpusConfig(
        n_words=16, n_documents=n_fit + n_eval, n_held_out=1, length=n_ctx + 1, span_min=3,
        span_max=6,
    )  # fmt: skip
    made = make_induction_corpus(corpus)
    tok = train_word_tokenizer(made.texts(), corpus.n_words)
    torch.manual_seed(0)
    arch = ToyGPT2Config(n_layer=2, n_head=2, d_model=16, d_mlp=32, n_ctx=n_ctx)
    model = randomise_lm(build_toy_gpt2(arch, len(tok), tok.eos_token_id).eval(), seed=2)
    storage.write_pretrained(root / "induction", model, tok)
    ids = encode_documents(made, tok)[:, : n_ctx + 1]
    chunks = {"fit": ids[:n_fit], "eval": ids[n_fit : n_fit + n_eval]}
    storage.write_token_chunks(root / "induction_tokens.zarr", chunks, {})
    return LM(root / "induction", root / "induction_tokens.zarr", n_ctx)


def _write_tokens(root: Path, vocab: int, n_ctx: int, n_fit: int, n_eval: int) -> Path:
    rng = np.random.default_rng(0)
    chunks = {
        "fit": rng.integers(0, vocab, size=(n_fit, n_ctx + 1)),
        "eval": rng.integers(0, vocab, size=(n_eval, n_ctx + 1)),
        "stats": rng.integers(0, vocab, size=(2 * n_fit, n_ctx + 1)),
    }
    path = root / "tokens.zarr"
    storage.write_token_chunks(path, chunks, {})
    return path


class Settings(NamedTuple):
    model: ModelConfig
    extract: ExtractConfig
    basis: BasisConfig
    edges: EdgesConfig
    node_ablation: NodeAblationConfig
    edge_ablation: EdgeAblationConfig
    features: FeaturesConfig


def settings(lm: LM, device: str, *, eval_dtype: str = "float64", n_shards: int = 1) -> Settings:
    """Small exact settings with ``extract.device`` = ``device``; the ablations in ``eval_dtype``
    (float64 here, so that CPU and GPU scores agree to rounding)."""
    model = ModelConfig.model_validate(
        {"kind": "hf", "hub": {"source": str(lm.model_dir)}, "text": {"n_ctx": lm.n_ctx}}
    )
    evaluation = dict(metric="ce_loss", dtype=eval_dtype, batch_size=4)
    return Settings(
        model,
        ExtractConfig(batch_size=4, device=device, n_shards=n_shards),  # type: ignore[arg-type]
        BasisConfig(),
        EdgesConfig(),
        NodeAblationConfig(**evaluation, node_schedule="linear", n_points=4),  # type: ignore[arg-type]
        EdgeAblationConfig(**evaluation, edge_delta=0.05, edge_scaling="logarithmic"),  # type: ignore[arg-type]
        FeaturesConfig(top_k=3, window=2, n_quantile_rows=10, n_direct=3),
    )


class Paths(NamedTuple):
    """Where one run writes; ``inputs`` (another run's paths) gives each stage after
    extraction that run's inputs, so that a comparison sees one stage's arithmetic only."""

    acts: Path
    basis: dict[str, Path]
    edges: Path
    node_ablation: Path
    edge_ablation: Path
    features: Path
    shard_acts: Path
    m_dash: Path
    edge_parts: Path


def paths(out: Path) -> Paths:
    return Paths(
        out / "activations.zarr",
        {m: out / m / "basis.zarr" for m in ("lib", "pca")},
        out / "lib" / "edges.zarr",
        out / "lib" / "node_ablation.json",
        out / "lib" / "edge_ablation.json",
        out / "lib" / "features.zarr",
        out / "shard_0.zarr",
        out / "m_dash_0.zarr",
        out / "edge_parts_0.zarr",
    )


#: The stages in pipeline order: ``(name, run(lm, settings, out, inputs))``.
Stage = Callable[[LM, Settings, Paths, Paths], None]


def _extract(lm: LM, s: Settings, out: Paths, inputs: Paths) -> None:
    extract_stages.extract_activations(
        s.model, s.extract, str(lm.model_dir), str(out.acts), str(lm.tokens)
    )


def _bases(lm: LM, s: Settings, out: Paths, inputs: Paths) -> None:
    for method, path in out.basis.items():
        basis_stages.fit_basis(
            s.model,
            s.extract,
            s.basis.settings(method),
            method,  # type: ignore[arg-type]
            str(lm.model_dir),
            str(inputs.acts),
            str(path),
        )


def _edges(lm: LM, s: Settings, out: Paths, inputs: Paths) -> None:
    edges_stages.compute_edges(
        s.model,
        s.extract,
        s.edges,
        str(lm.model_dir),
        str(inputs.acts),
        str(inputs.basis["lib"]),
        str(out.edges),
    )


def _ablations(lm: LM, s: Settings, out: Paths, inputs: Paths) -> None:
    basis = str(inputs.basis["lib"])
    evaluate_stages.ablate_nodes(
        s.model,
        s.node_ablation,
        str(lm.model_dir),
        basis,
        str(out.node_ablation),
        str(lm.tokens),
        device=s.extract.device,
    )
    evaluate_stages.ablate_edges(
        s.model,
        s.edge_ablation,
        str(lm.model_dir),
        basis,
        str(inputs.edges),
        str(out.edge_ablation),
        str(lm.tokens),
        device=s.extract.device,
    )


def _features(lm: LM, s: Settings, out: Paths, inputs: Paths) -> None:
    interpret_stages.interpret_features(
        s.model,
        s.extract,
        s.features,
        "lib",
        str(lm.model_dir),
        str(inputs.basis["lib"]),
        str(out.features),
        str(lm.tokens),
    )


def _shards(lm: LM, s: Settings, out: Paths, inputs: Paths) -> None:
    """The sharded path's model-running stages, on the first of two shards."""
    sharded = s.extract.model_copy(update={"n_shards": 2})
    model_dir = str(lm.model_dir)
    extract_stages.extract_shard(
        s.model, sharded, model_dir, str(out.shard_acts), 0, str(lm.tokens)
    )
    layers = storage.read_node_layers(inputs.basis["lib"])
    basis_stages.shard_m_dash(
        s.model,
        sharded,
        s.basis.settings("lib"),
        layers[-2],
        model_dir,
        str(out.shard_acts),
        str(inputs.basis["lib"]),
        str(out.m_dash),
    )
    edges_stages.shard_edges(
        s.model,
        sharded,
        s.edges,
        model_dir,
        str(out.shard_acts),
        str(inputs.basis["lib"]),
        str(out.edge_parts),
    )


STAGES: tuple[tuple[str, Stage], ...] = (
    ("extract", _extract),
    ("bases", _bases),
    ("edges", _edges),
    ("ablations", _ablations),
    ("features", _features),
    ("shards", _shards),
)


def _read_extract(out: Paths) -> dict[str, object]:
    results: dict[str, object] = {}
    for layer in storage.read_node_layers(out.acts):
        results[f"acts/{layer}"] = storage.read_activations(out.acts, layer)
    for layer, st in storage.read_stats(out.acts).items():
        results[f"mean/{layer}"], results[f"gram/{layer}"] = st.mean, st.gram
    return results


def _read_bases(out: Paths) -> dict[str, object]:
    results: dict[str, object] = {}
    for method, path in out.basis.items():
        for layer, b in storage.read_bases(path).items():
            results[f"{method}/C/{layer}"] = b.C
        for layer, m in storage.read_m_dash(path).items():
            results[f"{method}/m_dash/{layer}"] = m
    return results


def _read_edges(out: Paths) -> dict[str, object]:
    return {f"edges/{a}/{b}": e for (a, b), e in storage.read_edges(out.edges).items()}


def _read_ablations(out: Paths) -> dict[str, object]:
    return {
        "node_ablation": storage.read_json(out.node_ablation),
        "edge_ablation": storage.read_json(out.edge_ablation),
    }


def _read_features(out: Paths) -> dict[str, object]:
    results: dict[str, object] = {}
    for layer, node in storage.read_features(out.features).children.items():
        ds = node.to_dataset()
        for name in ("mean", "std", "min", "max", "top_value", "top_sample", "promoted_value"):
            if name in ds:
                results[f"features/{layer}/{name}"] = ds[name].values
    return results


def _read_shards(out: Paths) -> dict[str, object]:
    results: dict[str, object] = {}
    for layer, m in storage.read_moments(out.shard_acts).items():
        results[f"shard_gram/{layer}"] = m.gram.value()
    for name, p in (("m_dash_shard", out.m_dash), ("edge_parts", out.edge_parts)):
        for group, part in storage.read_partial_sums(p).items():
            results[f"{name}/{group}"] = part.total.value()
    return results


#: What each stage wrote, as named tensors, arrays and JSON documents.
READERS: dict[str, Callable[[Paths], dict[str, object]]] = {
    "extract": _read_extract,
    "bases": _read_bases,
    "edges": _read_edges,
    "ablations": _read_ablations,
    "features": _read_features,
    "shards": _read_shards,
}
