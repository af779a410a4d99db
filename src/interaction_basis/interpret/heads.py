"""Which attention heads write each residual-stream feature, and what those heads do.

For a GPT-2 language model on held-out chunks:

- **Head roles from attention patterns.** A head's *previous-token score* is its mean attention
  from position t to t − 1; its *induction score* is its mean attention from t to the positions
  s + 1 right after earlier occurrences s < t − 1 of the token at t (summed over them), over the
  positions whose token occurred before (Olsson et al. 2022). A previous-token head scores near
  1 on the first, an induction head near 1 on the second. The *s + 2 induction score* is the
  same with the keys s + 2: a head that attends there reads the answer (the token at s + 1)
  from the previous-token head's write at s + 2, which is how the toy LMs trained here copy
  (README, Ground truth); a head counts as an induction head on either score.
- **Feature attribution by direct writes.** The residual stream at ``resid_pre.L``,
  ``resid_mid.L`` and ``resid_post.L`` is the sum of the writes of the embedding, of every
  earlier attention head and MLP, and of constant biases (the LIB build centres the writes
  over ``d_model``: so do we).
  A feature ``f_i = x C[:, i]`` therefore splits into the same writes, ``f_i = Σ_c g_ci``, and
  ``Cov(f_i, g_ci) / Var(f_i)`` is the share of the feature's variance written by component
  ``c``: the shares sum to 1 over the components (constants contribute none).

A feature carries the previous-token signal when its largest share comes from a
previous-token head, and the induction signal when it comes from an induction head.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interaction_basis.lib.records import Basis

#: A head is called a previous-token (induction) head only when its score reaches this: the
#: best-scoring head of a model without the circuit is otherwise named all the same.
ROLE_THRESHOLD = 0.5


def _center(x: Tensor) -> Tensor:
    return x - x.mean(dim=-1, keepdim=True)


def run_with_writes(
    model, tokens: Int[Tensor, "batch pos"]
) -> tuple[dict[str, Tensor], list[Tensor]]:
    """The centred residual writes of every component, and every layer's attention patterns.

    Returns:
        writes: component name (``embed``, ``L{l}.H{h}``, ``L{l}.mlp``) → (batch, pos, d_model),
            in the order they enter the residual stream; biases left out (constants).
        patterns: per layer (batch, head, query, key).
    """
    blocks = model.transformer.h
    captured: dict[str, Tensor] = {}
    hooks = []
    for layer, block in enumerate(blocks):
        hooks.append(
            block.attn.c_proj.register_forward_pre_hook(
                lambda m, args, layer=layer: captured.__setitem__(f"z{layer}", args[0])
            )
        )
        hooks.append(
            block.mlp.register_forward_hook(
                lambda m, args, out, layer=layer: captured.__setitem__(f"mlp{layer}", out)
            )
        )
    try:
        with torch.no_grad():
            out = model(input_ids=tokens, output_attentions=True)
            return _writes(model, tokens, captured), list(out.attentions)
    finally:
        for hook in hooks:
            hook.remove()


def _writes(model, tokens: Tensor, captured: Mapping[str, Tensor]) -> dict[str, Tensor]:
    n_head, d = model.config.n_head, model.config.n_embd
    positions = torch.arange(tokens.shape[1])
    tr = model.transformer
    writes = {"embed": _center(tr.wte.weight[tokens] + tr.wpe.weight[positions])}
    for layer, block in enumerate(model.transformer.h):
        z = captured[f"z{layer}"].unflatten(-1, (n_head, d // n_head))
        w_o = block.attn.c_proj.weight.unflatten(0, (n_head, d // n_head))  # (H, dh, d)
        for head in range(n_head):
            writes[f"L{layer}.H{head}"] = _center(z[..., head, :] @ w_o[head])
        writes[f"L{layer}.mlp"] = _center(captured[f"mlp{layer}"] - block.mlp.c_proj.bias)
    return writes


def head_scores(
    patterns: Sequence[Float[Tensor, "batch head query key"]], tokens: Int[Tensor, "batch pos"]
) -> dict[str, dict[str, float]]:
    """Previous-token and induction scores (s + 1 and s + 2) of every head (module docstring)."""
    targets = {offset: _keys_after_occurrences(tokens, offset) for offset in (1, 2)}
    scores = {}
    for layer, a in enumerate(patterns):
        prev = a.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))
        after = {offset: _mean_attention(a, target) for offset, target in targets.items()}
        for head in range(a.shape[1]):
            scores[f"L{layer}.H{head}"] = {
                "previous_token": float(prev[head]),
                "induction": float(after[1][head]),
                "induction_2": float(after[2][head]),
            }
    return scores


def _keys_after_occurrences(
    tokens: Int[Tensor, "batch pos"], offset: int
) -> Bool[Tensor, "batch query key"]:
    """True at the keys s + offset after the earlier occurrences s of the query t's token
    (s + offset < t)."""
    n = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # (b, t, s)
    earlier = torch.ones(n, n, dtype=torch.bool).tril(-offset - 1)  # s + offset < t
    target = torch.zeros_like(same)
    target[:, :, offset:] = (same & earlier)[:, :, :-offset]
    return target


def _mean_attention(
    a: Float[Tensor, "batch head query key"], target: Bool[Tensor, "batch query key"]
) -> Float[Tensor, " head"]:
    """Mean attention on the target keys, over the queries that have any."""
    has_target = target.any(-1)
    mass = (a * target[:, None]).sum(-1)  # (b, head, t)
    return (mass * has_target[:, None]).sum((0, 2)) / has_target.sum()


def writes_into(layer: str, names: Sequence[str]) -> list[str]:
    """The components whose writes make up residual node layer ``resid_pre.L``,
    ``resid_mid.L`` or ``resid_post.L`` (``= resid_pre.{L+1}``)."""
    kind, index = layer.split(".")
    block = int(index)
    if kind == "resid_post":
        kind, block = "resid_pre", block + 1

    def before(name: str) -> bool:
        if name == "embed":
            return True
        where, part = name.split(".")
        at = int(where[1:])
        return at < block or (kind == "resid_mid" and at == block and part != "mlp")

    return [n for n in names if before(n)]


def feature_shares(
    writes: Mapping[str, Float[Tensor, "row d"]], basis: Basis
) -> Float[np.ndarray, "component feature"]:
    """``Cov(f_i, g_ci) / Var(f_i)`` per component and non-constant feature (module docstring).

    ``writes`` are the components of the node layer's residual (without its constant column);
    features with zero variance get NaN.
    """
    c = basis.C[:-1, basis.n_masked :].to(torch.float64)  # the constant row meets no write
    parts = torch.stack([w.to(torch.float64) @ c for w in writes.values()])  # (comp, row, feat)
    parts = parts - parts.mean(dim=1, keepdim=True)
    total = parts.sum(0)
    var = (total * total).mean(0)
    cov = (parts * total).mean(1)
    return (cov / torch.where(var > 0, var, torch.nan)).numpy()


def attribute_features(
    model,
    tokens: Int[Tensor, "batch pos"],
    bases: Mapping[str, Mapping[str, Basis]],
    *,
    top: int = 3,
) -> dict:
    """Head scores, the previous-token and induction heads, and for each method and residual
    node layer the features each head writes most of.

    Returns:
        ``heads`` (scores); ``best_previous_token_head`` and ``best_induction_head`` (the
        best-scoring head of any layer, and of a layer after that one; induction in its better
        form, s + 1 or s + 2); ``previous_token_heads`` and ``induction_heads``: every head
        whose score reaches :data:`ROLE_THRESHOLD` (an induction head also needs a
        previous-token head in an earlier layer); ``methods``: method → layer → a list per
        feature (basis order, constant left out) of ``feature``, ``top_writer`` and ``shares``
        (the ``top`` largest, component → share), plus per layer ``previous_token_features``
        and ``induction_features`` (features whose largest share is from such a head, with
        the head and its share).
    """
    writes, patterns = run_with_writes(model, tokens)
    scores = head_scores(patterns, tokens)
    result: dict = {"heads": scores, **head_roles(scores), "methods": {}}
    prev, induction = result["previous_token_heads"], result["induction_heads"]
    flat = {name: w.flatten(0, 1) for name, w in writes.items()}
    for method, layers in bases.items():
        per_layer = {}
        for layer, basis in layers.items():
            if not layer.startswith(("resid_pre.", "resid_mid.", "resid_post.")):
                continue
            names = writes_into(layer, list(flat))
            shares = feature_shares({n: flat[n] for n in names}, basis)
            feats = []
            for i in range(shares.shape[1]):
                order = np.argsort(-np.nan_to_num(shares[:, i], nan=-np.inf))[:top]
                feats.append(
                    {
                        "feature": i + basis.n_masked,
                        "top_writer": names[order[0]],
                        "shares": {names[k]: float(shares[k, i]) for k in order},
                    }
                )
            entry = {"features": feats}
            for key, heads in (("previous_token", prev), ("induction", induction)):
                entry[f"{key}_features"] = [
                    {
                        "feature": f["feature"],
                        "head": f["top_writer"],
                        "share": f["shares"][f["top_writer"]],
                    }
                    for f in feats
                    if f["top_writer"] in heads
                ]
            per_layer[layer] = entry
        result["methods"][method] = per_layer
    return result


def head_roles(scores: Mapping[str, Mapping[str, float]]) -> dict:
    """The previous-token and induction heads among ``scores`` (see :func:`attribute_features`)."""
    best_prev = max(scores, key=lambda h: scores[h]["previous_token"])
    later = [h for h in scores if _layer(h) > _layer(best_prev)]
    prev = [h for h in scores if scores[h]["previous_token"] >= ROLE_THRESHOLD]
    return {
        "previous_token_heads": prev,
        "induction_heads": [
            h
            for h in scores
            if _induction(scores[h]) >= ROLE_THRESHOLD and any(_layer(p) < _layer(h) for p in prev)
        ],
        "best_previous_token_head": best_prev,
        "best_induction_head": max(later or scores, key=lambda h: _induction(scores[h])),
    }


def _layer(head: str) -> int:
    return int(head.split(".")[0][1:])


def _induction(score: Mapping[str, float]) -> float:
    """A head's induction score in its better form (s + 1 or s + 2)."""
    return max(score["induction"], score["induction_2"])


