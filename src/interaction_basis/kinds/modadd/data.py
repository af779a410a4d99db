"""All (a, b) pairs mod p, split into train and test as in training."""

from interaction_basis.config import ModelConfig
from interaction_basis.data.modadd import build_modadd_dataset, compute_modadd_split
from interaction_basis.kinds.data import HeldOut, TaskData


def load_data(cfg: ModelConfig, tokens_path: str | None = None) -> TaskData:
    t = cfg.train
    tokens, labels = build_modadd_dataset(t.modulus)
    train, test = compute_modadd_split(len(labels), t.frac_train, t.data_seed)
    return TaskData(
        tokens[train],
        tokens[train],
        labels[train],
        tokens[test],
        labels[test],
        f"modular addition mod {t.modulus}, train split",
    )


def held_out(cfg: ModelConfig, tokens_path, max_samples) -> HeldOut:
    p = cfg.train.modulus
    inputs = load_data(cfg).test_inputs[:max_samples]
    return HeldOut(inputs, f"modular addition mod {p}, test split", [*map(str, range(p)), "="])
