"""The batched M′, Λ, C and edges against a plain per-output-coordinate autograd loop."""

import pytest
import torch

from factories import full_build, tiny_mlp, tiny_modadd
from interaction_basis.lib.basis import Truncation, compute_lib_basis
from interaction_basis.lib.jacobians import Integration

RULES = [
    Integration("gradient", 0),
    Integration("trapezoidal", 0),
    Integration("trapezoidal", 3),
    Integration("gauss-legendre", 2),
]


def _loop_m_dash(section, acts, c_out, integration):
    """``M′`` with one autograd call per (sample, output position, output dim)."""
    alphas, weights = integration.points()
    n, p_in, d = acts.shape
    m = torch.zeros(d, d, dtype=torch.float64)
    for x in acts:
        rows = None
        for alpha, w in zip(alphas, weights):
            g = (x * alpha).unsqueeze(0).requires_grad_(True)
            out = section(g)
            out = out if c_out is None else out @ c_out
            grads = []
            for t in range(out.shape[1]):
                for i in range(out.shape[2]):
                    (grad,) = torch.autograd.grad(out[0, t, i], g, retain_graph=True)
                    grads.append(grad[0])
            part = torch.stack(grads) * w  # (t*i, p_in, d)
            rows = part if rows is None else rows + part
        for s in range(p_in):
            m += rows[:, s].T @ rows[:, s]
    return m / (n * p_in)


def _loop_edges(section, acts, c_in, c_in_pinv, c_out, integration):
    alphas, weights = integration.points()
    n, p_in, _ = acts.shape
    e = None
    for x in acts:
        f_hat = x @ c_in
        a = None
        for alpha, w in zip(alphas, weights):
            g = (f_hat * alpha).unsqueeze(0).requires_grad_(True)
            out = section(g @ c_in_pinv)
            out = out if c_out is None else out @ c_out
            rows = torch.zeros(out.shape[1], out.shape[2], f_hat.shape[1], dtype=torch.float64)
            for t in range(out.shape[1]):
                for i in range(out.shape[2]):
                    (grad,) = torch.autograd.grad(out[0, t, i], g, retain_graph=True)
                    rows[t, i] = (grad[0] * f_hat).sum(0)
            a = rows * w if a is None else a + rows * w
        contrib = a.square().sum(0)
        e = contrib if e is None else e + contrib
    return e / (n * p_in)


def _align_signs(c, ref):
    signs = torch.sign((c * ref).sum(0))
    return c * signs


@pytest.mark.parametrize("integration", RULES, ids=lambda r: f"{r.method}-{r.n_intervals}")
@pytest.mark.parametrize("factory", [tiny_mlp, tiny_modadd], ids=["mlp", "transformer"])
def test_batched_build_matches_autograd_loop(factory, integration):
    model, inputs = factory()
    acts, stats, bases, m_dash, edges = full_build(
        model, inputs, "lib", integration=integration, batch_size=7
    )
    layers = model.node_layers
    for idx in reversed(range(len(layers) - 1)):
        layer, nxt = layers[idx], layers[idx + 1]
        c_next = None if nxt == layers[-1] else bases[nxt].C
        oracle_m = _loop_m_dash(model.sections[idx], acts[layer], c_next, integration)
        scale = oracle_m.abs().max()
        assert (m_dash[layer] - oracle_m).abs().max() <= 1e-10 * scale, layer

        s = stats[layer]
        oracle_basis = compute_lib_basis(
            s.gram,
            s.mean,
            oracle_m,
            truncation=Truncation(1e-10, relative=True),
            center=s.traits.constant,
        )
        lam = bases[layer].importance
        torch.testing.assert_close(lam, oracle_basis.importance, rtol=1e-10, atol=0)
        c_ref = _align_signs(oracle_basis.C, bases[layer].C)
        torch.testing.assert_close(bases[layer].C, c_ref, rtol=1e-8, atol=1e-10 * c_ref.abs().max())

        c_out = None if nxt == layers[-1] else bases[nxt].C
        oracle_e = _loop_edges(
            model.sections[idx],
            acts[layer],
            bases[layer].C,
            bases[layer].C_pinv,
            c_out,
            integration,
        )
        e = edges[(layer, nxt)]
        assert e.shape == oracle_e.shape
        assert (e - oracle_e).abs().max() <= 1e-10 * oracle_e.abs().max(), (layer, nxt)


def test_integration_weights_sum_to_one():
    for rule in RULES:
        alphas, weights = rule.points()
        assert abs(sum(weights) - 1) < 1e-12
        assert all(0 < a <= 1 for a in alphas)
    with pytest.raises(ValueError, match="n_intervals = 0"):
        Integration("gradient", 2).points()