def render_markdown(result: Mapping) -> str:
    """The head roles and, per method and layer, the features that carry their signals."""
    heads = result["heads"]

    def role(key: str, best: str, value: float) -> str:
        if result[key]:
            return ", ".join(f"**{h}**" for h in result[key]) + f" (score ≥ {ROLE_THRESHOLD})"
        return f"none (best {best} at {value:.2f} < {ROLE_THRESHOLD})"

    best_prev, best_ind = result["best_previous_token_head"], result["best_induction_head"]
    lines = [
        "# Attention heads and the features they write",
        "",
        "Head roles from attention patterns on the held-out chunks; a feature's writers are",
        "the shares of its variance written by each component (they sum to 1).",
        "",
        "| head | previous-token score | induction score (s + 1) | induction score (s + 2) |",
        "|---|---|---|---|",
    ]
    for head, s in heads.items():
        lines.append(
            f"| {head} | {s['previous_token']:.3f} | {s['induction']:.3f} | "
            f"{s['induction_2']:.3f} |"
        )
    lines += [
        "",
        f"Previous-token heads: "
        f"{role('previous_token_heads', best_prev, heads[best_prev]['previous_token'])}; "
        f"induction heads: {role('induction_heads', best_ind, _induction(heads[best_ind]))}.",
        "",
    ]
    for method, layers in result["methods"].items():
        lines += [
            f"## {method}",
            "",
            "| layer | features | previous-token features | induction features |",
            "|---|---|---|---|",
        ]
        for layer, entry in layers.items():
            cells = [
                ", ".join(f"{f['feature']} ({f['head']}, {f['share']:.2f})" for f in entry[key])
                or "-"
                for key in ("previous_token_features", "induction_features")
            ]
            lines.append(f"| {layer} | {len(entry['features'])} | {cells[0]} | {cells[1]} |")
        lines.append("")
    lines.append("Features are numbered in basis order (0: the constant); in brackets the head")
    lines.append("that writes most of the feature's variance, and its share.")
    return "\n".join(lines) + "\n"
