"""Training recipes, one module per trained kind: mod-add transformer, image MLP, toy LM."""
