"""The tokenizer that names the token ids of the feature windows, and the final LayerNorm and
unembedding that give residual-stream features their direct effect on the logits."""

import torch
from torch import Tensor

from interaction_basis.config import ModelConfig

#: Node layers that hold the residual stream itself (``models/hf.py``); ``ln_final_out`` and
#: the parallel blocks' two-stream ``ln2.L`` are told apart by their width.
RESIDUAL_PREFIXES = ("resid_pre.", "resid_mid.", "resid_post.", "ln1.", "ln2.", "ln_final")
TAIL = ["ln_final", "ln_final_out", "unembed", "output"]


def tokenizer(cfg: ModelConfig, weights_path: str):
    from interaction_basis.data.text import load_tokenizer

    return load_tokenizer(weights_path)


def final_readout(cfg: ModelConfig, weights_path: str, dtype: str, device: torch.device | None):
    """The model cut at its final LayerNorm (see :class:`FinalLayerNormReadout`)."""
    from interaction_basis.kinds import network

    return FinalLayerNormReadout(network.load_model(cfg, weights_path, TAIL, dtype, device))


class FinalLayerNormReadout:
    """``interpret.features.FinalReadout`` of a model sectioned at ``TAIL``: its sections are
    ``x -> (var(x), x)``, ``(var, x) -> [(x - mean x) / sqrt(var + eps), x_const]`` and the
    (LN-weight-folded) unembedding. With ``var`` given, the last two are linear in ``x``."""

    def __init__(self, tail):
        self.tail = tail
        self.width = None

    def reads(self, layer: str, width: int) -> bool:
        if self.width is None:  # the residual's width (d_model and the constant)
            probe = torch.zeros(1, 1, dtype=torch.long, device=self.tail.device)
            self.width = self.tail.embed(probe).shape[-1]
        return (
            layer.startswith(RESIDUAL_PREFIXES)
            and layer != "ln_final_out"
            and (width == self.width)
        )

    def variance(self, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.tail.activations(inputs.to(self.tail.device))["ln_final_out"][..., 0]

    def logits(self, variance: Tensor, v: Tensor) -> Tensor:
        dev = self.tail.device
        h = torch.cat([variance.to(dev)[:, None, None], v.to(dev)[:, None, :]], dim=-1)
        with torch.no_grad():
            return self.tail.sections[2](self.tail.sections[1](h))[:, 0]
