"""The paper's language-model configs end to end (issue 26): ``config/tinystories.yaml`` and
``config/gpt2.yaml`` as they are (node layers, float64, truncation, sources, methods, edge
ablation), on random-weight models of the real shapes, offline.

Overridden, and only these:

- the model source: a local ``save_pretrained`` folder of the real shape (TinyStories-1M's
  GPT-Neo: 8 layers, d_model 64, 16 heads, global and local attention, vocabulary 50257;
  GPT-2 small: 12 layers, d_model 768, 12 heads, vocabulary 50257), random weights, biases and
  LayerNorm affines from ``lm_fixtures.randomise_lm``, and a tiny BPE tokenizer trained on the
  corpus (the published ones are downloads);
- the text source: a local corpus in the config's ``txt_separator`` format, with
  ``max_documents`` cut to its size (the held-out documents follow the fitting ones);
- ``n_samples`` and ``n_stats_samples`` 2, the held-out chunks 1, ``extract.device: cpu``;
- the node ablation's schedule: two kept counts per layer (``linear``, ``n_points`` 2) instead
  of the exponential one (TinyStories with it: 20 s a layer and method on two shared cores,
  35 minutes of node ablation per run);
- GPT-2 only: ``n_ctx`` 32 instead of 1024, since its 12 blocks at 1024 tokens take hours on
  two CPU cores; the closed forms' choice does not depend on the context (they chunk within
  the memory budget). TinyStories keeps its 200 tokens a chunk.

The suite runs TinyStories end to end (15.5 minutes on two cores) and GPT-2 to its modules
(9 minutes), without the ablations (``evaluate.enabled: false``) and without the feature
evidence and the explorer (``interpret.enabled: false``), which take GPT-2 to about 90 minutes:
the bisect edge ablation evaluates a section once per distinct kept-input set, about one per
output feature and step, for each of its 74 layer pairs (21 and 33 minutes for LIB and PCA),
and its explorer has about 102,000 cards (6 minutes). ``IB_PAPER_CONFIGS=1`` adds GPT-2 end to
end.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml
from smk_helpers import REPO, SNAKEMAKE, copy_workflow, pythonpath_env, run

from lm_fixtures import EOS, randomise_lm, tiny_tokenizer, write_corpus

pytestmark = pytest.mark.slow

#: What each run changes in its config (everything else is the config's own).
N_CTX = {"tinystories": None, "gpt2": 32}  # None: the config's own context


def _hf_config(name: str, eos: int):
    """The published model's transformers config (TinyStories-1M's config.json; GPT-2 small)."""
    from transformers import GPT2Config, GPTNeoConfig

    if name == "tinystories":
        return GPTNeoConfig(
            vocab_size=50257, max_position_embeddings=2048, hidden_size=64, num_layers=8,
            num_heads=16, attention_types=[[["global", "local"], 4]], window_size=256,
            intermediate_size=None, activation_function="gelu_new", bos_token_id=eos,
            eos_token_id=eos,
        )  # fmt: skip
    return GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
        activation_function="gelu_new", bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip


def _write_model(folder: Path, name: str, texts: list[str]) -> None:
    """A random-weight model of the real shape and a tiny BPE tokenizer, saved as a hub model
    folder. The tokenizer covers the first few hundred ids of the 50257-token vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer(texts)
    torch.manual_seed(0)
    config = _hf_config(name, tok.convert_tokens_to_ids(EOS))
    randomise_lm(AutoModelForCausalLM.from_config(config), seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)


def _config(name: str, root: Path, evaluate: bool, interpret: bool) -> Path:
    """The project's config with the overrides of the module docstring, and its corpus."""
    cfg = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    exp = cfg["experiments"][0]
    text = exp["model"]["text"]
    # As many fitting documents as held-out ones, in the config's own .txt format; the
    # held-out ones come after max_documents, so it shrinks with the corpus.
    n_held_out = text["n_eval_documents"]
    docs = write_corpus(root / "corpus" / "docs.txt", n_documents=2 * n_held_out)
    sep = text["txt_separator"]
    (root / "corpus" / "docs.txt").write_text((f"\n{sep}\n" if sep else "\n\n").join(docs) + "\n")
    _write_model(root / "model", name, docs)
    exp["model"]["hub"]["source"] = str(root / "model")
    text.update(source=str(root / "corpus"), max_documents=n_held_out)
    text.update(n_samples=2, n_stats_samples=2, n_eval_samples=1)
    if N_CTX[name] is not None:
        text["n_ctx"] = N_CTX[name]
    exp["extract"]["device"] = "cpu"
    # Two kept counts per layer instead of the exponential schedule's ~50-110: one forward pass
    # from the layer through the 50257-word unembedding each, per layer and method.
    exp["evaluate"].update(node_schedule="linear", n_points=2, enabled=evaluate)
    exp.setdefault("interpret", {})["enabled"] = interpret
    return _write(root / "config.yaml", cfg)


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _all_targets(dry_run: str) -> list[str]:
    """The inputs of the ``all`` job of a dry run (every result of the workflow)."""
    match = re.search(r"^(?:local)?rule all:\n\s+input: (.*)$", dry_run, re.M)
    assert match, f"no 'all' job in the dry run:\n{dry_run[-4000:]}"
    return [p.strip() for p in match.group(1).split(",") if p.strip()]


