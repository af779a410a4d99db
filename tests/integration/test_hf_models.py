"""Hugging Face causal LMs as bias-folded sectioned models (models/hf.py).

Tiny random GPT-2, GPT-Neo (global + local attention) and GPT-NeoX (rotary, parallel and
sequential residual) models are built from configs, saved to a temporary folder and reloaded
through :func:`load_hf_model` in float64. Their parameters are re-drawn with nonzero biases and
non-trivial LayerNorm affines so that every folding path is exercised.
"""

import math

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
)
from transformers.models.gpt_neo import modeling_gpt_neo

from interaction_basis.lib.fit import batches_from_tensors, compute_edges, compute_m_dash, fit_bases
from interaction_basis.lib.jacobians import Sources
from interaction_basis.lib.linalg import compute_centering_matrices
from interaction_basis.lib.statistics import compute_layer_statistics
from interaction_basis.models.hf import build_hf_sections, hf_node_layers, load_hf_model
from invariants import moment_error_and_bound, whitening_error_and_bound
from lm_fixtures import randomise_lm

VOCAB, D_MODEL, N_CTX, SEQ, WINDOW, N_SAMPLES = 61, 16, 16, 10, 3, 8
ARCHS = ("gpt2", "gpt_neo", "gpt_neox", "gpt_neox_sequential")
LIB_ARCHS = ("gpt2", "gpt_neo", "gpt_neox")


def _make_model(arch: str) -> PreTrainedModel:
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    if arch == "gpt2":
        cfg = GPT2Config(n_positions=N_CTX, n_embd=D_MODEL, n_layer=2, n_head=2, **common)
        return GPT2LMHeadModel(cfg)
    if arch == "gpt_neo":
        cfg = GPTNeoConfig(
            max_position_embeddings=N_CTX, hidden_size=D_MODEL, num_layers=2, num_heads=2,
            attention_types=[[["global", "local"], 1]], window_size=WINDOW,
            intermediate_size=2 * D_MODEL, **common,
        )  # fmt: skip
        return GPTNeoForCausalLM(cfg)
    cfg = GPTNeoXConfig(
        max_position_embeddings=N_CTX, hidden_size=D_MODEL, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=2 * D_MODEL, rotary_pct=0.5,
        use_parallel_residual=arch == "gpt_neox", **common,
    )  # fmt: skip
    return GPTNeoXForCausalLM(cfg)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """The tensors here are tiny: intra-op threads only spin (40x slower on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for i, arch in enumerate(ARCHS):
        path = tmp_path_factory.mktemp(arch)
        randomise_lm(_make_model(arch), seed=i).save_pretrained(path)
        dirs[arch] = path
    return dirs


@pytest.fixture(scope="module")
def models(model_dirs):
    return {arch: load_hf_model(path, torch.float64) for arch, path in model_dirs.items()}


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (N_SAMPLES, SEQ), generator=torch.Generator().manual_seed(1))


def _neo_attn_float64(self, query, key, value, attention_mask=None):
    """``GPTNeoSelfAttention._attn`` without its cast of queries and keys to float32."""
    scores = query @ key.transpose(-1, -2)
    q_len, k_len = query.size(-2), key.size(-2)
    causal = self.bias[:, :, k_len - q_len : k_len, :k_len]
    scores = torch.where(causal, scores, torch.tensor(torch.finfo(scores.dtype).min))
    if attention_mask is not None:
        scores = scores + attention_mask
    pattern = scores.softmax(dim=-1)
    return pattern @ value, pattern


def _hf_forward(model, tokens, monkeypatch):
    """Hugging Face logits and hidden states, with every op in float64."""
    if isinstance(model, GPTNeoForCausalLM):
        monkeypatch.setattr(modeling_gpt_neo.GPTNeoSelfAttention, "_attn", _neo_attn_float64)
    if model.config._attn_implementation != "sdpa" and isinstance(model, GPTNeoXForCausalLM):
        pytest.fail("GPT-NeoX eager attention runs softmax in float32; expected sdpa")
    with torch.no_grad():
        out = model(tokens, output_hidden_states=True)
    return out.logits, out.hidden_states


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


# --- forward pass ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ln", "resid"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_residuals_match_hf(arch, kind, models, tokens, monkeypatch):
    model = models[arch]
    logits, hidden = _hf_forward(model, tokens, monkeypatch)
    layers = hf_node_layers(model, kind, final="output")

    exact = build_hf_sections(model, layers, center_writing_weights=False, center_unembed=False)
    acts = exact.activations(tokens)
    assert list(acts) == layers
    assert _rel(acts["output"], logits) < 1e-10
    # The residual stream itself is Hugging Face's (hidden_states[L] is the input of block L).
    for layer in range(model.config.num_hidden_layers):
        resid = acts[f"resid_pre.{layer}" if kind == "resid" else f"ln1.{layer}"]
        assert _rel(resid[..., :-1], hidden[layer]) < 1e-10

    # TransformerLens weight processing (the default): logits shift by a per-position constant
    # and the residual is the centred Hugging Face residual.
    tl = build_hf_sections(model, layers).activations(tokens)
    shift = tl["output"] - logits
    assert float((shift - shift.mean(-1, keepdim=True)).abs().max()) < 1e-10 * float(
        logits.abs().max()
    )
    assert _rel(tl["output"].log_softmax(-1), logits.log_softmax(-1)) < 1e-10
    first = tl[layers[0]][..., :-1]
    assert _rel(first, hidden[0] - hidden[0].mean(-1, keepdim=True)) < 1e-10


def test_gpt_neo_reference_without_float64_patch(models, tokens):
    """Unpatched, Hugging Face's GPT-Neo computes scores in float32: agreement to ~1e-6 only."""
    model = models["gpt_neo"]
    sectioned = build_hf_sections(model, ["ln1.0", "output"], center_unembed=False)
    with torch.no_grad():
        logits = model(tokens).logits
    assert _rel(sectioned.activations(tokens)["output"], logits) < 1e-5


