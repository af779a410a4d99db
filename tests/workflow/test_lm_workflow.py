"""A language-model experiment end to end, offline: a tiny local GPT-2 and a local text corpus
go through the same download_model, download_dataset and tokenize_dataset rules as hub ids."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from explorer_pages import model_value, open_explorer
from smk_helpers import SNAKEMAKE, copy_workflow, job_counts, pythonpath_env, snakemake

from lm_fixtures import write_corpus, write_tiny_gpt2

pytestmark = pytest.mark.slow

NODE_LAYERS = [
    "ln1.0",
    "ln1_out.0",
    "attn_in.0",
    "ln2.0",
    "ln2_out.0",
    "mlp_in.0",
    "ln_final",
    "ln_final_out",
    "unembed",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    docs = write_corpus(root / "corpus" / "stories.txt")
    write_tiny_gpt2(root / "model", docs)
    config = {
        "experiments": [
            {
                "name": "lm",
                "model": {
                    "kind": "hf",
                    "hub": {"source": str(root / "model")},
                    "text": {
                        "source": str(root / "corpus"),
                        "n_ctx": 8,
                        "n_samples": 24,
                        "n_stats_samples": 48,
                        "max_documents": 40,
                        "n_eval_documents": 15,
                        "n_eval_samples": 6,
                    },
                },
                "extract": {"node_layers": NODE_LAYERS, "batch_size": 8},
                "basis": {"rotate_final": True, "sources": {"n_pos": 1}},
                "edges": {"n_sources_pos": 1},
                "evaluate": {
                    "metric": "ce_loss",
                    "edge_delta": 0.1,
                    "edge_scaling": "logarithmic",
                    "batch_size": 4,
                },
            }
        ]
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    work = root / "work"
    # A snapshot of the workflow, so that the rerun test can edit its package code.
    snakefile = copy_workflow(root / "workflow")
    cmd = [
        *SNAKEMAKE,
        "--snakefile",
        str(snakefile),
        "--configfile",
        str(root / "config.yaml"),
        "--directory",
        str(work),
    ]
    env = {**os.environ, **pythonpath_env(snakefile.parent), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*cmd, "--cores", "2"], capture_output=True, text=True, timeout=1800, env=env
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work / "results" / "lm", work, cmd, env


def test_tokens_and_activations(lm_run):
    results, *_ = lm_run
    tokens = xr.open_datatree(results / "tokens.zarr", engine="zarr", consolidated=False)
    assert tokens["fit"]["tokens"].shape == (24, 9)
    assert tokens["eval"]["tokens"].shape == (6, 9)
    # The statistics' chunks: the same permutation, so the fitting chunks come first.
    assert tokens["stats"]["tokens"].shape == (48, 9)
    np.testing.assert_array_equal(tokens["stats"]["tokens"][:24], tokens["fit"]["tokens"])
    acts = xr.open_datatree(results / "activations.zarr", engine="zarr", consolidated=False)
    assert list(acts.attrs["node_layers"]) == NODE_LAYERS
    x = acts["attn_in.0"]["activations"].values
    assert x.shape[:2] == (24, 8)
    assert acts["attn_in.0"].attrs["count"] == 48 * 8  # means and Grams over the stats chunks
    np.testing.assert_array_equal(x[..., -1], 1.0)  # the folded constant


def test_lib_basis_on_language_model(lm_run):
    results, *_ = lm_run
    basis = xr.open_datatree(results / "lib" / "basis.zarr", engine="zarr", consolidated=False)
    assert basis["ln1_out.0"].attrs["n_masked"] == 2  # constant and LayerNorm variance
    assert "M_dash" in basis["attn_in.0"]
    assert "Lambda" in basis["unembed"] or "eigenvalues" in basis["unembed"]
    edges = xr.open_datatree(results / "lib" / "edges.zarr", engine="zarr", consolidated=False)
    assert edges["ln_final_out__unembed"]["E"].dims == ("out_feature", "in_feature")
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["methods"]) == {"lib", "pca"}
    evaluation = json.loads((results / "evaluation.json").read_text())
    node = evaluation["node_ablation"]["lib"]
    assert node["metric"] == "ce_loss" and np.isfinite(node["base_score"])


def test_download_rules_ran_offline(lm_run):
    _, work, *_ = lm_run
    assert (work / "resources" / "models" / "lm" / "config.json").exists()
    assert any((work / "resources" / "datasets" / "lm").iterdir())


def test_features_and_explorer_of_a_language_model(lm_run):
    results, *_ = lm_run
    feats = xr.open_datatree(results / "lib" / "features.zarr", engine="zarr", consolidated=False)
    g = feats["attn_in.0"]
    assert g["top_window_value"].dims == ("rank", "feature", "window")
    assert g.sizes["window"] == 17  # interpret.window 8 on either side
    # The window's centre is the example itself; beyond the 8-token chunk there is nothing.
    np.testing.assert_array_equal(g["top_window_value"].values[:, :, 8], g["top_value"].values)
    assert (g["top_window_token"].values == -1).any()
    assert g["top_window_text"].shape == g["top_window_token"].shape
    # The direct effect: exact where the section to the logits is linear (the unembedding),
    # linearised at the top example's final-LayerNorm scale for the residual-stream layers.
    assert list(feats.attrs["direct_effect_layers"]) == ["unembed", "ln1.0", "ln2.0", "ln_final"]
    assert list(feats.attrs["direct_effect_linearised"]) == ["ln1.0", "ln2.0", "ln_final"]
    assert feats["unembed"]["promoted_label"].dims == ("direct_rank", "feature")
    assert (feats["ln1.0"]["direct_variance"].values > 0).all()
    assert "promoted_output" not in feats["attn_in.0"]
    # Every example's earlier occurrence of its current token (-1: none).
    prev, pos = g["top_previous_position"].values, g["top_position"].values
    assert ((prev == -1) | ((prev >= 0) & (prev < pos))).all()
    assert g["quantile_example_window_text"].dims == ("quantile", "feature", "window")


def test_example_windows_are_shaded_in_the_browser(lm_run, browser):
    """A card's example tokens take their shade from the card's stylesheet (Bokeh draws the
    card in a shadow root, where only that stylesheet applies): orange or blue by sign, the
    centre token underlined."""
    results, *_ = lm_run
    with open_explorer(browser, results / "explorer" / "index.html") as page:
        page.evaluate(
            "() => { const n = Bokeh.documents[0].get_model_by_name('nodes').data;"
            " const row = n.key.findIndex((k, i) => window.ib.cardOf(i).includes('window'));"
            " Bokeh.documents[0].get_model_by_name('card').text = window.ib.cardOf(row); }"
        )
        page.wait_for_timeout(300)
        spans = page.evaluate(
            """() => {
              const out = [];
              const visit = (root) => {
                for (const el of root.querySelectorAll('*')) {
                  if (el.shadowRoot) visit(el.shadowRoot);
                  if (/^w[pn]\\d+c?$/.test(el.className)) {
                    const s = getComputedStyle(el);
                    out.push([el.className, s.backgroundColor, s.borderBottomWidth]);
                  }
                }
              };
              visit(document);
              return out;
            }"""
        )
    assert spans, "no shaded example token in the card"
    full = [bg for cls, bg, _ in spans if cls in ("wp10", "wp10c", "wn10", "wn10c")]
    assert set(full) <= {"rgb(255, 120, 0)", "rgb(0, 120, 255)"} and full, spans
    assert all((b == "2px") == c.endswith("c") for c, _, b in spans), spans


def test_language_model_card_plots_wrap_and_direct_effects_in_the_browser(lm_run, browser):
    """An LM card opened from the address: its histogram, its token windows wrapped inside the
    card (no example line wider than the card), and for a residual-stream layer the
    linearised direct effect through the final LayerNorm, promoted and suppressed apart."""
    results, *_ = lm_run
    url = (results / "explorer" / "index.html").as_uri() + "#m=lib&sel=ln1.0:1"
    with open_explorer(browser, results / "explorer" / "index.html", url=url) as page:
        card = model_value(page, "card", "m.text")
        assert "LIB · ln1.0 · feature 1" in card
        assert "histogram (held-out" in card and "<svg class='plot'" in card
        assert "final LayerNorm with its scale frozen" in card
        assert "class='up'>promotes" in card and "class='down'>suppresses" in card
        assert "examples across the quantiles" in card
        widths = page.evaluate(
            """() => {
              const out = [];
              const visit = (root) => {
                for (const el of root.querySelectorAll('*')) {
                  if (el.shadowRoot) visit(el.shadowRoot);
                  if (el.classList && el.classList.contains('examples')) {
                    out.push([el.scrollWidth, el.clientWidth]);
                  }
                }
              };
              visit(document);
              return out;
            }"""
        )
    assert widths and all(sw <= cw + 1 for sw, cw in widths), widths


def _dry_run(lm_run, *args: str) -> dict[str, int]:
    _, _, cmd, env = lm_run
    proc = subprocess.run([*cmd, "-n", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return job_counts(proc.stdout)


def test_editing_the_language_model_code_reruns_its_stages_only(lm_run):
    """models/hf.py is the LM kind's code (the mod-add run plans nothing for it, see
    test_reruns): every stage that runs the model reruns, from extraction on, and nothing
    before it (downloads, tokens)."""
    _, _, cmd, _ = lm_run
    hf_py = Path(cmd[cmd.index("--snakefile") + 1]).parent / "src/interaction_basis/models/hf.py"
    original, st = hf_py.read_bytes(), hf_py.stat()
    try:
        hf_py.write_bytes(original + b"\n# an edit that the code inputs must notice\n")
        counts = _dry_run(lm_run)
    finally:
        hf_py.write_bytes(original)
        os.utime(hf_py, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert counts == _dry_run(lm_run, "--forcerun", "extract_activations"), counts
    assert not {"download_model", "download_dataset", "tokenize_dataset"} & set(counts), counts


def test_toy_lm_trains_through_its_rule_and_feeds_an_experiment(tmp_path):
    """The train_toy_lm rule end to end (its stage was only called directly before, and a
    params/wildcard name clash broke the rule itself), then the experiment that reads the saved
    folder and corpus, without retraining, through attribute_heads."""
    config = {
        "toy_lms": [
            {
                "name": "tiny",
                "corpus": {
                    "n_words": 8,
                    "n_documents": 60,
                    "n_held_out": 6,
                    "length": 10,
                    "span_min": 3,
                    "span_max": 4,
                },
                "model": {"d_model": 16, "d_mlp": 32, "n_head": 2, "n_ctx": 16},
                # Any accuracy ends training at the first evaluation: this tests the plumbing.
                "train": {"max_steps": 20, "eval_every": 10, "target_accuracy": 1e-9},
            }
        ],
        "experiments": [
            {
                "name": "toy",
                "model": {
                    "kind": "hf",
                    "hub": {"source": "results/toy_lms/tiny/model", "revision": None},
                    "text": {
                        "source": "results/toy_lms/tiny/corpus.txt",
                        "revision": None,
                        "n_ctx": 16,
                        "n_samples": 8,
                        "n_eval_documents": 6,
                        "n_eval_samples": 4,
                    },
                },
                "extract": {"node_layers": ["resid_pre.0", "resid_mid.0", "resid_post.1"]},
                "evaluate": {"metric": "ce_loss", "batch_size": 4},
            }
        ],
    }
    snakefile = copy_workflow(tmp_path / "workflow")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    args = [
        "--snakefile",
        str(snakefile),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--directory",
        str(work),
    ]
    env = pythonpath_env(snakefile.parent)
    snakemake(*args, "--cores", "2", "results/toy_lms/tiny/metrics.json", cwd=tmp_path, env=env)
    toy = work / "results" / "toy_lms" / "tiny"
    metrics = json.loads((toy / "metrics.json").read_text())
    assert metrics["steps"] == 10 and metrics["vocab_size"] == 10  # 8 words, EOS, UNK
    assert (toy / "model" / "config.json").is_file()
    assert (toy / "corpus.txt").read_text().count("\n\n") == 65  # 66 documents
    planned = job_counts(snakemake(*args, "-n", cwd=tmp_path, env=env).stdout)
    assert "train_toy_lm" not in planned
    assert planned["download_model"] == 1 and planned["attribute_heads"] == 1
    snakemake(*args, "--cores", "2", cwd=tmp_path, env=env, timeout=900)
    heads = json.loads((work / "results" / "toy" / "heads.json").read_text())
    assert sorted(heads["heads"]) == ["L0.H0", "L0.H1", "L1.H0", "L1.H1"]
    assert set(heads["methods"]) == {"lib", "pca"}
    assert "Previous-token head" in (work / "results" / "toy" / "heads.md").read_text()
