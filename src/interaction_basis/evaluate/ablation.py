"""Node and edge ablations, bisect searches and edge-mass sparsity (method §E, C.1.2, C.1.3).

Everything here is a pure function of a :class:`SectionedModel`, fitted bases (and edges) and an
evaluation set of raw inputs and labels; nothing opens files. Scores are computed in the dtype
the model was built in: build it in float32 to reproduce the reference numbers (method §C.1.2,
C.1.3). ``C``/``C⁺`` are cast to that dtype.

Conventions:
    - Feature 0 of a centred basis is the constant node; features are ordered by importance, so
      "keep ``k`` features" means keep features ``0..k-1`` (the constant counts as kept).
    - Edges ``E`` are (out_features, in_features); column 0 is the constant input node.
    - Kept counts and search spaces are measured in the *original* dimensions (``C.shape[0]``),
      as in the reference, so LIB and PCA schedules line up (method §E, F.9, F.10).
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interaction_basis.evaluate.ablated_sections import make_group_output
from interaction_basis.lib.records import Basis
from interaction_basis.models.sectioned import SectionedModel
from interaction_basis.progress import progress

Metric = Literal["accuracy", "ce_loss"]
Scaling = Literal["linear", "logarithmic"]
Labels = Int[Tensor, " batch"] | Int[Tensor, "batch pos"]
#: ``(batch index, cached layer input) -> activations at the start layer``
Transform = Callable[[int, Tensor], Tensor]

DEFAULT_BATCH_SIZE = 1024
#: Memory for the group outputs an edge ablation reuses between masks (method §E).
GROUP_CACHE_BYTES = 512 * 2**20


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def _last_position(logits: Tensor) -> Tensor:
    return logits[:, -1] if logits.ndim == 3 else logits


def _count_correct(logits: Tensor, labels: Tensor) -> int:
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"Accuracy needs one label per sample: labels {tuple(labels.shape)} for logits "
            f"{tuple(logits.shape)}."
        )
    return int((_last_position(logits).argmax(-1) == labels).sum())


def compute_ce_loss(
    logits: Float[Tensor, "batch pos vocab"] | Float[Tensor, "batch vocab"], labels: Labels
) -> float:
    """Mean token cross-entropy of one batch (method §E, ``ce_loss``).

    Args:
        logits: model outputs.
        labels: (batch,) for the last position only, or (batch, pos) aligned with ``logits``.
    """
    if labels.ndim == 1:
        logits = _last_position(logits)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"Labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}: give one "
            "label per sample (last position) or per (sample, position)."
        )
    flat = logits.reshape(-1, logits.shape[-1])
    return float(F.cross_entropy(flat, labels.reshape(-1), reduction="mean"))


def _check_metric(metric: str) -> None:
    if metric not in ("accuracy", "ce_loss"):
        raise ValueError(f"Unknown metric {metric!r}; use 'accuracy' or 'ce_loss'.")


def _batch_part(logits: Tensor, labels: Tensor, metric: Metric) -> float:
    """What a score keeps of one batch: its correct count, or its mean token CE."""
    if metric == "accuracy":
        return float(_count_correct(logits, labels))
    return compute_ce_loss(logits, labels)


def _aggregate(parts: Sequence[float], n_samples: int, metric: Metric) -> float:
    """The score from its batch parts, as the reference aggregates (method §E): ``accuracy``
    pools every sample; ``ce_loss`` is the mean of the per-batch means, so a short last batch
    weighs as much as a full one."""
    if not parts or n_samples == 0:
        raise ValueError("No samples to evaluate.")
    return sum(parts) / n_samples if metric == "accuracy" else float(np.mean(parts))


def compute_metric(batches: Iterable[tuple[Tensor, Tensor]], metric: Metric) -> float:
    """The metric over ``(logits, labels)`` batches (method §E; see :func:`_aggregate`)."""
    _check_metric(metric)
    parts, n = [], 0
    for logits, labels in batches:
        parts.append(_batch_part(logits, labels, metric))
        n += logits.shape[0]
    return _aggregate(parts, n, metric)


def is_good_score(score: float, base: float, delta: float, metric: Metric) -> bool:
    """Bisect criterion: ``score ≥ base − Δ`` for accuracy, ``score ≤ base + Δ`` for a loss."""
    if metric == "accuracy":
        return score >= base - delta
    if metric == "ce_loss":
        return score <= base + delta
    raise ValueError(f"Unknown metric {metric!r}; use 'accuracy' or 'ce_loss'.")


# ----------------------------------------------------------------------------------------------
# Evaluation plumbing
# ----------------------------------------------------------------------------------------------


def _check_eval_set(inputs: Tensor, labels: Tensor, batch_size: int) -> None:
    if inputs.shape[0] != labels.shape[0] or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs ({inputs.shape[0]} samples) and labels ({labels.shape[0]}) must be non-empty "
            "and of equal length."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")


def _layer_index(model: SectionedModel, layer: str) -> int:
    if layer not in model.node_layers:
        raise ValueError(
            f"Unknown node layer {layer!r}; this model has: {', '.join(model.node_layers)}."
        )
    return model.node_layers.index(layer)


@torch.no_grad()
def compute_layer_inputs(
    model: SectionedModel, layer: str, inputs: Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[Float[Tensor, "batch pos d"]]:
    """Activations at ``layer`` for consecutive batches of raw ``inputs`` (computed once), on
    the model's device."""
    idx = _layer_index(model, layer)
    out = []
    for start in range(0, inputs.shape[0], batch_size):
        x = model.embed(inputs[start : start + batch_size].to(model.device))
        for section in model.sections[:idx]:
            x = section(x)
        out.append(x)
    return out


