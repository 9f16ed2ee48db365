"""Accuracy of the study's trained runs at other test resolutions (the `evaluate` stage), and its tables.

    accuracy  accuracy versus test resolution for every run and extra seed, cached by code, weights and data
    report    the per-run results as the study's tables (position encodings, attention variants, seeds)

RQ1's controlled design (zoom and field of view, seeds, test-time rescalings) lives in lib.extrapolation.
"""
