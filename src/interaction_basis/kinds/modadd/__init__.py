"""Kind ``modadd``: the paper's one-layer modular-addition transformer (method §B.1)."""
