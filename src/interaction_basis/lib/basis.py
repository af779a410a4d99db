"""Per-layer bases: LIB (``jacobian`` formula), centred PCA and neuron (method §A.3, A.4).

Every basis maps activations to features, ``f̂ = f C``, and back, ``f ≈ f̂ C⁺``. Feature 0 is the
constant direction when centring, followed by the LayerNorm-variance node where isolated.
"""

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from interaction_basis.lib.linalg import compute_centering_matrices, compute_sorted_eigh
from interaction_basis.lib.records import Basis

CONST_TOLERANCE = 1e-6  # method §A.3: |U[last, k]| and |D_k| above this mark the constant


class DeadLayerError(ValueError):
    """LIB cannot scale a layer that nothing downstream depends on."""


class Truncation(NamedTuple):
    """Drop directions whose eigenvalue is ≤ ``threshold`` (times the largest if ``relative``)."""

    threshold: float = 1e-10
    relative: bool = True

    def keep(self, values: Float[Tensor, " n"], scale: Float[Tensor, ""] | None = None) -> Tensor:
        if scale is None:
            scale = values.max()
        cut = self.threshold * scale if self.relative else self.threshold
        return values > cut


def compute_pca_directions(
    gram: Float[Tensor, "d d"],
    *,
    truncation: Truncation,
    center: bool = True,
    isolate_var: bool = False,
) -> tuple[Float[Tensor, " k"], Float[Tensor, "d k"], int]:
    """Eigenvalues ``D`` and directions ``U`` of the Gram, ordered [const, (var), rest by D].

    Returns:
        (D, U, n_masked) after truncation; ``n_masked`` counts the constant and variance nodes.
    """
    d = gram.shape[0]
    if gram.shape != (d, d) or not torch.isfinite(gram).all():
        raise ValueError(f"Gram must be a finite square matrix, got shape {tuple(gram.shape)}.")
    gram = gram.to(torch.float64)
    if isolate_var:
        vals, vecs = compute_sorted_eigh(gram[1:, 1:])
        vecs = torch.cat([torch.zeros(1, d - 1, dtype=vecs.dtype), vecs], dim=0)
        e0 = torch.zeros(d, 1, dtype=vecs.dtype)
        e0[0, 0] = 1.0
        vals = torch.cat([gram[0, 0].abs().reshape(1), vals])
        vecs = torch.cat([e0, vecs], dim=1)
    else:
        vals, vecs = compute_sorted_eigh(gram)
    n_masked = int(isolate_var)
    if center:
        candidates = torch.nonzero(
            (vecs[-1].abs() > CONST_TOLERANCE) & (vals > CONST_TOLERANCE)
        ).flatten()
        if len(candidates) != 1:
            raise ValueError(
                f"Expected exactly one constant direction in the centred Gram, found "
                f"{len(candidates)}. The last activation coordinate must be the folded constant 1 "
                "and the Gram must be centred in float64 (or set center: false)."
            )
        k = int(candidates[0])
        order = [k] + [i for i in range(d) if i != k]
        vals, vecs = vals[order], vecs[:, order]
        n_masked += 1
    keep = truncation.keep(vals)
    keep[:n_masked] = True
    return vals[keep], vecs[:, keep], n_masked


def compute_pca_basis(
    gram: Float[Tensor, "d d"],
    mean: Float[Tensor, " d"],
    *,
    truncation: Truncation = Truncation(),
    center: bool = True,
    isolate_var: bool = False,
) -> Basis:
    """The centred PCA baseline ``C = Y U``, ``C⁺ = U^T Y⁻¹`` (method §A.3, ``svd``)."""
    vals, u, n_masked = compute_pca_directions(
        gram, truncation=truncation, center=center, isolate_var=isolate_var
    )
    y, y_inv = compute_centering_matrices(mean.to(torch.float64), center)
    return fix_signs(Basis(y @ u, u.T @ y_inv, vals, n_masked))


