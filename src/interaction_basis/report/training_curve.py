"""The training curve figure of rules train_model and import_model."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curve(history: Sequence[Mapping], path: Path) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    if history:
        epochs = [h["epoch"] for h in history]
        for key, style in (("train", "-"), ("test", "--")):
            if f"{key}_loss" in history[0]:
                ax[0].semilogy(epochs, [h[f"{key}_loss"] for h in history], style, label=key)
            if f"{key}_acc" in history[0]:
                ax[1].plot(epochs, [h[f"{key}_acc"] for h in history], style, label=key)
        ax[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
        ax[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
        ax[0].legend()
    else:
        for a in ax:
            a.text(0.5, 0.5, "imported weights: no training curve", ha="center", va="center")
            a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
