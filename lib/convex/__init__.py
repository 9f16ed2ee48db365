"""Convex attention heads on frozen ViT features (research question 5).

    features.py   tokens of a frozen backbone (an RQ1 seed) at any layer, projected to d dims (fitted on train);
                  grey/colour matching for transfer, the check that no test image was in the backbone's training
    solver.py     FISTA + block singular-value thresholding, with a duality-gap certificate
    heads.py      convex linear / gated-ReLU attention, MLP-Mixer and FNO heads (derivations), baselines
    compare.py    the heads, the protocol (seeds, equal tuning grids, validation selection) and the paired
                  differences that answer one question each
    interpret.py  token groups of the attention heads, mixer templates
    report.py     the report's tables and sentences, each computed from the stage's result tables
    figures.py    accuracy / rank against regularization, paired differences, maps over images
    benchmark.py  wall time of the FISTA solver vs cvxpy on the same program (python -m lib.convex.benchmark)

References: Sahiner et al. 2022, "Unraveling Attention via Convex Duality" (arXiv 2205.08078).
"""
