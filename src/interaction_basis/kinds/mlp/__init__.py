"""Kind ``mlp``: a fully connected image classifier (method §B.2) on a local or hub dataset."""
