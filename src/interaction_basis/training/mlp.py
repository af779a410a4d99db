"""Training the image-classifier MLP (method §B.2: Adam, lr 1e-3, batch 64, seed 0).

The reference trains CIFAR-10 with 3072 → 100 → 100 → 10, ReLU, 12 epochs, on pixels in
[0, 1]. Everything here is seeded (initialisation and shuffling), runs in float32 and returns
plain arrays, so that storage stays in ``storage.py``.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interaction_basis.config import MLPTrainConfig
from interaction_basis.models.mlp import MLP
from interaction_basis.progress import progress as progress_bar


@dataclass(frozen=True)
class MLPTrainResult:
    """A trained MLP and how it got there.

    Attributes:
        state: ``layers.{i}.W`` (in, out) / ``layers.{i}.b`` float32 arrays, the input of
            :func:`interaction_basis.models.mlp.build_mlp_sections`.
        config: the training config.
        input_size, output_size: the data's feature and class counts.
        step_loss: training loss of every optimiser step.
        history: one dict per epoch: ``epoch``, ``train_loss`` (mean over the epoch's steps),
            ``test_loss``, ``test_accuracy``.
        train_accuracy: final accuracy on the whole training set.
        test_accuracy: final accuracy on the test set.
        test_loss: final cross-entropy on the test set.
    """

    state: dict[str, np.ndarray]
    config: MLPTrainConfig
    input_size: int
    output_size: int
    step_loss: np.ndarray
    history: list[dict[str, int | float]] = field(default_factory=list)
    train_accuracy: float = math.nan
    test_accuracy: float = math.nan
    test_loss: float = math.nan


def _check_split(x: Tensor, y: Tensor, name: str, n_classes: int) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name}: expected inputs (N, features) and labels (N,) with N > 0, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: the inputs contain NaN/inf.")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(
            f"{name}: labels range over [{int(y.min())}, {int(y.max())}], expected "
            f"[0, {n_classes - 1}]."
        )


@torch.no_grad()
def evaluate_mlp(
    model: MLP,
    x: Float[Tensor, "n feature"],
    y: Int[Tensor, " n"],
    batch_size: int = 4096,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(-1) == target).sum())
    return loss / len(x), correct / len(x)


def train_mlp(
    cfg: MLPTrainConfig,
    x_train: Float[Tensor, "n_train feature"],
    y_train: Int[Tensor, " n_train"],
    x_test: Float[Tensor, "n_test feature"],
    y_test: Int[Tensor, " n_test"],
    progress: bool = True,
    n_classes: int | None = None,
    num_threads: int | None = None,
) -> MLPTrainResult:
    """Train an MLP with Adam and cross-entropy; evaluate on the test split after every epoch.

    Args:
        cfg: architecture and optimiser settings.
        x_train, y_train: training inputs (N, features) and labels.
        x_test, y_test: test inputs and labels.
        progress: show a tqdm bar over epochs.
        n_classes: number of classes; default ``max label + 1``.
        num_threads: torch CPU threads while training (restored afterwards); ``None`` keeps
            the current setting. Small models train fastest on 1 thread, especially on a
            shared machine, where extra threads oversubscribe the cores.

    Returns:
        The trained weights, the loss curves and the final accuracies.
    """
    if num_threads is None:
        return _train_mlp(cfg, x_train, y_train, x_test, y_test, progress, n_classes)
    if num_threads < 1:
        raise ValueError(f"num_threads must be positive, got {num_threads}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _train_mlp(cfg, x_train, y_train, x_test, y_test, progress, n_classes)
    finally:
        torch.set_num_threads(previous)


def _train_mlp(
    cfg: MLPTrainConfig,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    progress: bool,
    n_classes: int | None,
) -> MLPTrainResult:
    x_train, x_test = x_train.to(torch.float32), x_test.to(torch.float32)
    y_train, y_test = y_train.to(torch.int64), y_test.to(torch.int64)
    if n_classes is None:
        n_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    _check_split(x_train, y_train, "train", n_classes)
    _check_split(x_test, y_test, "test", n_classes)
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"Train inputs have {x_train.shape[1]} features but test inputs {x_test.shape[1]}."
        )
    model = MLP(
        x_train.shape[1],
        cfg.hidden_sizes,
        n_classes,
        activation=cfg.activation,
        bias=cfg.bias,
        seed=cfg.seed,
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(x_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    step_loss = np.zeros(cfg.epochs * steps_per_epoch, dtype=np.float64)
    history: list[dict[str, int | float]] = []
    step = 0
    bar = progress_bar(range(cfg.epochs), "train MLP", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_loss[step] = loss.item()
            step += 1
        model.eval()
        test_loss, test_acc = evaluate_mlp(model, x_test, y_test, cfg.eval_batch_size)
        train_loss = float(step_loss[step - steps_per_epoch : step].mean())
        history.append(
            dict(
                epoch=epoch + 1, train_loss=train_loss, test_loss=test_loss, test_accuracy=test_acc
            )
        )
        bar.set_postfix(loss=f"{train_loss:.4f}", test_acc=f"{test_acc:.4f}")
    _, train_acc = evaluate_mlp(model, x_train, y_train, cfg.eval_batch_size)
    return MLPTrainResult(
        state=model.state_arrays(),
        config=cfg,
        input_size=int(x_train.shape[1]),
        output_size=n_classes,
        step_loss=step_loss,
        history=history,
        train_accuracy=train_acc,
        test_accuracy=history[-1]["test_accuracy"],
        test_loss=history[-1]["test_loss"],
    )
