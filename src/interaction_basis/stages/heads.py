"""Stage 7b: attention-head roles (previous-token, induction) and the heads that write each
residual-stream feature, for the GPT-2 toy language models trained here."""

import torch

from interaction_basis import storage
from interaction_basis.interpret.heads import attribute_features, render_markdown


def attribute_heads(
    model: str, tokens: str, methods: list[str], basis: list[str], json: str, md: str
) -> None:
    """Head roles and feature writers on the held-out chunks."""
    from interaction_basis.models.hf import load_hf_model

    network = load_hf_model(model, dtype=torch.float64)
    network.set_attn_implementation("eager")  # the fused kernels return no attention patterns
    held_out = torch.from_numpy(storage.read_token_chunks(tokens)["eval"][:])[:, :-1]
    bases = {m: storage.read_bases(p) for m, p in zip(methods, basis, strict=True)}
    result = attribute_features(network, held_out, bases)
    storage.write_json(json, result)
    storage.write_text(md, render_markdown(result))
