"""The four invariants of method §A.9, as reusable assertions.

Tolerances come from the conditioning, not from the CPU a test was written on: BLAS code paths
(AVX2 vs AVX-512) and thread counts change the last bits, and small Λ or Gram eigenvalues amplify
them. Each check bounds the error of entry ``(i, j)`` by ``γ = d · eps`` (the rounding bound of a
length-``d`` dot product, ``d`` the original dimension) times the scale that entry's error
scales with, and states the measured error in units of that scale.
"""

import torch

from interaction_basis.lib.linalg import compute_centering_matrices

EPS = torch.finfo(torch.float64).eps


def _check(err, tol, what: str) -> None:
    """``err ≤ tol`` entrywise; on failure, say where and by how much."""
    ratio = err / tol
    worst = int(ratio.argmax())
    assert float(ratio.max()) <= 1.0, (
        f"{what}: error {float(err.flatten()[worst]):.3g} at flat index {worst} exceeds its "
        f"conditioning bound {float(tol.flatten()[worst]):.3g} ({float(ratio.max()):.3g}x)"
    )


def moment_error_and_bound(basis, gram_raw):
    """``|Cᵀ G_raw C − diag Λ|`` and its bound ``d·eps·(|C|ᵀ|G_raw||C| + max Λ)``.

    ``|C|ᵀ|G_raw||C|`` bounds the rounding of the product itself and grows with the whitening's
    ``D^{-1/2}`` where the Gram is ill-conditioned; ``max Λ`` covers the eigensolvers' backward
    errors (absolute, of the order eps·max Λ in the rotated coordinates). Measured: at most
    8.8 eps·max Λ (digits MLP, d = 65), so the bound holds with a margin ≥ 7.
    """
    moments = basis.C.T @ gram_raw @ basis.C
    err = (moments - torch.diag(basis.importance)).abs()
    scale = basis.C.abs().T @ gram_raw.abs() @ basis.C.abs() + basis.importance.max()
    return err, gram_raw.shape[0] * EPS * scale


def whitening_error_and_bound(basis, m_dash):
    """``|C⁺ M′ C⁺ᵀ − I|`` and its bound ``d·eps·(max Λ / √(Λ_i Λ_j) + (|C⁺||M′||C⁺|ᵀ)_ij)``.

    ``C⁺`` divides the rotated ``M′`` (whose eigendecomposition is exact up to eps·max Λ) by
    ``√Λ_i √Λ_j``: its error grows with ``max Λ / √(Λ_i Λ_j)``. The second term bounds the
    rounding of the product. Measured (err / (eps·(both terms))): ≤ 4.3 on the digits MLP
    (Λ down to 1.7e-10 max Λ, error 6.5e-9 under AVX-512, d = 101), ≤ 0.4 on the tiny models.
    """
    m = basis.C_pinv @ m_dash @ basis.C_pinv.T
    lam = basis.importance
    err = (m - torch.eye(len(m), dtype=m.dtype)).abs()
    product = basis.C_pinv.abs() @ m_dash.abs() @ basis.C_pinv.abs().T
    scale = lam.max() / (lam[:, None] * lam[None, :]).sqrt() + product
    return err, m_dash.shape[0] * EPS * scale


def assert_uncorrelated(basis, stats):
    """Invariant 1: ``C^T G_raw C = diag(Λ)`` with ``G_raw`` the uncentred second moment."""
    _, y_inv = compute_centering_matrices(stats.mean)
    err, tol = moment_error_and_bound(basis, y_inv.T @ stats.gram @ y_inv)
    _check(err, tol, "C^T G C = diag(Λ)")


def assert_constant_node(basis, acts, stats, rtol=1e-9):
    """Invariant 2: ``f̂_0 = ⟨μ̃ + e_last, C[:,0]⟩ = ±√Λ_0`` on every sample.

    Not amplified by small Λ: the constant direction is the Gram's (well-conditioned) constant
    coordinate. Measured relative errors stay below 1e-13.
    """
    sqrt_lam0 = basis.importance[0].sqrt()
    f0 = acts.to(torch.float64) @ basis.C[:, 0]
    torch.testing.assert_close(f0.abs(), torch.full_like(f0, float(sqrt_lam0)), rtol=rtol, atol=0)
    shifted = stats.mean.clone()
    torch.testing.assert_close((shifted @ basis.C[:, 0]).abs(), sqrt_lam0, rtol=rtol, atol=0)


def assert_whitened_gradients(basis, m_dash, min_relative_lambda=0.0):
    """Invariant 3: ``C⁺ M′ C⁺ᵀ = I`` outside the masked (constant, variance) rows.

    ``min_relative_lambda`` restricts the check to features with ``Λ > t · max Λ``: at the
    reference's absolute τ = 1e-15, noise features (Λ ~ 1e-14) are divided by √Λ in ``C⁺`` and
    their bound exceeds 1, so checking them tests nothing.
    """
    err, tol = whitening_error_and_bound(basis, m_dash)
    n = basis.n_masked
    lam = basis.importance
    keep = int((lam[n:] > min_relative_lambda * lam.max()).sum())
    block = slice(n, n + keep)
    _check(err[block, block], tol[block, block], "C⁺ M′ C⁺ᵀ = I")


def assert_final_linear_edges(edges, basis_in, logits, rtol=1e-8):
    """Invariant 4: column sums of E are Λ, and ``ΣE = E‖logits‖²`` whatever the basis.

    The column sums are ``Λ_j (C⁺ M′ C⁺ᵀ)_jj``: their error is Λ_j times the whitening error,
    ≲ d·eps·max Λ, so an absolute tolerance in units of max Λ is not amplified by small Λ.
    """
    lam = basis_in.importance
    torch.testing.assert_close(edges.sum(0), lam, rtol=rtol, atol=rtol * float(lam.max()))
    total = logits.to(torch.float64).square().sum(-1).mean()
    torch.testing.assert_close(edges.sum(), total, rtol=rtol, atol=0)
