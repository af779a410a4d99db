"""Node- and edge-ablation numbers of method §C.1.2 and C.1.3 on the seed-0 mod-add checkpoint.

The bases and edges are built in float64 with the reference's absolute τ = 1e-15 on the train
split; ablations run in float32 on the 8939 test pairs, as the reference did.
"""

import pytest
import torch

from interaction_basis.evaluate.ablation import (
    compute_all_edges_required,
    compute_exponential_schedule,
    compute_node_ablation_scores,
    compute_unablated_score,
)
from interaction_basis.graph.edge_mass import compute_edge_mass_counts
from interaction_basis.models.modadd import build_modadd_sections

pytestmark = pytest.mark.slow

N_PAIRS = 113 * 113
EVAL_BATCH = 10_000  # one batch: accuracy does not depend on it

# method §C.1.2 "representative raw points": seed 0 LIB, test accuracy with k features kept.
NODE_POINTS = {
    "ln1.0": {17: 0.999553, 15: 0.999441, 13: 0.998210, 11: 0.966551, 9: 0.823358, 7: 0.296342},
    "ln2.0": {17: 0.999553, 15: 0.983220, 13: 0.921244, 11: 0.880524, 9: 0.553977, 7: 0.231793},
    "unembed": {17: 0.999553, 15: 0.999553, 13: 0.999553, 11: 0.999553, 9: 1.0, 7: 0.977626},
}
# method §C.1.3: seed 0, non-constant edges needed for accuracy ≥ base − 0.001.
EDGES_REQUIRED = {
    "lib": {("ln1.0", "ln2.0"): 133, ("ln2.0", "unembed"): 82, ("unembed", "output"): 633},
    "pca": {("ln1.0", "ln2.0"): 167, ("ln2.0", "unembed"): 114, ("unembed", "output"): 682},
}


@pytest.fixture(scope="module")
def seed0(reference_builds):
    ref = reference_builds(0)
    test = ref["test"]
    return {
        "model32": build_modadd_sections(ref["weights"], dtype=torch.float32),
        "train_index": ref["train"],
        "test": test,
        "inputs": ref["tokens"][test],
        "labels": ref["labels"][test],
        **{method: (ref[method][0], ref[method][2]) for method in ("lib", "pca")},
    }


def test_test_split_is_the_complement_of_the_train_split(seed0):
    test, train = seed0["test"], seed0["train_index"]
    assert len(test) == N_PAIRS - len(train) == 8939
    assert set(test.tolist()) == set(range(N_PAIRS)) - set(train.tolist())


def test_node_ablation_representative_points(seed0):
    bases, _ = seed0["lib"]
    model, inputs, labels = seed0["model32"], seed0["inputs"], seed0["labels"]
    base = compute_unablated_score(model, inputs, labels, batch_size=EVAL_BATCH)
    assert base == pytest.approx(0.999553, abs=1e-6)
    schedule = compute_exponential_schedule(129, ablate_every_vec_cutoff=10, exp_base=1.05)
    for layer, points in NODE_POINTS.items():
        assert set(points) <= set(schedule)
        scores = compute_node_ablation_scores(
            model, layer, bases[layer], inputs, labels, schedule, batch_size=EVAL_BATCH
        )
        got = {k: scores[k] for k in points}
        for k, expected in points.items():
            assert got[k] == pytest.approx(expected, abs=1e-4), (layer, got)
        assert scores[129] == base  # nothing ablated: the base score (method §F.10)


@pytest.mark.parametrize("method", ["lib", "pca"])
def test_edges_required(seed0, method):
    bases, edges = seed0[method]
    results = compute_all_edges_required(
        seed0["model32"],
        bases,
        edges,
        seed0["inputs"],
        seed0["labels"],
        metric="accuracy",
        delta=0.001,
        scaling="linear",
        batch_size=EVAL_BATCH,
    )
    for pair, expected in EDGES_REQUIRED[method].items():
        res = results[pair]
        assert res.total == 129 * (114 if pair[1] == "output" else 129)
        assert res.n_edges_required == pytest.approx(expected, rel=0.05), (method, pair)
        assert res.score >= res.base_score - 0.001
        e = edges[pair][1:, 1:]
        kept = e[res.mask[1:, 1:]]
        assert res.epsilon == float(kept.min())


def test_edge_mass_is_more_concentrated_for_lib(seed0):
    """method §C.1.3: LIB edges hold 99% / 99.9% of their mass in fewer entries than PCA."""
    for pair in EDGES_REQUIRED["lib"]:
        lib = compute_edge_mass_counts(seed0["lib"][1][pair], (0.99, 0.999))
        pca = compute_edge_mass_counts(seed0["pca"][1][pair], (0.99, 0.999))
        assert lib[0.99] < pca[0.99] and lib[0.999] < pca[0.999], (pair, lib, pca)
