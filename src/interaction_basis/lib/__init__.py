"""The method's maths (docs/method.md): dataset statistics, the bases, the Jacobian contractions
behind M′ and the edges, and the compensated sums that make them independent of batching."""
