"""Convex attention heads on frozen ViT features (research question 5).

    features.py   tokens of a trained backbone at any layer, projected to d dims (fitted on train)
    solver.py     FISTA + block singular-value thresholding, with a duality-gap certificate
    heads.py      convex linear / gated-ReLU attention, MLP-Mixer and FNO heads (derivations), baselines
    compare.py    the comparison protocol: seeds, equal tuning grids, validation selection, CIs
    interpret.py  token groups of the attention heads, mixer templates
    figures.py    accuracy / rank against regularization, maps over images

References: Sahiner et al. 2022, "Unraveling Attention via Convex Duality" (arXiv 2205.08078).
"""