def test_gpt_neo_local_attention_window():
    """In an all-local GPT-Neo, token 0 reaches positions < 1 + n_layers·(window − 1) only."""
    cfg = GPTNeoConfig(
        vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, max_position_embeddings=N_CTX,
        hidden_size=D_MODEL, num_layers=2, num_heads=2, attention_types=[[["local"], 2]],
        window_size=WINDOW, intermediate_size=2 * D_MODEL,
    )  # fmt: skip
    model = randomise_lm(GPTNeoForCausalLM(cfg), seed=7).double()
    sectioned = build_hf_sections(model, ["ln1.0", "output"])
    a = torch.randint(1, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(3))
    b = a.clone()
    b[0, 0] = 0
    diff = (sectioned.activations(a)["output"] - sectioned.activations(b)["output"]).abs()
    reach = 1 + 2 * (WINDOW - 1)
    assert float(diff[0, reach:].max()) == 0.0
    assert float(diff[0, reach - 1].max()) > 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_node_layer_shapes_and_constant(arch, models, tokens):
    model = models[arch]
    layers = hf_node_layers(model, "all", final="output")
    acts = build_hf_sections(model, layers).activations(tokens)
    big = D_MODEL + 1
    parallel = arch == "gpt_neox"
    for name, x in acts.items():
        assert x.shape[:2] == (N_SAMPLES, SEQ), name
        assert x.dtype == torch.float64
        prefix = name.split(".")[0]
        if name == "output":
            assert x.shape[-1] == VOCAB
            continue
        assert bool((x[..., -1] == 1.0).all()), f"{name}: last coordinate is not the constant 1"
        expected = {"ln1_out": big + 1, "ln2_out": big + 1, "ln_final_out": big + 1,
                    "attn_in": 2 * big, "mlp_in": 2 * big}.get(prefix, big)  # fmt: skip
        if parallel and prefix == "ln2":
            expected = 2 * big
        if parallel and prefix == "ln2_out":
            expected = 2 * big + 1
        assert x.shape[-1] == expected, name
        if prefix.endswith("_out"):
            # Coordinate 0 is the biased variance of the residual that follows it.
            resid = x[..., 1 : 1 + D_MODEL]
            var = resid.var(dim=-1, unbiased=False)
            torch.testing.assert_close(x[..., 0], var, rtol=1e-12, atol=0)
        if prefix in ("attn_in", "mlp_in"):
            normed = x[..., :D_MODEL]
            torch.testing.assert_close(normed.mean(-1), torch.zeros_like(normed[..., 0]),
                                       rtol=0, atol=1e-12)  # fmt: skip
    if parallel:
        assert "resid_mid.0" not in acts


def test_node_layer_errors(models):
    model = models["gpt2"]
    with pytest.raises(ValueError, match=r"Unknown node layer.*ln1_out\.0"):
        build_hf_sections(model, ["ln1.0", "ln3.0"])
    with pytest.raises(ValueError, match="forward order"):
        build_hf_sections(model, ["mlp_in.0", "ln1.0"])
    with pytest.raises(ValueError, match=r"Unknown node layer.*ln2_out\.0"):
        build_hf_sections(models["gpt_neox"], ["ln1.0", "resid_mid.0"])
    with pytest.raises(ValueError, match="Unsupported model class"):
        tiny = GPT2Config(vocab_size=8, n_positions=4, n_embd=4, n_layer=1, n_head=1)
        build_hf_sections(GPT2Model(tiny), ["ln1.0", "output"])
    assert hf_node_layers(model, "ln") == [
        f"{p}.{i}" for i in range(2) for p in ("ln1", "ln1_out", "attn_in", "ln2", "ln2_out",
                                               "mlp_in")
    ] + ["ln_final", "ln_final_out", "unembed"]  # fmt: skip
    assert hf_node_layers(models["gpt_neox"], "resid") == [
        "resid_pre.0", "resid_pre.1", "resid_post.1", "unembed"
    ]  # fmt: skip


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*snakemake"):
        load_hf_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        load_hf_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="Could not load"):
        load_hf_model(tmp_path)


# --- LIB on the sectioned models -------------------------------------------------------------


