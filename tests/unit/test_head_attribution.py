"""Head scores and feature writers (interpret/heads.py) on a tiny random GPT-2."""

import numpy as np
import torch

from interaction_basis.config import ToyGPT2Config
from interaction_basis.interpret.heads import (
    attribute_features,
    feature_shares,
    head_roles,
    head_scores,
    run_with_writes,
    writes_into,
)
from interaction_basis.lib.records import Basis
from interaction_basis.models.toy_gpt2 import build_toy_gpt2
from lm_fixtures import randomise_lm


def _model():
    torch.manual_seed(0)
    model = build_toy_gpt2(ToyGPT2Config(d_model=16, d_mlp=32, n_head=2, n_ctx=12), 20, 0)
    model = randomise_lm(model, seed=1).double().eval()
    model.set_attn_implementation("eager")
    return model


def test_the_writes_add_up_to_the_residual_stream():
    """embed + heads + MLPs (+ constant biases) is the residual, after centring over d_model."""
    model = _model()
    tokens = torch.randint(20, (3, 12), generator=torch.Generator().manual_seed(0))
    writes, patterns = run_with_writes(model, tokens)
    with torch.no_grad():
        hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states
    for layer in (0, 1):  # resid_pre.0, resid_pre.1 (HF's last hidden state is after ln_f)
        names = writes_into(f"resid_pre.{layer}", list(writes))
        total = sum(writes[n] for n in names)
        resid = hidden[layer] - hidden[layer].mean(-1, keepdim=True)
        diff = resid - total  # the biases: the same vector at every row
        torch.testing.assert_close(diff, diff[:1, :1].expand_as(diff), rtol=0, atol=1e-12)
    assert len(patterns) == 2 and patterns[0].shape == (3, 2, 12, 12)


def test_writers_of_each_layer():
    names = ["embed", "L0.H0", "L0.H1", "L0.mlp", "L1.H0", "L1.H1", "L1.mlp"]
    assert writes_into("resid_pre.0", names) == ["embed"]
    assert writes_into("resid_mid.0", names) == ["embed", "L0.H0", "L0.H1"]
    assert writes_into("resid_pre.1", names) == names[:4]
    assert writes_into("resid_mid.1", names) == names[:6]
    assert writes_into("resid_post.1", names) == names


def test_shares_sum_to_one_and_find_the_only_writer():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 4, generator=gen), torch.randn(500, 4, generator=gen)
    b[:, 0] = 0  # feature 1 (the first non-constant) is written by `a` alone
    c = torch.eye(5, dtype=torch.float64)  # constant row last, feature 0 the constant
    c = torch.cat([c[:, 4:], c[:, :4]], dim=1)
    basis = Basis(c, c.T, torch.ones(5), n_masked=1)
    shares = feature_shares({"a": a.double(), "b": b.double()}, basis)
    np.testing.assert_allclose(shares.sum(0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(shares[:, 0], [1.0, 0.0], atol=1e-12)


def test_head_scores_of_ideal_patterns():
    tokens = torch.tensor([[5, 1, 2, 3, 4, 1, 2, 3, 4]])
    n = tokens.shape[1]
    prev = torch.zeros(1, 1, n, n)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, n), torch.arange(n - 1)] = 1
    induction = torch.zeros(1, 1, n, n)
    for t in range(n):  # attend to the token after the earlier occurrence, else to itself
        earlier = [s for s in range(t - 1) if tokens[0, s] == tokens[0, t]]
        induction[0, 0, t, earlier[0] + 1 if earlier else t] = 1
    two_after = torch.zeros(1, 1, n, n)  # the s + 2 form: two after the earlier occurrence
    for t in range(n):
        earlier = [s for s in range(t - 2) if tokens[0, s] == tokens[0, t]]
        two_after[0, 0, t, earlier[0] + 2 if earlier else t] = 1
    layer0 = torch.cat([prev, torch.eye(n)[None, None]], dim=1)  # H1 attends to itself
    scores = head_scores([layer0, torch.cat([induction, two_after], dim=1)], tokens)
    assert scores["L0.H0"]["previous_token"] == 1.0
    assert scores["L1.H0"]["induction"] == 1.0 and scores["L1.H1"]["induction_2"] == 1.0
    assert scores["L1.H0"]["induction_2"] < 0.5 and scores["L1.H1"]["induction"] < 0.5
    assert scores["L1.H0"]["previous_token"] < 0.5 and scores["L0.H0"]["induction"] < 0.5


def test_head_roles_need_a_previous_token_head_in_an_earlier_layer():
    def score(prev=0.0, ind=0.0, ind2=0.0):
        return {"previous_token": prev, "induction": ind, "induction_2": ind2}

    scores = {
        "L0.H0": score(prev=0.99),
        "L0.H1": score(prev=0.6, ind2=0.9),  # copies, but no previous-token head before it
        "L1.H0": score(ind2=0.7),
        "L1.H1": score(ind=0.55),
        "L1.H2": score(ind=0.3, ind2=0.45),
    }
    roles = head_roles(scores)
    assert roles["previous_token_heads"] == ["L0.H0", "L0.H1"]
    assert roles["induction_heads"] == ["L1.H0", "L1.H1"]
    assert roles["best_previous_token_head"] == "L0.H0"
    assert roles["best_induction_head"] == "L1.H0"
    none = head_roles({"L0.H0": score(prev=0.2), "L1.H0": score(ind=0.9)})
    assert none["previous_token_heads"] == [] and none["induction_heads"] == []


def test_attribute_features_reports_every_residual_layer():
    model = _model()
    tokens = torch.randint(20, (4, 12), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    c = torch.randn(17, 6, generator=gen, dtype=torch.float64)
    basis = Basis(c, torch.linalg.pinv(c), torch.ones(6), n_masked=1)
    result = attribute_features(model, tokens, {"lib": {"resid_mid.1": basis, "ln_final": basis}})
    assert set(result["methods"]["lib"]) == {"resid_mid.1"}
    feats = result["methods"]["lib"]["resid_mid.1"]["features"]
    assert [f["feature"] for f in feats] == [1, 2, 3, 4, 5]
    best_prev, best_ind = result["best_previous_token_head"], result["best_induction_head"]
    assert int(best_ind[1]) > int(best_prev[1]) or best_prev.startswith("L1.")
    # A random model has neither role: the threshold keeps the best heads from being named.
    assert result["previous_token_heads"] == [] and result["induction_heads"] == []
    assert all(not e["induction_features"] for e in result["methods"]["lib"].values())
