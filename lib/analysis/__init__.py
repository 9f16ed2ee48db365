"""Attention analysis of the study's ViTs (research question 3): what attention looks at, and how faithful
attention-based explanations are.

    extract       attention maps, residual-stream tokens and head masks (hooks always removed)
    explain       explanation maps over the patch grid: CLS attention, rollout, gradient rollout,
                  Grad-CAM (pytorch-grad-cam), Integrated Gradients (captum), random
    metrics       mean attention distance, entropy, CLS concentration, offset profiles, head importance and
                  pruning, high-norm tokens
    faithfulness  deletion / insertion and positive / negative perturbation curves and AUCs, bootstrap CIs,
                  pointing game and relevance mass (quantus)
    compare       explanation methods compared on the same images: paired bootstrap differences, ties
    tables        one model over a data set as tidy tables
    plots         the figures
    explore       any trained run's curves, metrics and attention maps in JupyterLab (notebooks/explore)

Every function works on batches, at any input resolution, for every registered attention variant.
"""