@pytest.fixture(scope="module")
def lib_builds(models, tokens):
    """LIB over the LayerNorm-split node layers ending at ``unembed`` (rotated), per arch."""
    cache = {}

    def get(arch):
        if arch not in cache:
            model = build_hf_sections(models[arch], hf_node_layers(models[arch], "ln"))
            acts = model.activations(tokens)
            batches = batches_from_tensors(acts, batch_size=4)
            stats = {
                n: compute_layer_statistics(batches, n, model.traits(n)) for n in model.node_layers
            }
            bases, m_dashes = fit_bases(model, batches, stats, "lib", rotate_final=True)
            cache[arch] = (model, acts, batches, stats, bases, m_dashes)
        return cache[arch]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("arch", LIB_ARCHS)
def test_lib_invariants(arch, lib_builds):
    """method §A.9 (1) and (3) on every non-final layer."""
    model, _, _, stats, bases, m_dashes = lib_builds(arch)
    for layer in model.node_layers[:-1]:
        basis, s = bases[layer], stats[layer]
        prefix = layer.split(".")[0]
        n_m = basis.n_masked
        assert n_m == (2 if prefix in ("ln1_out", "ln2_out") else 1), layer
        # (1) Features are uncorrelated with second moment Λ. The variance node is not
        # decorrelated from the rest (it is masked out of the PCA and the rotation).
        _, y_inv = compute_centering_matrices(s.mean)
        err, tol = moment_error_and_bound(basis, y_inv.T @ s.gram @ y_inv)
        if n_m == 2:
            variance = err[1, 1].item()
            err[1, :] = err[:, 1] = 0.0
            err[1, 1] = variance
        assert bool((err <= tol).all()), (layer, float((err / tol).max()))
        # (3) Gradients are whitened in LIB coordinates outside the masked rows.
        err, tol = whitening_error_and_bound(basis, m_dashes[layer])
        assert bool((err[n_m:, n_m:] <= tol[n_m:, n_m:]).all()), (layer, float((err / tol).max()))


@pytest.mark.slow
def test_stochastic_position_sources_converge(lib_builds):
    """One ±1 source over output positions is unbiased: error ~ 1/sqrt(draws) (method §A.3)."""
    model, _, batches, _, bases, m_dashes = lib_builds("gpt_neo")
    layer = "attn_in.0"  # the attention mixes positions, so one source is not exact
    c_next = bases["ln2.0"].C
    exact = m_dashes[layer]

    def rel_sq_error(n_sources: int, seed: int) -> float:
        sources = Sources(n_pos=n_sources)
        est = compute_m_dash(model, batches, layer, c_next, sources=sources, seed=seed).mean()
        return float((est - exact).square().sum() / exact.square().sum())

    # Single draws over different generator seeds, and their average.
    singles = [
        compute_m_dash(model, batches, layer, c_next, sources=Sources(n_pos=1), seed=seed).mean()
        for seed in range(32)
    ]
    mse_1 = sum(float((m - exact).square().sum()) for m in singles) / 32
    mse_1 /= float(exact.square().sum())
    assert mse_1 > 1e-3  # vacuous if a single draw were already exact
    mean_32 = torch.stack(singles).mean(dim=0)
    assert float((mean_32 - exact).norm() / exact.norm()) < 3 * math.sqrt(mse_1 / 32)
    # n sources in one call average n independent draws: the MSE falls like 1/n.
    mse_32 = sum(rel_sq_error(32, seed) for seed in range(100, 108)) / 8
    assert 32 / 3 < mse_1 / mse_32 < 32 * 3
    assert math.sqrt(rel_sq_error(256, seed=7)) < 3 * math.sqrt(mse_1 / 256)


def _brute_force_edges(section, acts, b_in, c_out):
    """method §A.6 with one autograd call per (output position, output feature)."""
    feats = (acts @ b_in.C).detach().requires_grad_(True)
    out = section(feats @ b_in.C_pinv) @ c_out
    edges = torch.zeros(out.shape[-1], feats.shape[-1], dtype=torch.float64)
    for t in range(out.shape[1]):
        for i in range(out.shape[2]):
            (grad,) = torch.autograd.grad(out[:, t, i].sum(), feats, retain_graph=True)
            edges[i] += (grad * feats.detach()).sum(dim=1).square().sum(dim=0)
    return edges / (acts.shape[0] * acts.shape[1])


@pytest.mark.slow
@pytest.mark.parametrize("arch", LIB_ARCHS)
def test_edges_match_brute_force(arch, lib_builds):
    model, acts, _, _, bases, _ = lib_builds(arch)
    few = {name: x[:3] for name, x in acts.items()}
    layers = ["ln1_out.0", "attn_in.0", "ln2.0", "mlp_in.1", "ln_final_out"]
    edges = compute_edges(model, batches_from_tensors(few, batch_size=2), bases, layers=layers)
    names = model.node_layers
    for layer in layers:
        idx = names.index(layer)
        expected = _brute_force_edges(
            model.sections[idx], few[layer], bases[layer], bases[names[idx + 1]].C
        )
        got = edges[(layer, names[idx + 1])]
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12 * float(expected.max()))
