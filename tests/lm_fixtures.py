"""A tiny local GPT-2 (model + tokenizer folder) and text corpus, built offline."""

import random
import shutil
from pathlib import Path

import torch

EOS = "<|endoftext|>"
WORDS = (
    "the cat dog sun sea ran sat saw a big red little happy park tree book ball "
    "and with to in on was had liked played"
).split()


def write_corpus(path: Path, n_documents: int = 60, seed: int = 0) -> list[str]:
    """Blank-line separated short stories."""
    rng = random.Random(seed)
    docs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + "."
        for _ in range(n_documents)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(docs) + "\n")
    return docs


def tiny_tokenizer(texts: list[str], vocab_size: int = 280):
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts``, with ``EOS`` as
    its begin, end, unknown and padding token (a ``PreTrainedTokenizerFast``)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def write_tiny_gpt2(folder: Path, texts: list[str], n_layer: int = 1) -> Path:
    """save_pretrained folder with config, safetensors and a byte-level BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer(texts)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids(EOS)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=32,
        n_embd=16,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    if folder.exists():
        shutil.rmtree(folder)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def randomise_lm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Nonzero biases and LayerNorm affines (HF initialises them to 0 and 1): zero biases
    would hide bias-folding bugs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=gen))
        for name, p in model.named_parameters():
            if "ln" not in name and "layernorm" not in name and "layer_norm" not in name:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
    return model


def tiny_lm(
    arch: str, *, vocab: int, d_model: int, n_ctx: int, seed: int, neo_local: bool = True
) -> torch.nn.Module:
    """A random-weight float64 LM of ``arch`` (``gpt2``, ``gpt_neo``, ``gpt_neox``) with one
    block (GPT-Neo with ``neo_local``: a global and a local block, window 3; GPT-NeoX: rotary on
    half the head, parallel residual) and random biases (:func:`randomise_lm`)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
    )

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    model: torch.nn.Module
    if arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_positions=n_ctx, n_embd=d_model, n_layer=1, n_head=2, **common)
        )
    elif arch == "gpt_neo":
        blocks = (
            dict(num_layers=2, attention_types=[[["global", "local"], 1]], window_size=3)
            if neo_local
            else dict(num_layers=1, attention_types=[[["global"], 1]])
        )
        model = GPTNeoForCausalLM(
            GPTNeoConfig(
                max_position_embeddings=n_ctx,
                hidden_size=d_model,
                num_heads=2,
                intermediate_size=2 * d_model,
                activation_function="gelu_new",
                **blocks,
                **common,
            )  # fmt: skip
        )
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                max_position_embeddings=n_ctx,
                hidden_size=d_model,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=2 * d_model,
                rotary_pct=0.5,
                use_parallel_residual=True,
                **common,
            )  # fmt: skip
        )
    else:
        raise ValueError(f"Unknown architecture {arch!r}; use gpt2, gpt_neo or gpt_neox.")
    return randomise_lm(model, seed=seed).to(torch.float64)
