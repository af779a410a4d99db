"""What the classifier kinds (mod-add, MLP) share: their accuracy on the train and test splits."""

import torch

from interaction_basis.kinds.data import TaskData
from interaction_basis.models.sectioned import SectionedModel


def classifier_accuracies(model: SectionedModel, data: TaskData) -> dict[str, float]:
    """Train and test accuracy of the bias-folded model (float32, as the paper evaluates)."""
    out = {}
    with torch.no_grad():
        for name, x, y in (
            ("train", data.train_inputs, data.train_labels),
            ("test", data.test_inputs, data.test_labels),
        ):
            logits = model.forward_from(model.node_layers[0], model.embed(x))[:, -1]
            out[f"{name}_accuracy"] = float((logits.argmax(-1) == y).double().mean())
    return out
