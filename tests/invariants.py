"""The four invariants of lib_spec A.9, as reusable assertions."""

import torch

from interaction_basis.linalg import compute_centering_matrices


def assert_uncorrelated(basis, stats, rtol=1e-9):
    """Invariant 1: ``C^T G_raw C = diag(Λ)`` with ``G_raw`` the uncentred second moment."""
    _, y_inv = compute_centering_matrices(stats.mean)
    g_raw = y_inv.T @ stats.gram @ y_inv
    moments = basis.C.T @ g_raw @ basis.C
    lam = basis.importance
    torch.testing.assert_close(moments.diagonal(), lam, rtol=rtol, atol=rtol * lam.max())
    off = moments - torch.diag(moments.diagonal())
    assert off.abs().max() <= rtol * lam.max()


def assert_constant_node(basis, acts, stats, rtol=1e-9):
    """Invariant 2: ``f̂_0 = ⟨μ̃ + e_last, C[:,0]⟩ = ±√Λ_0`` on every sample."""
    sqrt_lam0 = basis.importance[0].sqrt()
    f0 = acts.to(torch.float64) @ basis.C[:, 0]
    torch.testing.assert_close(f0.abs(), torch.full_like(f0, float(sqrt_lam0)), rtol=rtol, atol=0)
    shifted = stats.mean.clone()
    torch.testing.assert_close((shifted @ basis.C[:, 0]).abs(), sqrt_lam0, rtol=rtol, atol=0)


def assert_whitened_gradients(basis, m_dash, atol=1e-9, min_relative_lambda=0.0):
    """Invariant 3: ``C⁺ M′ C⁺ᵀ = I`` outside the masked (constant, variance) rows.

    ``min_relative_lambda`` restricts the check to features with ``Λ > t · max Λ``: at the
    reference's absolute τ = 1e-15, noise features (Λ ~ 1e-14) are divided by √Λ in ``C⁺``.
    """
    m = basis.C_pinv @ m_dash @ basis.C_pinv.T
    n = basis.n_masked
    lam = basis.importance
    keep = int((lam[n:] > min_relative_lambda * lam.max()).sum())
    block = m[n : n + keep, n : n + keep]
    torch.testing.assert_close(block, torch.eye(len(block), dtype=block.dtype), rtol=0, atol=atol)


def assert_final_linear_edges(edges, basis_in, logits, rtol=1e-8):
    """Invariant 4: column sums of E are Λ, and ``ΣE = E‖logits‖²`` whatever the basis."""
    lam = basis_in.importance
    torch.testing.assert_close(edges.sum(0), lam, rtol=rtol, atol=rtol * float(lam.max()))
    total = logits.to(torch.float64).square().sum(-1).mean()
    torch.testing.assert_close(edges.sum(), total, rtol=rtol, atol=0)