def _scores(
    model: SectionedModel,
    start_layer: str,
    layer_inputs: Sequence[Tensor],
    labels: Tensor,
    transforms: Sequence[Transform | None],
    metric: Metric,
) -> list[float]:
    """Score the model run from ``start_layer`` after each transform, in one pass over the data.

    Each transform maps a batch of the cached ``layer_inputs`` (and its index) to activations
    at ``start_layer``; ``None`` means the inputs already are those activations. Batches of
    ``labels`` follow ``layer_inputs``. Only what the metric needs is kept per batch (correct
    counts or batch-mean losses), not the logits.
    """
    _check_metric(metric)
    parts: list[list[float]] = [[] for _ in transforms]
    start = 0
    with torch.no_grad():
        for b, x in enumerate(layer_inputs):
            y = labels[start : start + x.shape[0]].to(x.device)
            start += x.shape[0]
            for i, transform in enumerate(transforms):
                logits = model.forward_from(
                    start_layer, x if transform is None else transform(b, x)
                )
                parts[i].append(_batch_part(logits, y, metric))
    if start != labels.shape[0]:
        raise ValueError(f"{start} activations for {labels.shape[0]} labels.")
    return [_aggregate(p, start, metric) for p in parts]


def compute_unablated_score(
    model: SectionedModel,
    inputs: Tensor,
    labels: Labels,
    *,
    metric: Metric = "accuracy",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """The score of the unmodified model on the evaluation set."""
    _check_eval_set(inputs, labels, batch_size)
    first = model.node_layers[0]
    acts = compute_layer_inputs(model, first, inputs, batch_size=batch_size)
    return _scores(model, first, acts, labels, [None], metric)[0]


def _cast_basis(basis: Basis, like: Tensor, d: int, layer: str) -> tuple[Tensor, Tensor]:
    """``C`` and ``C⁺`` in the dtype and on the device of the activations ``like``."""
    if basis.C.shape[0] != d or basis.C_pinv.shape != (basis.C.shape[1], basis.C.shape[0]):
        raise ValueError(
            f"Basis of {layer!r} has C {tuple(basis.C.shape)} and C⁺ "
            f"{tuple(basis.C_pinv.shape)}, but the activations have {d} coordinates."
        )
    return basis.C.to(like), basis.C_pinv.to(like)


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def _with_specific_points(kept: Iterable[int], n: int, specific_points: Sequence[int]) -> list[int]:
    return sorted(set(kept) | {k for k in specific_points if 0 <= k <= n})


def compute_exponential_schedule(
    n: int,
    *,
    ablate_every_vec_cutoff: int | None,
    exp_base: float = 2.0,
    specific_points: Sequence[int] = (),
) -> list[int]:
    """Kept counts of the reference's exponential schedule, ascending (method §E).

    Every kept count from 0 to ``ablate_every_vec_cutoff`` is included; from there the number of
    ablated vectors ``a`` steps down as ``a ← int(a − base**x)``, x = 0, 1, ..., to 0 (nothing
    ablated).
    Build it on the *original* dimension (method §C.1.2): ``n = 129`` with cutoff 10 and base
    1.05 gives 0..11, 13, 15, 17, ..., 125, 129.

    Args:
        n: number of vectors (original dimension).
        ablate_every_vec_cutoff: ``None`` to keep every count 0..n.
        exp_base: base of the exponential step.
        specific_points: extra kept counts (those above ``n`` are ignored).
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}.")
    cutoff = ablate_every_vec_cutoff
    if cutoff is None:
        return _with_specific_points(range(n + 1), n, specific_points)
    if not 0 <= cutoff < n:
        raise ValueError(f"ablate_every_vec_cutoff must be in [0, {n}), got {cutoff}.")
    if exp_base <= 1.0:
        raise ValueError(f"exp_base must be > 1, got {exp_base}.")
    ablated = list(range(n, n - cutoff - 1, -1))
    prev = ablated[-1]
    for x in range(n):
        val = int(prev - exp_base**x)
        if val <= 0:
            ablated.append(0)
            break
        ablated.append(val)
        prev = val
    else:  # pragma: no cover - the step is ≥ 1, so n steps always reach 0
        ablated.append(0)
    return _with_specific_points((n - a for a in ablated), n, specific_points)


def compute_linear_schedule(
    n: int, *, n_points: int, specific_points: Sequence[int] = ()
) -> list[int]:
    """Kept counts of the reference's linear schedule, ascending: ``int(linspace(n, 0, n_points))``
    ablated vectors (method §E)."""
    if not 2 <= n_points <= n + 1:
        raise ValueError(f"n_points must be in [2, {n + 1}], got {n_points}.")
    ablated = [int(a) for a in np.linspace(n, 0, n_points)]
    return _with_specific_points((n - a for a in ablated), n, specific_points)


# ----------------------------------------------------------------------------------------------
# Node ablation
# ----------------------------------------------------------------------------------------------


def compute_node_ablation_matrix(
    C: Float[Tensor, "orig feature"], C_pinv: Float[Tensor, "feature orig"], n_kept: int
) -> Float[Tensor, "orig orig"]:
    """``C_ablated C⁺``: keep the first ``n_kept`` features, zero the rest (method §E).

    Kept counts at or above the number of features give the identity, as in the reference: the
    truncation projection ``C C⁺ ≠ I`` is never applied (method §F.10).
    """
    orig, n_features = C.shape
    if not 0 <= n_kept <= orig:
        raise ValueError(f"n_kept must be in [0, {orig}] (the original dimension), got {n_kept}.")
    if n_kept >= n_features:
        return torch.eye(orig, dtype=C.dtype, device=C.device)
    # Zero columns and multiply the full matrices, like the reference (same float32 rounding).
    ablated = C.clone()
    ablated[:, n_kept:] = 0
    return ablated @ C_pinv


def _right_multiply(r: Tensor) -> Transform:
    """The transform ``x ↦ x @ r`` of every batch."""
    return lambda _, x: x @ r


def compute_node_ablation_scores(
    model: SectionedModel,
    layer: str,
    basis: Basis,
    inputs: Tensor,
    labels: Labels,
    kept_counts: Sequence[int],
    *,
    metric: Metric = "accuracy",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[int, float]:
    """Score with only the first ``k`` features of ``layer`` kept, for each ``k`` (method §E).

    The activations at ``layer`` are multiplied by ``C_ablated C⁺`` (every position), and the
    model runs on from there. Counts at or above the basis size reuse the unablated score
    (method §F.10). One pass over the data evaluates every count.

    Args:
        model: the sectioned model; its dtype is the evaluation dtype.
        layer: the node layer to ablate (not the last).
        basis: the layer's basis; ``C`` and ``C⁺`` are cast to the model's dtype.
        inputs, labels: the evaluation set (raw model inputs).
        kept_counts: numbers of kept features, each in [0, orig], e.g. from
            :func:`compute_exponential_schedule`.
        metric: ``accuracy`` or ``ce_loss``.
        batch_size: evaluation batch size (matters for ``ce_loss``, method §E).

    Returns:
        ``{k: score}`` in the order of ``kept_counts``.
    """
    _check_eval_set(inputs, labels, batch_size)
    if _layer_index(model, layer) == len(model.node_layers) - 1:
        raise ValueError(f"Cannot ablate the last node layer {layer!r}: nothing runs after it.")
    acts = compute_layer_inputs(model, layer, inputs, batch_size=batch_size)
    C, C_pinv = _cast_basis(basis, acts[0], acts[0].shape[-1], layer)
    counts = list(dict.fromkeys(int(k) for k in kept_counts))
    matrices = {k: compute_node_ablation_matrix(C, C_pinv, k) for k in counts}
    ablating = [k for k in counts if k < C.shape[1]]
    transforms: list[Transform | None] = [None]
    for k in ablating:
        transforms.append(_right_multiply(matrices[k]))
    scores = _scores(model, layer, acts, labels, transforms, metric)
    base, ablated = scores[0], dict(zip(ablating, scores[1:], strict=True))
    return {k: ablated.get(k, base) for k in counts}


# ----------------------------------------------------------------------------------------------
# Edge ablation
# ----------------------------------------------------------------------------------------------


def compute_edge_mask(
    edges: Float[Tensor, "out in"], n_kept: int, *, keep_constant_input: bool = True
) -> Bool[Tensor, "out in"]:
    """Keep the ``n_kept`` largest edges (ties keep more), method §E.

    With ``keep_constant_input`` every edge from input node 0 is kept for free and the ranking
    runs over ``E[:, 1:]`` (the output constant row included). ``n_kept`` above the number of
    ranked edges keeps everything.
    """
    if n_kept < 0:
        raise ValueError(f"n_kept must be ≥ 0, got {n_kept}.")
    ranked = edges[:, 1:] if keep_constant_input else edges
    if n_kept > ranked.numel():
        return torch.ones_like(edges, dtype=torch.bool)
    if n_kept == 0:
        sub = torch.zeros_like(ranked, dtype=torch.bool)
    else:
        threshold = torch.topk(ranked.flatten(), k=n_kept).values[-1]
        sub = ranked >= threshold
    if not keep_constant_input:
        return sub
    mask = torch.ones_like(edges, dtype=torch.bool)
    mask[:, 1:] = sub
    return mask


def _mask_groups(mask: Bool[Tensor, "out in"]) -> list[tuple[bytes, Tensor, Tensor]]:
    """Output features sharing a mask row: ``(key, kept inputs, output columns)`` per group.

    The key identifies the group's work (its row and its columns), so it can be reused.
    """
    rows, group_of = torch.unique(mask, dim=0, return_inverse=True)
    groups = []
    for g, row in enumerate(rows):
        kept = torch.nonzero(row).flatten()
        cols = torch.nonzero(group_of == g).flatten()
        groups.append((row.numpy().tobytes() + cols.numpy().tobytes(), kept, cols))
    return groups


def _assemble(parts: Sequence[tuple[Tensor, Tensor]], n_out: int) -> Tensor:
    """``f_out`` with each group's columns in place."""
    first = parts[0][1]
    f_out = torch.zeros(*first.shape[:-1], n_out, dtype=first.dtype, device=first.device)
    for cols, values in parts:
        f_out[..., cols] = values
    return f_out


def _edge_setup(
    model: SectionedModel, layer: str, basis_in: Basis, basis_out: Basis, edges: Tensor
) -> tuple[int, str]:
    idx = _layer_index(model, layer)
    if idx == len(model.node_layers) - 1:
        raise ValueError(f"{layer!r} is the last node layer; edges start at an earlier layer.")
    expected = (basis_out.C.shape[1], basis_in.C.shape[1])
    if tuple(edges.shape) != expected:
        raise ValueError(
            f"Edges from {layer!r} have shape {tuple(edges.shape)}, expected {expected} "
            "(out features, in features) from the bases."
        )
    return idx, model.node_layers[idx + 1]


class _EdgeAblation:
    """Repeated edge-ablation scores of one layer pair (method §E).

    What does not change between masks is computed once: the layer inputs in feature
    coordinates and, per group of output features (its mask row and its columns), the group's
    outputs over the evaluation set. Those are kept for the masks named by :meth:`retain` (a
    bisection's two bounds: every later proposal lies between them, so a row that is the same
    at both bounds stays so in every later mask), if they fit in :data:`GROUP_CACHE_BYTES`.
    A group's outputs depend only on its key, never on what was evaluated before.
    """

    def __init__(
        self,
        model: SectionedModel,
        layer: str,
        basis_in: Basis,
        basis_out: Basis,
        edges: Tensor,
        inputs: Tensor,
        labels: Tensor,
        *,
        metric: Metric,
        batch_size: int,
        keep_constant_input: bool,
        base_score: float | None,
    ):
        _check_eval_set(inputs, labels, batch_size)
        idx, self.out_layer = _edge_setup(model, layer, basis_in, basis_out, edges)
        acts = compute_layer_inputs(model, layer, inputs, batch_size=batch_size)
        dtype, self.device = acts[0].dtype, acts[0].device
        C_in, _ = _cast_basis(basis_in, acts[0], acts[0].shape[-1], layer)
        C_out, C_out_pinv = _cast_basis(basis_out, acts[0], basis_out.C.shape[0], self.out_layer)
        if base_score is None:
            base_score = _scores(model, layer, acts, labels, [None], metric)[0]
        self.base = float(base_score)
        self.model, self.labels, self.metric = model, labels, metric
        self.edges, self.keep_constant_input = edges, keep_constant_input
        self.f_in = [x @ C_in for x in acts]
        self.n_out, self.C_out_pinv = C_out.shape[1], C_out_pinv
        section = model.sections[idx]
        # The maps stay float64 for the folds (see make_group_output), on the model's device.
        self.group_output = make_group_output(
            section, basis_in.C_pinv.to(self.device), basis_out.C.to(self.device), dtype
        )
        self.prepared = [self.group_output.prepare(f) for f in self.f_in]
        with torch.no_grad():
            pos_out = section(acts[0][:1]).shape[1]
        f_out_bytes = inputs.shape[0] * pos_out * self.n_out * acts[0].element_size()
        self.caching = 3 * f_out_bytes <= GROUP_CACHE_BYTES
        self.cache: dict[bytes, list[Tensor]] = {}
        self.used: dict[int, set[bytes]] = {}

    def mask(self, n_kept: int) -> Tensor:
        return compute_edge_mask(self.edges, n_kept, keep_constant_input=self.keep_constant_input)

    def _group_values(self, groups: list[tuple[bytes, Tensor, Tensor]], b: int) -> list:
        parts = []
        for key, kept, cols in groups:
            values = self.cache.get(key)
            if values is not None and len(values) > b:
                parts.append((cols, values[b]))
                continue
            value = self.group_output.evaluate(self.prepared[b], kept, cols)
            if self.caching:
                self.cache.setdefault(key, []).append(value)
            parts.append((cols, value))
        return parts

    def score(self, n_kept: int) -> float:
        m = self.mask(n_kept)
        if bool(m.all()):
            return self.base  # nothing ablated: the reference reuses the base score
        groups = [
            (key, kept.to(self.device), cols.to(self.device)) for key, kept, cols in _mask_groups(m)
        ]
        self.used[n_kept] = {key for key, _, _ in groups}

        def replace_section(b: int, _: Tensor) -> Tensor:
            return _assemble(self._group_values(groups, b), self.n_out) @ self.C_out_pinv

        # The transform replaces the section, so the model continues from the next layer.
        return _scores(
            self.model, self.out_layer, self.f_in, self.labels, [replace_section], self.metric
        )[0]

    def retain(self, kept_counts: Iterable[int]) -> None:
        """Keep the group outputs of these evaluated counts' masks only."""
        self.used = {k: self.used[k] for k in kept_counts if k in self.used}
        keep = set().union(*self.used.values())
        self.cache = {key: v for key, v in self.cache.items() if key in keep}


def compute_edge_ablation_scores(
    model: SectionedModel,
    layer: str,
    basis_in: Basis,
    basis_out: Basis,
    edges: Float[Tensor, "out in"],
    inputs: Tensor,
    labels: Labels,
    kept_counts: Sequence[int],
    *,
    metric: Metric = "accuracy",
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_constant_input: bool = True,
) -> dict[int, float]:
    """Score with only the top ``n_kept`` non-constant edges from ``layer`` to the next layer.

    Args:
        model: the sectioned model (its dtype is the evaluation dtype).
        layer: input node layer of the edges; the output layer is the next node layer.
        basis_in, basis_out: the two layers' bases (identity for ``output``).
        edges: ``E`` (out features × in features).
        inputs, labels: the evaluation set.
        kept_counts: numbers of kept non-constant edges; a mask that keeps every edge reuses
            the unablated score, as the reference does.
        metric, batch_size: see :func:`compute_node_ablation_scores`.
        keep_constant_input: keep the edges from input node 0 for free (centred bases).

    Returns:
        ``{n_kept: score}``.
    """
    ablator = _EdgeAblation(
        model,
        layer,
        basis_in,
        basis_out,
        edges,
        inputs,
        labels,
        metric=metric,
        batch_size=batch_size,
        keep_constant_input=keep_constant_input,
        base_score=None,
    )
    scores = {}
    for k in kept_counts:
        scores[int(k)] = ablator.score(int(k))
        ablator.retain([int(k)])  # neighbouring counts share most groups
    return scores


# ----------------------------------------------------------------------------------------------
# Bisection
# ----------------------------------------------------------------------------------------------


class BisectResult(NamedTuple):
    """Outcome of :func:`bisect_minimum`.

    Attributes:
        minimum: the smallest value known to be good (``hi`` if no proposal was good).
        largest_bad: the largest value known to be bad (``lo`` if no proposal was bad).
        scores: every evaluated value and its score, in evaluation order.
    """

    minimum: int
    largest_bad: int
    scores: dict[int, float]


def _midpoint(a: int, b: int, scaling: Scaling) -> int:
    if scaling == "linear":
        mid = (a + b) // 2
    elif scaling == "logarithmic":
        mid = 0 if a == 0 else int(math.exp((math.log(a) + math.log(b)) / 2))
    else:
        raise ValueError(f"Unknown scaling {scaling!r}; use 'linear' or 'logarithmic'.")
    # Nudge off the bounds so every step makes progress (as the reference does).
    if mid <= a:
        mid = a + 1
    if mid >= b:
        mid = b - 1
    return mid


def bisect_minimum(
    score_fn: Callable[[int], float],
    lo: int,
    hi: int,
    is_good: Callable[[float], bool],
    *,
    scaling: Scaling = "linear",
    tolerance: int = 1,
) -> BisectResult:
    """The smallest ``x`` in ``(lo, hi]`` whose score is good, by bisection (method §E).

    ``is_good(score_fn(x))`` is assumed monotone: bad up to a boundary, good above it. ``hi`` is
    assumed good and ``lo`` bad; neither is evaluated. Midpoints are taken in the *ablated*
    coordinate ``a = hi − x`` (``a = 0`` at ``hi``), exactly like the reference's bisect
    schedule over the number of ablated edges: linear ``(a_good + a_bad) // 2`` or logarithmic
    ``int(exp((log a_good + log a_bad) / 2))``, nudged into the open interval. The search stops
    when the bounds are at most ``tolerance`` apart; with tolerance 1 and a monotone score the
    result is exact.
    """
    if lo >= hi:
        raise ValueError(f"Need lo < hi, got lo={lo}, hi={hi}.")
    if tolerance < 1:
        raise ValueError(f"tolerance must be ≥ 1, got {tolerance}.")
    a_good, a_bad = 0, hi - lo
    scores: dict[int, float] = {}
    while a_bad - a_good > tolerance:
        a = _midpoint(a_good, a_bad, scaling)
        score = float(score_fn(hi - a))
        scores[hi - a] = score
        if is_good(score):
            a_good = a
        else:
            a_bad = a
    return BisectResult(hi - a_good, hi - a_bad, scores)


class EdgesRequired(NamedTuple):
    """Outcome of :func:`compute_edges_required` for one pair of node layers.

    Attributes:
        n_edges_required: fewest non-constant edges kept whose score is within budget.
        score: the score at ``n_edges_required``.
        base_score: the unablated score.
        epsilon: the smallest non-constant edge kept at ``n_edges_required`` (the ε of the
            by-layer log edge norm, method §D).
        mask: the edge mask at ``n_edges_required``.
        n_kept_last: kept count of the last evaluated proposal.
        epsilon_last: ε from the mask of the last evaluated proposal: what the reference saved
            (method §F.8); it differs from ``epsilon`` when the last proposal was bad.
        total: size of the search space, ``orig_in × orig_out`` (method §F.9).
        scores: every evaluated ``n_kept`` and its score, in evaluation order.
    """

    n_edges_required: int
    score: float
    base_score: float
    epsilon: float
    mask: Bool[Tensor, "out in"]
    n_kept_last: int
    epsilon_last: float
    total: int
    scores: dict[int, float]


def compute_edge_threshold(
    edges: Float[Tensor, "out in"], mask: Bool[Tensor, "out in"], *, ignore_constant: bool = True
) -> float:
    """The smallest kept edge, ignoring the constant row and column (method §D, ``ε_l``).

    The reference takes the minimum of ``E[1:, 1:]`` over the mask whenever the bases are
    centred, so the first output row is skipped even for ``output``, which has no constant node.
    """
    e, m = (edges[1:, 1:], mask[1:, 1:]) if ignore_constant else (edges, mask)
    if not bool(m.any()):
        return float("nan")
    return float(e[m].min())


def compute_edges_required(
    model: SectionedModel,
    layer: str,
    basis_in: Basis,
    basis_out: Basis,
    edges: Float[Tensor, "out in"],
    inputs: Tensor,
    labels: Labels,
    *,
    metric: Metric = "accuracy",
    delta: float = 0.001,
    scaling: Scaling = "linear",
    tolerance: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    keep_constant_input: bool = True,
    base_score: float | None = None,
) -> EdgesRequired:
    """Fewest edges from ``layer`` to the next node layer that keep the score within ``delta``.

    The reference's bisect edge ablation (method §E, C.1.3): search the number of ablated edges
    in ``[0, orig_in × orig_out]`` (original dimensions, method §F.9); a proposal is good if
    ``accuracy ≥ base − delta`` (``loss ≤ base + delta``); ``n_edges_required = total − lo``.
    Kept counts above the number of non-constant edges keep everything and reuse the base
    score without running the model.

    ``epsilon`` is taken from the mask at ``n_edges_required``. The reference saved the mask of
    the *last evaluated* proposal instead (method §F.8); that value is ``epsilon_last``.

    Args:
        model: the sectioned model (its dtype is the evaluation dtype; float32 reproduces the
            reference).
        layer: input node layer of the edges.
        basis_in, basis_out: bases of ``layer`` and of the next node layer.
        edges: ``E`` (out features × in features).
        inputs, labels: the held-out evaluation set.
        metric: ``accuracy`` (mod-add, Δ = 0.001, linear) or ``ce_loss`` (LMs, logarithmic).
        delta: the score budget Δ.
        scaling: bisect midpoint, ``linear`` or ``logarithmic``.
        tolerance: stop when the bounds are this close.
        batch_size, keep_constant_input: see :func:`compute_edge_ablation_scores`.
        base_score: the unablated score, if already known.
    """
    if delta < 0:
        raise ValueError(f"delta must be ≥ 0, got {delta}.")
    ablator = _EdgeAblation(
        model,
        layer,
        basis_in,
        basis_out,
        edges,
        inputs,
        labels,
        metric=metric,
        batch_size=batch_size,
        keep_constant_input=keep_constant_input,
        base_score=base_score,
    )
    total = basis_in.C.shape[0] * basis_out.C.shape[0]
    bounds = {True: total, False: 0}  # the bisection's good and bad bounds

    def is_good(score: float) -> bool:
        return is_good_score(score, ablator.base, delta, metric)

    def score_and_retain(n_kept: int) -> float:
        score = ablator.score(n_kept)
        bounds[is_good(score)] = n_kept
        ablator.retain(bounds.values())
        return score

    result = bisect_minimum(
        score_and_retain, 0, total, is_good, scaling=scaling, tolerance=tolerance
    )
    n_req = result.minimum
    mask = ablator.mask(n_req)
    last = next(reversed(result.scores)) if result.scores else total
    return EdgesRequired(
        n_edges_required=n_req,
        score=result.scores.get(n_req, ablator.base),
        base_score=ablator.base,
        epsilon=compute_edge_threshold(edges, mask, ignore_constant=keep_constant_input),
        mask=mask,
        n_kept_last=last,
        epsilon_last=compute_edge_threshold(
            edges, ablator.mask(last), ignore_constant=keep_constant_input
        ),
        total=total,
        scores=result.scores,
    )


def compute_all_edges_required(
    model: SectionedModel,
    bases: Mapping[str, Basis],
    edges: Mapping[tuple[str, str], Tensor],
    inputs: Tensor,
    labels: Labels,
    **kwargs,
) -> dict[tuple[str, str], EdgesRequired]:
    """:func:`compute_edges_required` for every pair of adjacent node layers in ``edges``."""
    missing = [p for p in edges if p[0] not in bases or p[1] not in bases]
    if missing:
        raise ValueError(f"No basis for the layers of edge pairs {missing}.")
    if "base_score" not in kwargs:
        kwargs["base_score"] = compute_unablated_score(
            model,
            inputs,
            labels,
            metric=kwargs.get("metric", "accuracy"),
            batch_size=kwargs.get("batch_size", DEFAULT_BATCH_SIZE),
        )
    return {
        (a, b): compute_edges_required(model, a, bases[a], bases[b], e, inputs, labels, **kwargs)
        for (a, b), e in progress(edges.items(), "edge ablation", unit="pair")
    }


# ----------------------------------------------------------------------------------------------
# Edge-mass concentration
# ----------------------------------------------------------------------------------------------
