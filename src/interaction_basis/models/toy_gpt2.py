"""A small GPT-2 built from a config (no pretrained weights), for the toy language models."""

from typing import TYPE_CHECKING

from interaction_basis.config import ToyGPT2Config

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel


def build_toy_gpt2(cfg: ToyGPT2Config, vocab_size: int, eos_id: int) -> "GPT2LMHeadModel":
    """A freshly initialised GPT-2 language model (seed torch before calling for determinism)."""
    from transformers import GPT2Config, GPT2LMHeadModel  # slow import; config.py needs none

    if cfg.d_model % cfg.n_head:
        raise ValueError(f"d_model={cfg.d_model} is not a multiple of n_head={cfg.n_head}.")
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return GPT2LMHeadModel(config)