def compute_whitening(
    gram: Float[Tensor, "d d"],
    mean: Float[Tensor, " d"],
    *,
    truncation: Truncation = Truncation(),
    center: bool = True,
    isolate_var: bool = False,
) -> Basis:
    """The whitened PCA map ``R = Y U D^{-1/2}``, ``R⁺ = D^{1/2} U^T Y⁻¹`` as a Basis."""
    vals, u, n_masked = compute_pca_directions(
        gram, truncation=truncation, center=center, isolate_var=isolate_var
    )
    y, y_inv = compute_centering_matrices(mean.to(torch.float64), center)
    sqrt_d = vals.sqrt()
    return Basis(y @ u / sqrt_d, sqrt_d[:, None] * (u.T @ y_inv), vals, n_masked)


def compute_lib_basis(
    gram: Float[Tensor, "d d"],
    mean: Float[Tensor, " d"],
    m_dash: Float[Tensor, "d d"],
    *,
    truncation: Truncation = Truncation(),
    center: bool = True,
    isolate_var: bool = False,
) -> Basis:
    """The LIB basis ``C = Y U D^{-1/2} V Λ^{1/2}`` (method §A.3 steps 1-7).

    Args:
        gram: centred Gram of the layer.
        mean: mean activation (last entry 1).
        m_dash: ``M′``, the Jacobian second moment in the original coordinates.
        truncation: applied to the Gram eigenvalues and to Λ.
        center: centre and keep the constant direction as node 0.
        isolate_var: keep the LayerNorm-variance coordinate 0 as its own node.
    """
    if m_dash.shape != gram.shape or not torch.isfinite(m_dash).all():
        raise ValueError(
            f"M′ must be a finite {tuple(gram.shape)} matrix, got {tuple(m_dash.shape)}."
        )
    r = compute_whitening(gram, mean, truncation=truncation, center=center, isolate_var=isolate_var)
    m = r.C_pinv @ m_dash.to(torch.float64) @ r.C_pinv.T
    n_m = r.n_masked
    lam_s, v_s = compute_sorted_eigh(m[n_m:, n_m:])
    k = m.shape[0]
    v = torch.eye(k, dtype=torch.float64)
    v[n_m:, n_m:] = v_s
    lam = torch.cat([m.diagonal()[:n_m].abs(), lam_s])
    if (lam == 0).all() or (lam[:n_m] == 0).any():
        raise DeadLayerError(
            (
                "every direction has"
                if (lam == 0).all()
                else "a direction it always keeps (the constant or the LayerNorm variance) has"
            )
            + " zero LIB importance (Λ = 0): nothing downstream depends on this layer on these "
            "inputs. Usually the network is dead after it (every ReLU of a later layer is off "
            "for every sample): look at the activations, change the weights' seed, scale or "
            "bias, or analyse this model with the pca or neuron basis."
        )
    # Masked nodes are always kept (fixes method §F.7, which dropped the wrong index).
    keep = truncation.keep(lam)
    keep[:n_m] = True
    lam, v = lam[keep], v[:, keep]
    sqrt_lam = lam.sqrt()
    c = r.C @ v * sqrt_lam
    c_pinv = (v.T @ r.C_pinv) / sqrt_lam[:, None]
    return fix_signs(Basis(c, c_pinv, lam, n_m))


def fix_signs(basis: Basis) -> Basis:
    """Flip each rotated feature so that its largest-magnitude entry in ``C`` is positive.

    Eigenvectors are defined up to sign; without a convention, rounding differences (another
    BLAS, a sharded sum) can flip a feature and break comparisons between runs.
    """
    c = basis.C
    rows = c.abs().argmax(dim=0)
    signs = torch.sign(c[rows, torch.arange(c.shape[1])])
    signs[signs == 0] = 1.0
    signs[: basis.n_masked] = 1.0
    return basis._replace(C=c * signs, C_pinv=basis.C_pinv * signs[:, None])


def compute_neuron_basis(d: int, constant_last: bool = False) -> Basis:
    """The identity basis (also the unrotated final layer, method §A.4).

    With ``constant_last`` (a layer whose last coordinate is the folded constant), the features
    are the neurons with the constant moved to feature 0 and masked, as in every other basis:
    the graph and the summaries treat feature 0 as the constant.
    """
    eye = torch.eye(d, dtype=torch.float64)
    if not constant_last:
        return Basis(eye, eye.clone(), torch.ones(d, dtype=torch.float64), 0)
    perm = eye[:, [d - 1, *range(d - 1)]]
    return Basis(perm, perm.T.clone(), torch.ones(d, dtype=torch.float64), 1)