def _closed_form_paths(workflow: Path, model: Path, exp: dict) -> dict[str, str]:
    """Per section (by input node layer), the path that ``lib.jacobians`` dispatches M′ and
    the edges to with the config's sources: the section's closed-form class, or "generic".
    The stages log no path, so the sections are built as the stages build them (the workflow
    snapshot's package, the downloaded model, the config's node layers and dtype) and put to
    the dispatch rule itself, which depends on the section and the kind of sources only."""
    code = """
import json, sys
from interaction_basis.config import validate_config
from interaction_basis.kinds import network
from interaction_basis.lib.jacobians import Sources, _closed_form
e = validate_config(json.loads(sys.argv[1])).experiments[0]
net = network.load_model(e.model, sys.argv[2], list(e.extract.node_layers), e.extract.dtype)
kinds = {"m_dash": Sources(e.basis.sources.n_pos, e.basis.sources.n_hidden),
          "edges": Sources(e.edges.n_sources_pos)}
out = {}
for layer, section in zip(net.node_layers[:-1], net.sections):
    for phase, sources in kinds.items():
        closed = _closed_form(section, None, sources)
        out[f"{layer} {phase}"] = "generic" if closed is None else type(closed).__name__
print(json.dumps(out))
"""
    args = [sys.executable, "-c", code, json.dumps({"experiments": [exp]}), str(model)]
    result = run(args, cwd=workflow, env=pythonpath_env(workflow), timeout=600)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tinystories_config_runs_end_to_end(tmp_path):
    _run_config("tinystories", tmp_path, evaluate=True, interpret=True)


def test_gpt2_config_runs_to_modules(tmp_path):
    _run_config("gpt2", tmp_path, evaluate=False, interpret=False)


@pytest.mark.skipif(
    os.environ.get("IB_PAPER_CONFIGS") != "1",
    reason="90 minutes on two cores (the edge ablation of 74 layer pairs): IB_PAPER_CONFIGS=1",
)
def test_gpt2_config_runs_end_to_end(tmp_path):
    _run_config("gpt2", tmp_path, evaluate=True, interpret=True)


def _run_config(name: str, tmp_path: Path, *, evaluate: bool, interpret: bool) -> None:
    configfile = _config(name, tmp_path, evaluate, interpret)
    exp = yaml.safe_load(configfile.read_text())["experiments"][0]
    snakefile = copy_workflow(tmp_path / "workflow")
    work = tmp_path / "work"
    args = ["--snakefile", str(snakefile), "--configfile", str(configfile)]
    args += ["--directory", str(work)]
    env = {**pythonpath_env(snakefile.parent), "HF_HUB_OFFLINE": "1"}
    plan = run([*SNAKEMAKE, *args, "-n"], cwd=tmp_path, env=env).stdout
    targets = _all_targets(plan)
    assert targets, plan[-4000:]
    # GPT-2's model jobs hold 5-10 GB each: one at a time, so that the run fits 24 GB.
    cores = "1" if name == "gpt2" else "2"
    run([*SNAKEMAKE, *args, "--cores", cores], cwd=tmp_path, env=env, timeout=3 * 3600)

    assert not [t for t in targets if not (work / t).exists()]
    results = work / "results" / name
    node_layers = exp["extract"]["node_layers"]
    for method in exp["basis"]["methods"]:
        basis = xr.open_datatree(results / method / "basis.zarr", engine="zarr", consolidated=False)
        assert sorted(basis.children) == sorted(node_layers), method
        edges = xr.open_datatree(results / method / "edges.zarr", engine="zarr", consolidated=False)
        pairs = [f"{a}__{b}" for a, b in zip(node_layers, node_layers[1:])]
        assert sorted(edges.children) == sorted(pairs), method

    paths = _closed_form_paths(snakefile.parent, work / "resources" / "models" / name, exp)
    assert len(paths) == 2 * (len(node_layers) - 1)
    assert not [k for k, v in paths.items() if v == "generic"], paths
