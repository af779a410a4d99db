"""Inputs of the models: modular addition, block vectors, images, text corpora (from the hub or
local folders) and the synthetic induction corpus."""
