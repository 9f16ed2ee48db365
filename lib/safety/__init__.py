"""Reliability for safety-critical use (research question 4): robustness to corruption, calibration,
selective prediction, and the stability of attention maps under shift.

    corruptions  ImageNet-C corruptions (15, severities 0-5) at any image size, plus occlusion; seeded
    robustness   corruption error, relative CE, mCE against a baseline model
    calibration  ECE (torchmetrics), reliability bins, NLL, Brier, temperature scaling
    selective    risk-coverage curves, AURC, E-AURC, abstention thresholds for a target risk
    reliability  explanation-map similarity (top-k IoU, Spearman, JS), resolution stability, localisation
    maps         logits and explanation maps (CLS attention, rollout from lib.analysis) in batches
    shift        the per-condition rows of notebooks/safety.py (clean, corruptions, other resolutions)
    seeds        the encodings compared over training seeds (notebooks/safety_seeds.py): paired CIs, McNemar, mCE
    plots        the figures
    (the SYNTHETIC traffic-sign-like case-study data set lives in lib.data.signs)
"""
