"""How good a basis is: node and edge ablations (method §E) and scores against planted modules
(method §H)."""
