"""From edges to modules: the interaction graph, Leiden clustering, edge mass and the layout
that figures and the explorer share (method §D)."""
