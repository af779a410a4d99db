"""Models: the only package code that builds or runs networks (one module per architecture;
``kinds/`` says which one a config's ``model.kind`` uses)."""

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}
