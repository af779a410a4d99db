"""The formulas behind a language model's job requests and disk plan (resources.py), and the
planning seams that read the model's shape and the free disk space (planning.py)."""

import json
import shutil
from collections import namedtuple

import pytest
import torch

from interaction_basis import planning
from interaction_basis import resources as r
from interaction_basis.config import ModelConfig
from interaction_basis.kinds import network
from lm_fixtures import write_corpus, write_tiny_gpt2

# openai-community/gpt2's config.json (the keys the formulas read).
GPT2 = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_inner": None, "vocab_size": 50257}
GPT2_SHAPE = r.shape_from_config(GPT2)


def _plan(shape=GPT2_SHAPE, **kw) -> r.Plan:
    settings = dict(
        shape=shape,
        node_layers=tuple(r.default_node_layers(shape)),
        dtype="float64",
        batch_size=3,
        n_ctx=1024,
        n_samples=500,
        n_stats_samples=50000,
        n_shards=1,
        store_activations=True,
        lib=True,
        n_methods=2,
        m_dash_pos=1,
        edges_pos=1,
    )
    return r.Plan(**{**settings, **kw})


def test_gpt2_activations_match_the_measured_size():
    """Measured on GPT-2 small (config/gpt2.yaml): 0.62 GB per 1024-token chunk of
    activations, about 312 GB for the 500 chunks."""
    plan = _plan()
    assert len(plan.node_layers) == 75
    per_chunk = plan.n_ctx * sum(plan.widths) * 8
    assert per_chunk == pytest.approx(0.62e9, rel=0.01)
    sizes = r.store_sizes(plan)
    assert sizes["activations"] == pytest.approx(312e9, rel=0.01)
    assert sizes["bases"] < 5e9 and sizes["edges"] < 2e9


def test_without_stored_activations_only_the_statistics_take_disk():
    stored, recomputed = r.store_sizes(_plan()), r.store_sizes(_plan(store_activations=False))
    assert recomputed["activations"] < 1e9 < stored["activations"]
    assert recomputed["bases"] == stored["bases"] and recomputed["edges"] == stored["edges"]


def test_shards_add_their_sums():
    one, four = r.store_sizes(_plan()), r.store_sizes(_plan(n_shards=4))
    for store in ("activations", "bases", "edges"):
        assert four[store] > one[store]
    assert r.store_sizes(_plan(n_shards=8))["edges"] > four["edges"]


def test_node_layer_widths_are_those_of_the_built_model(tmp_path):
    model_dir = write_tiny_gpt2(tmp_path / "model", write_corpus(tmp_path / "c.txt"), n_layer=2)
    shape = planning.read_model_shape([tmp_path / "nowhere", model_dir], "x", None)[0]
    cfg = ModelConfig.model_validate({"kind": "hf", "hub": {"source": str(model_dir)}})
    layers = [*r.default_node_layers(shape), "output"]
    net = network.load_model(cfg, str(model_dir), layers, "float64")
    with torch.no_grad():
        acts = net.activations(torch.zeros(1, 4, dtype=torch.long))
    assert {k: v.shape[-1] for k, v in acts.items()} == {
        n: r.node_layer_width(n, shape) for n in layers
    }
    weights = network.get("hf").load_weights(cfg, str(model_dir))
    assert r.default_node_layers(shape) == network.get("hf").default_node_layers(cfg, weights)


def test_parallel_residual_widths():
    shape = r.shape_from_config(
        {
            "num_hidden_layers": 2,
            "hidden_size": 8,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": 50,
            "use_parallel_residual": True,
        }
    )
    assert shape.d_mlp == 32 and shape.parallel
    widths = {n: r.node_layer_width(n, shape) for n in ("ln2.0", "ln2_out.0", "mlp_in.0")}
    assert widths == {"ln2.0": 18, "ln2_out.0": 19, "mlp_in.0": 18}


def test_a_config_without_a_size_is_refused():
    with pytest.raises(ValueError, match="n_layers"):
        r.shape_from_config({"n_embd": 8, "n_head": 2, "vocab_size": 10})


def test_memory_grows_with_the_batch_and_holds_the_weights():
    small, big = _plan(batch_size=1), _plan(batch_size=8)
    for stage in ("extract", "m_dash", "edges"):
        assert r.stage_memory_bytes(big, stage) > r.stage_memory_bytes(small, stage)
        assert r.stage_memory_bytes(small, stage) > r.weights_bytes(small)
    # GPT-2 small loaded in float64: 4.6 GiB measured
    assert r.weights_bytes(_plan()) / 2**30 == pytest.approx(4.6, rel=0.1)


def test_the_working_memory_is_a_share_of_the_job_or_the_set_budget():
    plan = _plan()
    fixed_part = r.stage_memory_bytes(_plan(memory_budget_mb=1), "edges") - 2**20
    shared = r.stage_memory_bytes(plan, "edges")
    assert shared == pytest.approx(fixed_part / (1 - r.BUDGET_SHARE), rel=1e-6)
    budget = r.stage_memory_bytes(_plan(memory_budget_mb=8000), "edges")
    assert budget == pytest.approx(fixed_part + 8000 * 2**20, rel=1e-6)


