"""Kind ``modular_mlp``: the planted-module MLP of method §H, constructed (not trained) from its
settings and run on block vectors; it has no labels, and its planted blocks are the answer the
features and modules are scored against (rule score_ground_truth)."""
