"""Sections whose Jacobian contractions have closed forms (method §A.3 step 3, A.6).

The generic path (:mod:`interaction_basis.lib.jacobians`) takes one autograd pass per output
coordinate or input direction. For the blocks of the mod-add transformer (attention, MLP,
unembedding), the layers of the MLPs and the sections of the language models (per-token
LayerNorm/unembedding sections, the MLP block, causal self-attention), the Jacobian has a
structure that makes M′ and the edges much cheaper to contract directly. The classes of this
package are ordinary sections (callables on ``(batch, pos, d)`` activations) that also implement
:class:`~interaction_basis.lib.jacobians.ClosedForm`; ``jacobians`` uses them under
``mode="auto"`` for exact sources and the stochastic ones they list in ``takes_sources``,
while ``mode="forward"``/``"reverse"`` still run autograd, which the tests use as the
reference.

One module per section type; import a class from its module (the workflow derives each rule's
code inputs from the imports, so this package re-exports nothing):

- :mod:`.mlp`: :class:`~.mlp.Linear` and :class:`~.mlp.ElementwiseMLP` (the MLP layers and
  mod-add blocks);
- :mod:`.attention`: :class:`~.attention.LastPositionAttention` (mod-add);
- :mod:`.per_token`: :class:`~.per_token.PerToken` and :class:`~.per_token.ResidualMLP`;
- :mod:`.layernorm`: :class:`~.layernorm.LayerNormIn` and :class:`~.layernorm.LayerNormOut`;
- :mod:`.causal_attention`: :class:`~.causal_attention.CausalAttention` and ``rotate``
  (language models);
- :mod:`.common`: the shared chunking, constants and the records the contractions pass on
  (:class:`~.common.Contraction`, :class:`~.common.EdgeInputs`).

Notation (row vectors, ``dx ↦ dx J``): ``J̄_s = Σ_α w_α ∂F(α x)/∂x_s`` is the integrated
Jacobian of the section at input position ``s`` (method §A.7), ``R_s = J̄_s C_out``
(``d_in × k_out``), ``M′ ∝ Σ_{x,s} R_s R_sᵀ`` and ``E_{ij} ∝ Σ_x (Σ_s f̂_{s,j} (C⁺ R_s)_{j,i})²``.
Everything is computed in float64, whatever the activations' dtype.
"""
