"""What features mean: per-feature evidence on held-out data, Fourier labels, attention-head
attribution, and the explorer page that shows them."""