# GFLOP per 1024-token sample of M′ / the edges of GPT-2 small's sections at its real shape
# (benchmarks/bench_lm_shapes.py --plan, matrix products on fake tensors, one sample a call):
# block 0's LayerNormIn twice, LayerNormOut twice, CausalAttention, ResidualMLP; the head's.
GPT2_BLOCK = ((2.12, 4.55), (2.12, 4.55), (7.90, 10.9), (7.90, 10.9), (4214, 1575), (75.6, 53.9))
GPT2_HEAD = ((2.12, 4.55), (3.95, 6.68))


def test_runtime_follows_the_closed_forms_cost_and_the_rate():
    plan = _plan()
    for phase, stage in enumerate(("m_dash", "edges")):
        counted = 12 * sum(s[phase] for s in GPT2_BLOCK) + sum(s[phase] for s in GPT2_HEAD)
        # three samples a call here share the fixed products; attention carries 98 %
        assert r.stage_flops_per_sample(plan, stage) == pytest.approx(counted * 1e9, rel=0.03)
    edges = r.stage_flops_per_sample(plan, "edges")
    forward = r.stage_flops_per_sample(plan, "extract")
    # Without stored activations every pair recomputes its input layer: 36.5 forward passes
    # over the 74 pairs, half the edges' own cost since the closed forms' shared signs.
    recompute = r.stage_flops_per_sample(_plan(store_activations=False), "edges") - edges
    assert recompute == pytest.approx(36.5 * forward, rel=0.01)  # (a larger job: larger chunks)
    assert 0.3 * edges < recompute < edges
    per_layer = [r.stage_flops_per_sample(plan, "m_dash", n) for n in plan.node_layers[:-1]]
    assert sum(per_layer) == pytest.approx(r.stage_flops_per_sample(plan, "m_dash"))
    gpu = r.runtime_minutes(edges * 500, gpu=True, threads=2)
    cpu = r.runtime_minutes(edges * 500, gpu=False, threads=2)
    assert cpu > 100 * gpu
    expected = r.RUNTIME_MARGIN * edges * 500 / r.GPU_FLOPS / 60 + r.STARTUP_MINUTES
    assert gpu == pytest.approx(expected, abs=1)
    assert r.runtime_minutes(1.0, gpu=True, threads=1) == r.MIN_RUNTIME_MINUTES


def test_pairs_outside_the_layernorm_split_set_take_the_generic_formula():
    """A pair with no closed form (the node layers skip a section) is costed as the generic
    path: one backward pass per output direction and position, far above the closed forms."""
    plan = _plan(node_layers=("ln1.0", "ln2.0"), n_methods=1)
    assert r.pair_section(plan, 0, "edges") is None
    generic = r.stage_flops_per_sample(plan, "edges")
    closed = r.stage_flops_per_sample(_plan(), "edges") / 12
    assert generic > 10 * closed


def test_model_shape_from_the_hub_cache(tmp_path, monkeypatch):
    """A hub model that is not downloaded yet but is in the hub cache: its config.json there."""
    import huggingface_hub

    cached = tmp_path / "config.json"
    cached.write_text(json.dumps(GPT2))
    asked = []

    def from_cache(repo, filename, revision=None):
        asked.append((repo, filename, revision))
        return str(cached)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", from_cache)
    shape, path = planning.read_model_shape([tmp_path / "absent"], "openai-community/gpt2", "abc")
    assert shape == GPT2_SHAPE and path == cached
    assert asked == [("openai-community/gpt2", "config.json", "abc")]
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert planning.read_model_shape([], "openai-community/gpt2", None) is None
    assert planning.read_model_shape([], str(tmp_path / "local"), None) is None  # no lookup


Usage = namedtuple("Usage", "total used free")


def test_the_disk_check_refuses_a_run_that_does_not_fit(tmp_path, monkeypatch):
    """A small filesystem, by monkeypatching shutil.disk_usage at the planning seam (a tmpfs
    would need root)."""
    needed = {"gpt2": {"activations": 313 * 10**9, "bases": 3 * 10**9, "edges": 0}}
    hint = "extract.store_activations: false (gpt2)"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**12, 100 * 10**9))
    with pytest.raises(OSError) as err:
        planning.check_disk(needed, tmp_path / "results", [hint])
    message = str(err.value)
    assert "316 GB" in message and "100 GB free" in message and str(tmp_path) in message
    assert "activations 313 GB" in message and hint in message
    assert "resources.check_disk: false" in message and "Nothing was run" in message
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 0, 400 * 10**9))
    planning.check_disk(needed, tmp_path / "results", [hint])  # fits


def test_free_space_is_that_of_the_nearest_existing_folder(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: seen.append(p) or Usage(1, 0, 1))
    assert planning.free_bytes(tmp_path / "results" / "deeper") == (1, tmp_path)
    assert seen == [tmp_path]
