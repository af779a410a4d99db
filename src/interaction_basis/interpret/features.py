"""Per-feature evidence for interpreting a basis: what each feature does on held-out data.

For every node layer and feature ``f̂ = f C`` (features in basis order, the constant feature 0
included), one streaming pass over the evaluation split gathers:

- an activation summary over all (sample, position) rows: mean and standard deviation (Chan's
  pairwise merge of per-batch moments in float64), exact minimum and maximum, and quantiles.
  Quantiles are *approximate* for large splits: they are read from a uniform random subsample
  of at most ``n_quantile_rows`` rows (bottom-k sampling on seeded random keys), and exact when
  the split has no more rows than that;
- the ``top_k`` largest and smallest activations with their sample index and position, and for
  language models the feature's activation at every token of a ``±window`` token window around
  the position (NaN and token -1 beyond the sequence ends).

For the cards it also keeps a histogram and one example per quantile level, both read from a
uniform subsample of ``N_PLOT_ROWS`` of those rows, and for language models each example's
earlier occurrence of its current token.

Memory is independent of the number of samples: ``(2 top_k (1 + window) + n_quantile_rows)``
values per feature. :func:`compute_direct_effects` and :func:`compute_fourier_evidence` add the
output-side and Fourier evidence.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interaction_basis import storage
from interaction_basis.interpret.fourier import (
    compute_dominant_frequencies,
    compute_dominant_terms,
    compute_frequency_power,
)
from interaction_basis.lib.records import Basis

# name: (dims, values) or (dims, values, attrs)
Variables = dict[str, tuple]
N_HISTOGRAM_BINS = 24  # activation histogram of each feature (card plot)
# The histogram and the quantile examples read the rows of the quantile subsample with the
# smallest keys: themselves a uniform subsample (bottom-k), small enough to cost little.
N_PLOT_ROWS = 4096
LINEARITY_RTOL = 1e-6  # float64 sections are linear to ~1e-15; a non-linear one is off by O(1)


class _Ranked(NamedTuple):
    """The running top-k of one sign: values and flat row ids ``sample * n_pos + position``."""

    values: Float[Tensor, "rank feature"]
    rows: Int[Tensor, "rank feature"]
    window_values: Float[Tensor, "rank feature window"] | None
    window_tokens: Int[Tensor, "rank feature window"] | None


class FeatureAccumulator:
    """Streams one layer's feature activations and keeps the summaries described above."""

    def __init__(
        self,
        n_features: int,
        *,
        top_k: int,
        n_quantile_rows: int,
        window: int | None = None,
        seed: int = 0,
    ):
        self.n_features, self.top_k, self.window = n_features, top_k, window
        self.n_quantile_rows = n_quantile_rows
        self._gen = torch.Generator().manual_seed(seed)
        self.count = 0
        self.mean = torch.zeros(n_features, dtype=torch.float64)
        self.m2 = torch.zeros(n_features, dtype=torch.float64)
        self.min = torch.full((n_features,), torch.inf, dtype=torch.float64)
        self.max = torch.full((n_features,), -torch.inf, dtype=torch.float64)
        self._keys = torch.empty(0, dtype=torch.float64)
        self._sample = torch.empty(0, n_features, dtype=torch.float64)
        self._sample_rows = torch.empty(0, dtype=torch.long)  # flat row id of each kept row
        self._top: _Ranked | None = None
        self._bottom: _Ranked | None = None
        self.n_pos: int | None = None

    def add(
        self,
        feats: Float[Tensor, "batch pos feature"],
        first_sample: int,
        tokens: Int[Tensor, "batch pos"] | None = None,
    ) -> None:
        """One batch of features; ``first_sample`` is the batch's first sample index."""
        feats = feats.to(torch.float64)
        b, p, n = feats.shape
        if n != self.n_features:
            raise ValueError(f"Expected {self.n_features} features, got {n}.")
        if self.n_pos is None:
            self.n_pos = p
        elif p != self.n_pos:
            raise ValueError(f"Positions changed from {self.n_pos} to {p} between batches.")
        flat = feats.reshape(b * p, n)
        self._add_moments(flat)
        rows = first_sample * p + torch.arange(b * p)
        self._add_quantile_rows(flat, rows)
        self._top = self._merge(self._top, flat, feats, rows, tokens, 1.0)
        self._bottom = self._merge(self._bottom, flat, feats, rows, tokens, -1.0)

    def _add_moments(self, flat: Tensor) -> None:
        nb = flat.shape[0]
        mean_b = flat.mean(0)
        m2_b = ((flat - mean_b) ** 2).sum(0)
        total = self.count + nb
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * nb / total)
        self.count = total
        self.min = torch.minimum(self.min, flat.min(0).values)
        self.max = torch.maximum(self.max, flat.max(0).values)

    def _add_quantile_rows(self, flat: Tensor, rows: Tensor) -> None:
        # The rows with the smallest random keys form a uniform sample without replacement.
        # Once the sample is full, only the incoming rows are copied, into the evicted slots.
        keys = torch.rand(flat.shape[0], generator=self._gen, dtype=torch.float64)
        n_old, room = len(self._keys), self.n_quantile_rows - len(self._keys)
        if room > 0:
            self._keys = torch.cat([self._keys, keys[:room]])
            self._sample = torch.cat([self._sample, flat[:room]])
            self._sample_rows = torch.cat([self._sample_rows, rows[:room]])
            keys, flat, rows = keys[room:], flat[room:], rows[room:]
            n_old = len(self._keys)
        if not len(keys):
            return
        both = torch.cat([self._keys, keys])
        kept = torch.zeros(len(both), dtype=torch.bool)
        kept[torch.topk(both, n_old, largest=False).indices] = True
        evicted = torch.nonzero(~kept[:n_old]).flatten()
        incoming = torch.nonzero(kept[n_old:]).flatten()
        self._keys[evicted] = keys[incoming]
        self._sample[evicted] = flat[incoming]
        self._sample_rows[evicted] = rows[incoming]

    def _merge(self, cur, flat, feats, rows, tokens, sign) -> _Ranked:
        # Only a batch's own top-k can enter the running top-k: merge (2k, feature), not the
        # whole batch.
        batch = torch.topk(flat * sign, min(self.top_k, flat.shape[0]), dim=0)
        batch_rows = rows[batch.indices]
        k0 = 0 if cur is None else cur.values.shape[0]
        vals = batch.values if cur is None else torch.cat([cur.values, batch.values])
        all_rows = batch_rows if cur is None else torch.cat([cur.rows, batch_rows])
        top = torch.topk(vals, min(self.top_k, vals.shape[0]), dim=0)
        new_rows = torch.gather(all_rows, 0, top.indices)
        if self.window is None:
            return _Ranked(top.values, new_rows, None, None)
        windows = self._windows(cur, k0, top.indices, batch.indices, feats, tokens)
        return _Ranked(top.values, new_rows, *windows)

    def _windows(self, cur, k0, src, local, feats, tokens):
        """Window activations of the kept entries: copied when kept from before, else cut
        out of this batch (``local``: the batch's top-k rows per feature)."""
        k, n = src.shape
        width = 2 * self.window + 1
        win_v = torch.full((k, n, width), torch.nan, dtype=torch.float64)
        win_t = torch.full((k, n, width), -1, dtype=torch.long)
        feature = torch.arange(n).expand(k, n)
        old = src < k0
        if old.any():
            win_v[old] = cur.window_values[src[old], feature[old]]
            win_t[old] = cur.window_tokens[src[old], feature[old]]
        new = ~old
        if new.any():
            r = local[src[new] - k0, feature[new]]
            p = feats.shape[1]
            b, pos = r // p, r % p
            at = pos[:, None] + torch.arange(-self.window, self.window + 1)
            inside = (at >= 0) & (at < p)
            at = at.clamp(0, p - 1)
            v = feats[b[:, None], at, feature[new][:, None]]
            win_v[new] = torch.where(inside, v, torch.nan)
            if tokens is not None:
                t = tokens.to(torch.long)[b[:, None], at]
                win_t[new] = torch.where(inside, t, -1)
        return win_v, win_t

    def _plot_rows(self) -> np.ndarray:
        """Indices into the quantile subsample of a uniform subsample of ``N_PLOT_ROWS`` rows
        (all of them when it has no more)."""
        keys = self._keys.numpy()
        if len(keys) <= N_PLOT_ROWS:
            return np.arange(len(keys))
        return np.sort(np.argpartition(keys, N_PLOT_ROWS - 1)[:N_PLOT_ROWS])

    def _histogram(self, rows: np.ndarray) -> Variables:
        """Counts of a uniform subsample of ``N_PLOT_ROWS`` rows (all rows when the split has
        no more) in ``N_HISTOGRAM_BINS`` equal bins from the exact minimum to the maximum."""
        sample = self._sample.numpy()[rows]
        lo, hi = self.min.numpy(), self.max.numpy()
        scale = N_HISTOGRAM_BINS / np.where(hi > lo, hi - lo, 1.0)
        k = ((sample - lo) * scale).astype(np.int64)  # non-negative: truncation is floor
        np.minimum(k, N_HISTOGRAM_BINS - 1, out=k)  # the maximum falls in the last bin
        flat = (k + N_HISTOGRAM_BINS * np.arange(self.n_features)).ravel()
        counts = np.bincount(flat, minlength=self.n_features * N_HISTOGRAM_BINS)
        counts = counts.reshape(self.n_features, N_HISTOGRAM_BINS)
        return {"histogram_count": (("feature", "bin"), counts)}

    def _quantile_examples(self, q: np.ndarray, rows: np.ndarray) -> Variables:
        """At each quantile level, the row of the plot subsample whose value is that quantile
        (the lower order statistic): a real example from the middle of the distribution, with
        its sample and position, to show beside the extremes."""
        sample = self._sample.numpy()[rows]
        at = np.floor(q * (len(sample) - 1)).astype(np.int64)
        # The order statistics alone: a partition, not a sort.
        # Along contiguous rows: a partition down the strided columns is several times slower.
        part = np.argpartition(np.ascontiguousarray(sample.T), np.unique(at), axis=1)
        idx = part[:, at].T  # (quantile, feature): indices into the subsample
        flat = self._sample_rows.numpy()[rows][idx]
        assert self.n_pos is not None  # set by the first batch
        dims = ("quantile", "feature")
        return {
            "quantile_example_value": (dims, np.take_along_axis(sample, idx, 0)),
            "quantile_example_sample": (dims, flat // self.n_pos),
            "quantile_example_position": (dims, flat % self.n_pos),
        }

    def finish(self, quantiles: Iterable[float]) -> Variables:
        """The summary as named variables (dims, array) for the layer's store group."""
        if self.count == 0:
            raise ValueError("No samples were streamed; the evaluation split is empty.")
        q = np.asarray(list(quantiles), dtype=np.float64)
        std = torch.sqrt(self.m2 / self.count)
        out: Variables = {
            "mean": (("feature",), self.mean.numpy()),
            "std": (("feature",), std.numpy()),
            "min": (("feature",), self.min.numpy()),
            "max": (("feature",), self.max.numpy()),
            "quantile_value": (("quantile", "feature"), np.quantile(self._sample.numpy(), q, 0)),
        }
        rows = self._plot_rows()
        out |= self._histogram(rows)
        out |= self._quantile_examples(q, rows)
        for name, ranked, sign in (("top", self._top, 1.0), ("bottom", self._bottom, -1.0)):
            assert ranked is not None and self.n_pos is not None  # set by the first batch
            rows = ranked.rows.numpy()
            out[f"{name}_value"] = (("rank", "feature"), sign * ranked.values.numpy())
            out[f"{name}_sample"] = (("rank", "feature"), rows // self.n_pos)
            out[f"{name}_position"] = (("rank", "feature"), rows % self.n_pos)
            if ranked.window_values is not None:
                assert ranked.window_tokens is not None  # kept together (``_windows``)
                dims = ("rank", "feature", "window")
                out[f"{name}_window_value"] = (
                    dims,
                    ranked.window_values.numpy(),
                    {storage.NAN_IS_DATA_ATTR: "window positions beyond the sequence ends"},
                )
                out[f"{name}_window_token"] = (dims, ranked.window_tokens.numpy())
        return out


def compute_activation_evidence(
    activations: Callable[[Tensor], Mapping[str, Tensor]],
    inputs: Tensor,
    bases: Mapping[str, Basis],
    *,
    batch_size: int,
    top_k: int,
    n_quantile_rows: int,
    quantiles: Iterable[float],
    window: int | None = None,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] = iter,
    device: torch.device | str = "cpu",
) -> dict[str, Variables]:
    """Stream ``inputs`` through the model once; summaries and top examples per layer.

    The model and the projections onto the features run on ``device`` (the model's); the
    summaries are kept on the CPU.

    Args:
        activations: raw inputs -> activations per node layer (``SectionedModel.activations``).
        inputs: the evaluation split's raw inputs (tokens for mod-add and language models).
        bases: the basis of every layer to describe.
        window: language models: half-width of the token window kept around each example.
        quantiles: the quantile levels to report.
        device: where ``activations`` runs.
    """
    quantiles = list(quantiles)
    maps = {layer: b.C.to(device, torch.float64) for layer, b in bases.items()}
    acc = {
        layer: FeatureAccumulator(
            b.C.shape[1], top_k=top_k, n_quantile_rows=n_quantile_rows, window=window, seed=seed
        )
        for layer, b in bases.items()
    }
    with torch.no_grad():
        for start in progress(range(0, len(inputs), batch_size)):
            batch = inputs[start : start + batch_size]
            acts = activations(batch.to(device))
            for layer, a in acc.items():
                feats = (acts[layer].to(torch.float64) @ maps[layer]).cpu()
                tokens = batch if window is not None and batch.shape[1] == feats.shape[1] else None
                a.add(feats, start, tokens)
    out = {}
    for layer, a in acc.items():
        out[layer] = a.finish(quantiles)
        out[layer]["quantile"] = (("quantile",), np.asarray(quantiles, dtype=np.float64))
        if window is not None and inputs.ndim == 2 and a.n_pos == inputs.shape[1]:
            out[layer] |= _token_context(inputs, out[layer], window)
    return out


def token_windows(
    tokens: Int[Tensor, "sample pos"],
    sample: np.ndarray,
    position: np.ndarray,
    before: int,
    after: int,
) -> np.ndarray:
    """The tokens at ``position - before .. position + after`` of each ``sample`` (shape
    ``sample.shape + (before + after + 1,)``); -1 beyond the sequence ends or where
    ``position`` is -1."""
    t = tokens.to(torch.long).numpy()
    at = position[..., None] + np.arange(-before, after + 1)
    inside = (at >= 0) & (at < t.shape[1]) & (position[..., None] >= 0)
    got = t[sample[..., None], np.clip(at, 0, t.shape[1] - 1)]
    return np.where(inside, got, -1)


def previous_occurrence(
    tokens: Int[Tensor, "sample pos"], sample: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """The last position before ``position`` in the same sample that holds the same token
    (the earlier occurrence an induction head copies the next token from); -1 if none."""
    t = tokens.to(torch.long).numpy()
    seq = t[sample]  # (..., pos)
    current = np.take_along_axis(seq, position[..., None], -1)
    before = np.arange(t.shape[1]) < position[..., None]
    hit = (seq == current) & before
    last = t.shape[1] - 1 - np.argmax(hit[..., ::-1], axis=-1)
    return np.where(hit.any(-1), last, -1)


def _token_context(tokens: Tensor, v: Variables, window: int) -> Variables:
    """Language models: the quantile examples' token windows, and for every example the
    earlier occurrence of its current token (its position, and the tokens from two before
    it to three after: the token after it is the one an induction head would copy)."""
    out: Variables = {}
    s, p = v["quantile_example_sample"][1], v["quantile_example_position"][1]
    out["quantile_example_window_token"] = (
        ("quantile", "feature", "window"),
        token_windows(tokens, s, p, window, window),
    )
    for key in ("top", "bottom", "quantile_example"):
        dims, s = v[f"{key}_sample"]
        prev = previous_occurrence(tokens, s, v[f"{key}_position"][1])
        out[f"{key}_previous_position"] = (dims, prev)
        out[f"{key}_previous_window_token"] = (
            (*dims, "context"),
            token_windows(tokens, s, prev, 2, 3),
        )
    return out


def compute_direct_effects(
    section: Callable[[Tensor], Tensor],
    basis: Basis,
    n_top: int,
    *,
    chunk: int = 256,
    device: torch.device | str = "cpu",
) -> Variables:
    """Each feature's direct effect on the logits: the top promoted and suppressed outputs.

    Defined for the node layer whose section to the logits is linear (the unembedding input of
    a transformer, the last hidden layer of an MLP): feature ``i``'s direction ``C⁺[i]`` read
    straight through it, ``section(C⁺[i]) - section(0)``. The logits layer itself passes
    ``section = identity``.

    ``section`` runs on ``device`` (the model's); the results come back to the CPU.

    Raises:
        ValueError: if the section is not linear (the layer has no direct effect).
    """
    directions = basis.C_pinv.to(device, torch.float64)
    d = directions.shape[1]
    with torch.no_grad():
        zero = section(torch.zeros(1, 1, d, dtype=torch.float64, device=device))[0, 0]
        # Linear maps commute with negation and with sums of directions; ReLU-like maps,
        # positively homogeneous, would pass a scaling check but fail these.
        probe = directions[: min(4, len(directions))][:, None, :]
        one = section(probe)[:, 0] - zero
        neg = section(-probe)[:, 0] - zero
        both = section(probe.sum(0, keepdim=True))[0, 0] - zero
        scale = max(float(one.abs().max()), float(both.abs().max()), 1e-300)
        error = max(float((neg + one).abs().max()), float((both - one.sum(0)).abs().max()))
        if error > LINEARITY_RTOL * scale:
            raise ValueError("The section to the logits is not linear: no direct effect.")
    return _ranked_effects(
        lambda s, e: section(directions[s:e][:, None, :])[:, 0] - zero,
        len(directions),
        n_top,
        chunk,
    )


def _ranked_effects(effect: Callable[[int, int], Tensor], n: int, n_top: int, chunk: int):
    """The ``n_top`` largest and smallest entries of each feature's effect on the outputs;
    ``effect(start, stop)``: the effects (feature, output) of features ``start:stop``."""
    up_v, up_i, down_v, down_i = [], [], [], []
    with torch.no_grad():
        for s in range(0, n, chunk):
            eff = effect(s, min(s + chunk, n)).to("cpu", torch.float64)
            k = min(n_top, eff.shape[1])
            up = torch.topk(eff, k, dim=1)
            down = torch.topk(eff, k, dim=1, largest=False)
            up_v.append(up.values.cpu())
            up_i.append(up.indices.cpu())
            down_v.append(down.values.cpu())
            down_i.append(down.indices.cpu())
    dims = ("direct_rank", "feature")
    return {
        "promoted_value": (dims, torch.cat(up_v).T.numpy()),
        "promoted_output": (dims, torch.cat(up_i).T.numpy()),
        "suppressed_value": (dims, torch.cat(down_v).T.numpy()),
        "suppressed_output": (dims, torch.cat(down_i).T.numpy()),
    }


@runtime_checkable
class FinalReadout(Protocol):
    """A language model's path from the residual stream to the logits: the final LayerNorm and
    the unembedding, linearised by freezing the LayerNorm's scale (``kinds/hf``)."""

    def reads(self, layer: str, width: int) -> bool:
        """Whether node layer ``layer`` (activations of ``width``) is the residual stream."""
        ...

    def variance(self, inputs: Tensor) -> Float[Tensor, "batch pos"]:
        """The final LayerNorm's variance at every position of ``inputs``."""
        ...

    def logits(
        self, variance: Float[Tensor, " n"], v: Float[Tensor, "n d"]
    ) -> Float[Tensor, "n vocab"]:
        """The logits' change when ``v[i]`` is added to the final residual and the LayerNorm
        divides by ``sqrt(variance[i] + eps)`` (frozen): linear in ``v``."""
        ...


def compute_readout_direct_effects(
    basis: Basis,
    readout: FinalReadout,
    variance: Float[Tensor, " feature"],
    n_top: int,
    *,
    chunk: int = 256,
) -> Variables:
    """Each feature's direct effect on the logits from a residual-stream layer: its direction
    ``C⁺[i]`` (the change of the residual per unit of the feature) added to the final residual,
    skipping the later blocks, through the final LayerNorm with its scale frozen at
    ``variance[i]`` (the sample's own value: the feature's top example) and the unembedding.
    A stated linearisation: the LayerNorm's scale would also move with the direction (to first
    order by ``cov(x, v)``), which this leaves out. Promoted and suppressed outputs as
    :func:`compute_direct_effects`, and the variance used (``direct_variance``)."""
    directions = basis.C_pinv.to(torch.float64)
    var = variance.to(torch.float64)
    out = _ranked_effects(
        lambda s, e: readout.logits(var[s:e], directions[s:e]), len(directions), n_top, chunk
    )
    out["direct_variance"] = (("feature",), var.cpu().numpy())
    return out


def compute_fourier_evidence(
    acts: Mapping[str, Float[Tensor, "sample pos d"]],
    bases: Mapping[str, Basis],
    modulus: int,
) -> dict[str, Variables]:
    """Mod-add: each feature's power per frequency over all ``(a, b)`` and its dominant term.

    ``acts`` are the activations on all ``modulus²`` inputs (``build_modadd_dataset`` order);
    the features are summed over positions (method §C.1.4), as for the module labels.
    """
    out = {}
    for layer, basis in bases.items():
        feats = (acts[layer].to(torch.float64) @ basis.C.to(torch.float64)).sum(dim=1)
        power = compute_frequency_power(feats, modulus=modulus)
        grid = feats.numpy().T.reshape(-1, modulus, modulus)  # (feature, a, b)
        freq, share = compute_dominant_frequencies(power)
        terms, term_share = compute_dominant_terms(power)
        out[layer] = {
            "frequency_power": (("feature", "frequency"), power.frequency),
            "mixed_power": (("feature",), power.mixed),
            "dominant_frequency": (("feature",), freq),
            "dominant_share": (("feature",), share),
            "dominant_term": (("feature",), np.array(terms)),
            "dominant_term_share": (("feature",), term_share),
            "sum_profile": (("feature", "residue"), sum_profile(feats, modulus)),
            # The mean over the other operand: a feature of a (or b) alone is flat in (a + b).
            "a_profile": (("feature", "residue"), grid.mean(2)),
            "b_profile": (("feature", "residue"), grid.mean(1)),
        }
    return out


def sum_profile(feats: Float[Tensor, "sample feature"], modulus: int) -> np.ndarray:
    """Each feature's mean over the inputs with the same ``(a + b) mod p``, ``(feature,
    residue)``; ``feats`` in ``build_modadd_dataset`` order (``index = a p + b``)."""
    grid = feats.numpy().T.reshape(-1, modulus, modulus)  # (feature, a, b)
    a = np.arange(modulus)
    b_of = (a[None, :] - a[:, None]) % modulus  # [a, r]: the b with a + b = r
    return grid[:, a[:, None], b_of].mean(axis=1)  # every residue has exactly p pairs
