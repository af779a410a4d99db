"""The LIB-vs-PCA summary of an experiment and its figures."""
