"""The study's configuration: `params.yaml` and the profiles that rescale it.

    schema    every key of params.yaml with its type and range; `load_params` validates a file
    profiles  profiles/<name>.yaml override files and `make profile PROFILE=...` (`python -m lib.config.profiles`)

`python -m lib.config [params.yaml]` checks a file; `--effective` prints the values each run actually uses.
"""
from lib.config.schema import (AugmentParams, ConvexParams, EfficiencyParams, ModelParams, Params, ParamsError,
                               StudyParams, describe_errors, fingerprint, load_params, main)

__all__ = ["AugmentParams", "ConvexParams", "EfficiencyParams", "ModelParams", "Params", "ParamsError", "StudyParams",
           "describe_errors", "fingerprint", "load_params", "main"]
