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


def write_tiny_gpt2(folder: Path, texts: list[str], n_layer: int = 1) -> Path:
    """save_pretrained folder with config, safetensors and a byte-level BPE tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=280, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
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
