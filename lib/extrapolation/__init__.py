"""RQ1, resolution extrapolation: test protocols, the per-cell training and testing of every seed, and the
comparison of cells by paired differences over seeds."""
