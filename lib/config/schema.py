"""The schema of `params.yaml`, validated before any work is done.

Every key is declared here with its type and range. A misspelt key, a wrong type, an out-of-range
value or a name that points nowhere (an unknown attention, a variant the study does not define)
raises `ParamsError`, whose message names the file, the key and what was expected, for example

    params.yaml: train.epocs: unknown key (did you mean 'epochs'?)

`python -m lib.config [params.yaml]` checks a file and exits non-zero on the first problem list.
"""
import difflib
import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lib.data import DATASETS, EXTERNAL_DATASETS, dataset_info
from lib.efficiency.benchmark import COMPARED_MODELS
from lib.layers.attention import ATTENTION_LAYERS
from lib.layers.position import POSITION_ENCODINGS, create_position_encoding

PositiveInt = Annotated[int, Field(gt=0)]
Resolution = Annotated[int, Field(ge=4, le=4096)]


def _strictly_increasing(value: list) -> list:
    if sorted(set(value)) != value:
        raise ValueError(f"must be strictly increasing without repeats, got {value}")
    return value


Increasing = AfterValidator(_strictly_increasing)  # for lists of resolutions, grids, severities


def _at_least_two(value: list) -> list:
    if len(value) < 2:
        raise ValueError(f"{value} gives no confidence interval over seeds; list at least 2")
    return value


# training seeds that a result's confidence interval is computed over (RQ1 cells, RQ5 backbones)
SeedsForInterval = Annotated[list[Annotated[int, Field(ge=0)]], Increasing, AfterValidator(_at_least_two)]


class Strict(BaseModel):
    """Unknown keys and silent type coercion (e.g. "10" for 10) are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelParams(Strict):
    """Architecture shared by every variant (a variant may override it)."""

    patch_size: PositiveInt = 4
    embed_dim: PositiveInt = 64
    depth: PositiveInt = 4
    num_heads: PositiveInt = 4
    mlp_ratio: Annotated[float, Field(ge=0)] = 2.0  # 0: attention-only blocks, no MLP (Bermeitinger et al. 2024)
    drop_path_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    init_values: Annotated[float, Field(gt=0)] | None = None
    rope_theta: Annotated[float, Field(gt=1)] | None = None
    global_pool: Literal["token", "avg"] = "token"
    num_registers: Annotated[int, Field(ge=0)] = 0  # register tokens after CLS (Darcet et al. 2024); 0: none

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        return self


Fraction = Annotated[float, Field(gt=0, le=1)]


class AugmentParams(Strict):
    """Training augmentation: light shifts and zooms, or RandomResizedCrop-style crops (`crop_area` set);
    no flips by default (the shapes labels are left/right/above/below)."""

    translate: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    scale: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # RandomResizedCrop instead of translate/scale: crops of this share of the image area, resized back
    crop_area: Annotated[list[Fraction], Field(min_length=2, max_length=2), Increasing] | None = None
    crop_ratio: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2, max_length=2)] = [0.75, 1.3333]
    hflip: bool = False                    # mirror half the images (never for shapes: its labels are left/right)

    @model_validator(mode="after")
    def _ratio_ordered(self):
        if self.crop_ratio[0] > self.crop_ratio[1]:
            raise ValueError(f"crop_ratio: expected [lowest, highest] aspect ratio, got {self.crop_ratio}")
        return self


class TrainParams(Strict):
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    lr: Annotated[float, Field(gt=0, le=1)] = 2e-3
    min_lr: Annotated[float, Field(ge=0, le=1)] = 1e-5
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.05
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    grad_clip: Annotated[float, Field(gt=0)] | None = 1.0
    augment: AugmentParams = AugmentParams()
    train_subset: PositiveInt | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the forward pass (GPU profiles)
    compile: bool = False  # torch.compile the training step (lib/run/compiling.py); eager where a variant cannot

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be smaller than epochs={self.epochs}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        return self


class EvaluateParams(Strict):
    batch_size: PositiveInt = 500


class DatasetParams(Strict):
    """A dataset's resolutions, and `train` and `model` keys that differ for it (e.g. fewer epochs, a larger
    patch for ImageNet's 224 px)."""

    train_resolution: Resolution
    eval_resolutions: Annotated[list[Resolution], Field(min_length=1), Increasing]
    train: dict[str, Any] = {}
    model: dict[str, Any] = {}


class VariantParams(Strict):
    """One trained configuration: an attention variant, a position encoding, optional overrides."""

    attention: str
    pos_embed: str
    attention_kwargs: dict[str, Any] = {}
    pos_embed_kwargs: dict[str, Any] = {}  # constructor arguments of the encoding (lib.layers.position)
    model: dict[str, Any] = {}
    weights_from: str | None = None  # never trained: evaluated with this variant's weights (see Params.test_time)

    @field_validator("attention")
    @classmethod
    def _known_attention(cls, value: str) -> str:
        return _known(value, ATTENTION_LAYERS, "attention")

    @field_validator("pos_embed")
    @classmethod
    def _known_pos_embed(cls, value: str) -> str:
        return _known(value, POSITION_ENCODINGS, "position encoding")

    @model_validator(mode="after")
    def _attention_kwargs_match_the_layer(self):
        """attention_kwargs must be constructor arguments of the chosen layer (besides the shared ones)."""
        shared = {"self", "dim", "num_heads", "qkv_bias", "attn_drop", "proj_drop"}
        accepted = set(inspect.signature(ATTENTION_LAYERS[self.attention].__init__).parameters) - shared
        for key in self.attention_kwargs:
            _known(key, accepted, f"argument of attention {self.attention!r}", key=f"attention_kwargs.{key}")
        part = POSITION_ENCODINGS[self.pos_embed].configurable
        for key in self.pos_embed_kwargs:
            _known(key, part.accepted_kwargs() if part else [], f"argument of position encoding {self.pos_embed!r}",
                   key=f"pos_embed_kwargs.{key}")
        return self


class StudyParams(Strict):
    """A DVC matrix of runs: every dataset x every variant."""

    datasets: Annotated[list[str], Field(min_length=1)]
    variants: Annotated[list[str], Field(min_length=1)]

    def pairs(self) -> list[tuple[str, str]]:
        """Every (dataset, variant) of the matrix, datasets outer."""
        return [(d, v) for d in self.datasets for v in self.variants]


class SeedsParams(Strict):
    """Extra training seeds of chosen runs (DVC matrix `train-seeds`), so results carry CIs over seeds."""

    runs: StudyParams                      # which runs to repeat (each must be trained by a matrix)
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Increasing] = []  # besides `seed`; [] trains none
    map_images: PositiveInt = 200          # attention maps of each extra seed vs `seed` on the first N test images
    top_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2  # top-k IoU of those maps over this share of patches


class EfficiencyParams(Strict):
    """The efficiency benchmark: cost versus token count per attention variant, and lib versus timm."""

    grids: Annotated[list[Annotated[int, Field(ge=1, le=128)]], Field(min_length=2), Increasing]
    variants: Annotated[list[str], Field(min_length=1)]
    baseline: str = "rope_mixed"
    tokens_per_batch: PositiveInt = 4096
    repeats: PositiveInt = 3
    slope_min_tokens: PositiveInt = 256
    crossover_margin: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    timm_grid: PositiveInt = 14
    timm_batch: PositiveInt = 32
    timm_rounds: PositiveInt = 5
    compiled: list[Literal[COMPARED_MODELS]] = []

    @model_validator(mode="after")
    def _baseline_measured(self):
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} must be one of efficiency.variants {self.variants}")
        return self


class AnalysisParams(Strict):
    """The attention analysis (notebooks/analysis.py) of every run in `runs`, then across runs."""

    runs: StudyParams                      # which trained runs to analyse (each must be trained by a matrix)
    split: Literal["train", "val", "test"] = "test"
    max_images: PositiveInt | None = None  # attention statistics and head importance on the first N images (null: all)
    num_images: PositiveInt = 500          # explanations, faithfulness and localisation on the first N images
    ig_steps: PositiveInt = 16             # Integrated Gradients: Gauss-Legendre nodes along the path
    perturbation_steps: PositiveInt = 10   # removal fractions 0, 1/steps, ..., 1 of the patches
    head_fusion: Literal["mean", "max", "min"] = "mean"
    discard_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    top_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    high_norm_threshold: Annotated[float, Field(gt=0)] = 5.0
    random_orders: PositiveInt = 3         # random head-pruning orders, the baseline of the importance order
    bootstrap_resamples: PositiveInt = 1000
    example_images: PositiveInt = 6
    reference_pos_embed: str = "rope_mixed"  # the position encoding of the attention-variant comparison
    fills: Annotated[list[str], Field(min_length=1)] = ["mean", "blur", "other_image"]  # deletion / insertion
                                           # fills (lib/analysis/fills.py); the first is the headline tables'
    control_variants: list[str] | None = None  # analysed runs of these variants get the explanation controls: every
                                           # fill and the sanity check (null: all); the others the first fill only
    ig_baseline: str = "black"             # Integrated Gradients integrates from this image (best none of the fills)
    sanity_images: Annotated[int, Field(ge=0)] = 20  # cascading randomisation on the first N explained images (0: off)
    sanity_max_correlation: Annotated[float, Field(gt=-1, lt=1)] = 0.5  # a method fails where, every layer
                                           # re-drawn, its rank-correlation CI reaches this
    seed_cells: list[str] = []             # rq1 cells whose seeds the `analysis-seeds` stage explains ([]: off)
    seeds: SeedsForInterval = [0, 1, 2]    # those seeds, a subset of rq1.seeds

    @field_validator("fills")
    @classmethod
    def _known_fills(cls, value: list[str]) -> list[str]:
        from lib.analysis.fills import FILLS  # imports torchvision: only when validating
        for name in value:
            _known(name, FILLS, "fill")
        if len(set(value)) < len(value):
            raise ValueError(f"every fill once, got {value}")
        return value

    @field_validator("ig_baseline")
    @classmethod
    def _known_ig_baseline(cls, value: str) -> str:
        from lib.analysis.fills import IG_BASELINES
        _known(value, IG_BASELINES, "Integrated Gradients baseline")
        return value


class SafetyParams(Strict):
    """Robustness, calibration, selective prediction and attention reliability (notebooks/safety.py)."""

    runs: StudyParams                      # which trained runs to evaluate (each must be trained by a matrix)
    corruptions: Annotated[list[str], Field(min_length=1)]
    severities: Annotated[list[Annotated[int, Field(ge=1, le=5)]], Field(min_length=1), Increasing] = [1, 2, 3, 4, 5]
    resolution_shift: bool = True          # also test at the dataset's other eval_resolutions
    num_test_images: PositiveInt = 500     # the first N test images (the stored order is already shuffled)
    num_val_images: PositiveInt | None = None  # temperature and thresholds from the first N val images (null: all)
    target_risk: Annotated[float, Field(gt=0, lt=1)] = 0.01
    top_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    example_corruptions: list[str] = []
    example_severity: Annotated[int, Field(ge=1, le=5)] = 3
    num_examples: PositiveInt = 4
    baseline_variant: str = "ape"          # the CE / mCE reference, per dataset
    moderate_severity: Annotated[int, Field(ge=1, le=5)] = 3
    # what the corruptions' lengths in pixels are scaled to: the image ('image') or the model's patch ('patch'),
    # lib.safety.corruptions.length_reference
    corruption_lengths: Literal["image", "patch"] = "patch"
    # DVC stage `safety-seeds`: every run trained with each of these seeds and compared over them
    seeds: SeedsForInterval = [0, 1, 2]
    seed_test_images: PositiveInt | None = None  # the first N test images there (null: the whole split)
    seed_scales: list[Annotated[float, Field(gt=0)]] = [1.5]  # other test resolutions, x the training resolution

    @field_validator("corruptions", "example_corruptions")
    @classmethod
    def _known_corruptions(cls, value: list[str]) -> list[str]:
        from lib.safety.corruptions import CORRUPTIONS  # imports scipy and scikit-image: only when validating
        for name in value:
            _known(name, CORRUPTIONS, "corruption")
        return value


class ConvexSetting(NamedTuple):
    """One backbone -> data pairing of the convex-head study, written '<backbone>-><dataset>' in params.yaml (no blanks:
    a profile's values must survive a shell: `dvc exp run $(python -m lib.config.profiles paper --set-args)`)."""

    backbone: str                     # an rq1 cell: its seed-k weights are seed k's frozen backbone
    dataset: str                      # the data set the heads are fitted and tested on (another one: transfer)

    @property
    def name(self) -> str:
        return f"{self.backbone}->{self.dataset}"

    @classmethod
    def parse(cls, text: str) -> "ConvexSetting":
        parts = [part.strip() for part in text.split("->")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{text!r} is not '<backbone rq1 cell>-><dataset>'")
        return cls(*parts)


class ConvexParams(Strict):
    """Convex heads on frozen tokens of RQ1's trained seeds (notebooks/convex.py, DVC stage `convex`)."""

    settings: Annotated[list[str], Field(min_length=1)]  # '<backbone rq1 cell>-><dataset>'
    seeds: SeedsForInterval = [0, 1, 2, 3, 4]
    heads: list[str] | None = None    # the heads compared (lib.convex.compare.HEADS); null: all of them
    layer: Annotated[int, Field(ge=0)] = 2
    dim: PositiveInt = 8              # projected token dimension d
    train_size: PositiveInt = 500     # training images per seed
    grid_size: Annotated[int, Field(ge=3)] = 6  # regularization grid length of every head (equal tuning budgets)
    beta_ratio_max: Annotated[float, Field(gt=0, le=1)] = 0.3
    beta_ratio_min: Annotated[float, Field(gt=0, le=1)] = 3e-5
    weight_decay_max: Annotated[float, Field(gt=0)] = 1.0
    weight_decay_min: Annotated[float, Field(gt=0)] = 1e-6
    gates: PositiveInt = 8
    fno_modes: PositiveInt = 2
    num_heads: PositiveInt = 8
    softmax_heads: PositiveInt = 2
    max_iter: PositiveInt = 4000
    gap_tol: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    steps: PositiveInt = 150
    num_clusters: PositiveInt = 3
    cluster_images: PositiveInt = 50  # token groups vs object masks on the first N test images

    @field_validator("settings")
    @classmethod
    def _pairings(cls, value: list[str]) -> list[str]:
        names = [ConvexSetting.parse(text).name for text in value]
        if len(set(names)) != len(names):
            raise ValueError(f"a backbone -> dataset pairing is listed twice in {names}")
        return names

    def pairings(self) -> list[ConvexSetting]:
        return [ConvexSetting.parse(text) for text in self.settings]

    @field_validator("heads")
    @classmethod
    def _known_heads(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            from lib.convex.compare import HEADS
            for name in value:
                _known(name, HEADS, "convex head", key="convex.heads")
        return value


class SegmentationParams(Strict):
    """Dense prediction across resolutions (DVC stage `segmentation`, notebooks/segmentation.py): per-patch heads on
    the trained seeds of RQ1 cells, trained at the training resolution, scored by pixel mIoU at every scale."""

    cells: list[str]                                  # rq1 cells whose seeds are the backbones ([]: the stage is off)
    task: Literal["relation", "objects"] = "relation"  # pixel classes: first/second object along the label, or identity
    seeds: SeedsForInterval = [0, 1, 2, 3, 4]         # a subset of rq1.seeds
    scales: Annotated[list[Annotated[float, Field(gt=0)]], Increasing] = [0.5, 0.75, 1.0, 1.5, 2.0]  # zoom protocol
    comparisons: list[str] = []                       # 'first - second' variants: paired differences over seeds
    train_images: PositiveInt = 500                   # training images of the heads (training resolution)
    test_images: PositiveInt = 200                    # the first N test images, at every scale
    probe_c: Annotated[float, Field(gt=0)] = 1.0      # linear probe: inverse L2 strength (scikit-learn's C)
    finetune_epochs: Annotated[int, Field(ge=0)] = 3  # light fine-tune of backbone + head (0: probe only)
    finetune_lr: Annotated[float, Field(gt=0)] = 5e-4
    batch_size: PositiveInt = 64

    @field_validator("scales")
    @classmethod
    def _includes_training_scale(cls, value: list[float]) -> list[float]:
        if 1.0 not in value:
            raise ValueError(f"segmentation.scales must include 1.0 (the training resolution), got {value}")
        return value

    @field_validator("comparisons")
    @classmethod
    def _differences(cls, value: list[str]) -> list[str]:
        for text in value:
            if len(text.split(" - ")) != 2:
                raise ValueError(f"segmentation.comparisons: {text!r} is not 'first - second' (two variants)")
        return value

    def pairs(self) -> list[tuple[str, str]]:
        """The comparisons as (first, second) variant names."""
        return [tuple(text.split(" - ")) for text in self.comparisons]


class PretrainedModel(Strict):
    """One pretrained model of the `pretrained` stage: a timm RoPE-ViT and its local weights file."""

    timm_model: str                  # e.g. vit_small_patch16_rope_mixed_224 (timm's naver-ai/rope-vit ports)
    checkpoint: str | None           # its weights, a path under data_root (never downloaded); null: random weights (dry run)
    timm_kwargs: dict[str, Any] = {}  # passed to timm.create_model (e.g. a smaller depth for a dry run)

    @field_validator("timm_model")
    @classmethod
    def _timm_knows(cls, value: str) -> str:
        import timm
        if not timm.is_model(value):
            raise ValueError(f"{value!r} is not a timm model (e.g. vit_small_patch16_rope_mixed_224)")
        return value


class PretrainedParams(Strict):
    """Pretrained RoPE-ViTs tested zero-shot at many resolutions (DVC matrix `pretrained`, notebooks/pretrained.py)."""

    models: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")], PretrainedModel] = {}  # the catalogue, by name
    run: Annotated[list[str], Increasing] = []  # the models tested, one stage each ([]: no stage); the paper profile's
    dataset: str = "imagenet"        # an image-folder data set under data_root: <dataset>/val/<wnid>/<image>
    resolutions: Annotated[list[Resolution], Field(min_length=1), Increasing] = [128, 160, 192, 224, 256, 320, 384, 448, 512]
    rescalings: list[Literal["pi", "ntk", "yarn"]] = ["pi", "ntk", "yarn"]  # test-time rules, RoPE-Mixed models only
    test_images: PositiveInt | None = None  # the first N validation images (null: all)
    batch_size: PositiveInt = 64

    @model_validator(mode="after")
    def _run_known_models(self):
        for name in self.run:
            _known(name, self.models, "model of pretrained.models", key="pretrained.run")
        return self


class Rq1Params(Strict):
    """The resolution study (DVC matrix `rq1`, notebooks/rq1.py): every cell trains every seed, then is tested at
    every scale under every protocol; `rq1-summary` compares cells by paired differences over seeds."""

    cells: Annotated[list[str], Field(min_length=1)]     # <dataset>-<augmentation>-<variant>
    augmentations: dict[str, AugmentParams]               # the training augmentations cells name
    seeds: SeedsForInterval = [0, 1, 2, 3, 4]
    scales: Annotated[list[Annotated[float, Field(gt=0, le=16)]], Field(min_length=1), Increasing] = [0.5, 1.0, 2.0]
    protocols: Annotated[list[str], Field(min_length=1)] = ["zoom"]
    rescalings: list[str] = []             # test-time rules on the weights of every RoPE-Mixed cell
    test_images: PositiveInt = 200         # the first N test images, the same for every cell, seed and scale
    entropy_images: PositiveInt = 32       # attention entropy on the first N of them (zoom protocol)
    max_test_grid: PositiveInt | None = None  # test grids above this many patches per side are skipped (cost)
    workers: PositiveInt = 2               # seeds trained at once, one process each
    threads: PositiveInt = 1               # torch threads of each process: the floats depend on it, not on workers

    @field_validator("protocols", "rescalings")
    @classmethod
    def _known_names(cls, value: list[str], info) -> list[str]:
        from lib.extrapolation.protocols import PROTOCOLS
        from lib.layers.rope_rescale import RESCALINGS
        choices, what = {"protocols": (PROTOCOLS, "protocol"), "rescalings": (RESCALINGS, "test-time rescaling")}[info.field_name]
        for name in value:
            _known(name, choices, what)
        return value

    @model_validator(mode="after")
    def _comparable(self):
        if 1.0 not in self.scales:
            raise ValueError(f"scales: {self.scales} must include 1.0 (the training resolution, every comparison's anchor)")
        return self

    def parse(self, cell: str) -> "Rq1Cell":
        """The parts of a cell name '<dataset>-<augmentation>-<variant>', optionally '-g<grid>': trained on a
        grid x grid patch grid instead of the dataset's `train_resolution`."""
        parts = cell.split("-")
        grid = None
        if len(parts) == 4 and parts[3].startswith("g"):
            if not parts[3][1:].isdigit() or int(parts[3][1:]) < 2:
                raise ValueError(f"rq1.cells: {cell!r}: {parts[3]!r} is not a training grid 'g<patches per side>' (at least g2)")
            grid = int(parts[3][1:])
            parts = parts[:3]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"rq1.cells: {cell!r} is not '<dataset>-<augmentation>-<variant>' or "
                             f"'<dataset>-<augmentation>-<variant>-g<grid>'")
        return Rq1Cell(*parts, train_grid=grid)


class Rq1Cell(NamedTuple):
    dataset: str
    augmentation: str
    variant: str
    train_grid: int | None = None  # patches per side it is trained at; None: the dataset's train_resolution


# The DVC matrices that train runs (dvc.yaml: train, train-zoo, train-case-study); no run in two of them.
TRAINING_MATRICES = ("study", "zoo", "case_study")


class Params(Strict):
    profile: str = "default"               # the profile whose values the file holds (profiles/, lib/config/profiles.py)
    seed: Annotated[int, Field(ge=0)] = 0
    data_root: str = "data"
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # where training and evaluation run (auto: CUDA if present)
    data_workers: Annotated[int, Field(ge=0)] = 0   # DataLoader processes that decode image folders (0: in-process)
    # torch threads of a one-process stage: train*, analysis@, safety@, evaluate (floats depend on it; null: torch's
    # default, every core)
    threads: Annotated[int, Field(ge=1)] | None = None
    # `make repro` runs that many independent stages at once (lib/run/lanes.py); results do not depend on it
    parallel_stages: Annotated[int, Field(ge=1)] = 1
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    datasets: dict[str, DatasetParams]
    variants: dict[str, VariantParams]
    study: StudyParams
    zoo: StudyParams
    case_study: StudyParams
    # evaluated, not trained: variants whose position encoding is a test-time change of a trained one's (at the
    # training grid it is that encoding, bit for bit), run with that variant's weights (`weights_from`)
    test_time: StudyParams | None = None
    seeds: SeedsParams
    efficiency: EfficiencyParams
    analysis: AnalysisParams
    safety: SafetyParams
    convex: ConvexParams | None = None
    rq1: Rq1Params | None = None
    segmentation: SegmentationParams | None = None
    pretrained: PretrainedParams = PretrainedParams()

    @model_validator(mode="after")
    def _references_resolve(self):
        for name in self.datasets:
            _known(name, DATASETS + EXTERNAL_DATASETS, "dataset", key=f"datasets.{name}")
        for group in TRAINING_MATRICES:
            self._matrix_names_resolve(group)
            for name in getattr(self, group).variants:
                if self.variants[name].weights_from is not None:
                    self._check_weights_from(name, self.variants[name])  # a wrong weights_from is the first problem
                    raise ValueError(f"{group}.variants: {name} is never trained, it is evaluated with the weights of "
                                     f"{self.variants[name].weights_from} (variants.{name}.weights_from): list it under test_time")
        for name in self.efficiency.variants:
            _known(name, self.variants, "variant defined under 'variants'", key="efficiency.variants")
        trained = set()
        for group in TRAINING_MATRICES:
            pairs = set(getattr(self, group).pairs())
            twice = sorted(f"{d}-{v}" for d, v in pairs & trained)
            if twice:
                raise ValueError(f"{group}: {twice} already trained by another matrix (each run must belong to one)")
            trained |= pairs
        for group in ("analysis", "safety", "seeds"):
            for dataset, variant in getattr(self, group).runs.pairs():
                if (dataset, variant) not in trained:
                    source = self.variants[variant].weights_from if variant in self.variants else None
                    hint = f" ({variant} runs on {dataset}-{source}'s weights: use that run)" if source else ""
                    raise ValueError(f"{group}.runs: {dataset}-{variant} is not trained by any of {TRAINING_MATRICES}{hint}")
        if self.seed in self.seeds.seeds:
            raise ValueError(f"seeds.seeds: {self.seed} is the study's own `seed` (its runs are trained already)")
        if self.rq1 is not None:
            self._check_rq1()
        if self.convex is not None:
            self._check_convex()
        if self.segmentation is not None:
            self._check_segmentation()
        if self.analysis.seed_cells:
            self._check_analysis_seeds()
        _known(self.analysis.reference_pos_embed, POSITION_ENCODINGS, "position encoding", key="analysis.reference_pos_embed")
        for name in self.analysis.control_variants or []:
            _known(name, self.variants, "variant defined under 'variants'", key="analysis.control_variants")
        _known(self.safety.baseline_variant, self.variants, "variant defined under 'variants'", key="safety.baseline_variant")
        _known(self.safety.baseline_variant, self.safety.runs.variants,
               "variant of safety.runs.variants (safety-seeds compares the others with it)", key="safety.baseline_variant")
        for name in self.datasets:
            self.train_for(name)  # validates the override keys and values
        for name, variant in self.variants.items():
            model = self.model_for(name)  # validates the override keys and values
            try:  # the layer's own argument checks (e.g. MoH's top_k <= routed heads), at the variant's width
                ATTENTION_LAYERS[variant.attention](dim=model.embed_dim, num_heads=model.num_heads, **variant.attention_kwargs)
            except (ValueError, TypeError) as err:
                raise ValueError(f"variants.{name}.attention_kwargs: {err}") from None
            if POSITION_ENCODINGS[variant.pos_embed].rotary and (model.embed_dim // model.num_heads) % 4:
                raise ValueError(f"variants.{name}: RoPE needs head_dim (embed_dim / num_heads) divisible by 4, "
                                 f"got {model.embed_dim} / {model.num_heads}")
            if POSITION_ENCODINGS[variant.pos_embed].bias and not ATTENTION_LAYERS[variant.attention].supports_bias:
                raise ValueError(f"variants.{name}: position encoding {variant.pos_embed!r} adds a bias to the "
                                 f"attention logits, which attention {variant.attention!r} does not take (use 'softmax')")
            try:  # the encoding's own argument checks, at the variant's shape
                create_position_encoding(variant.pos_embed, model.embed_dim, model.num_heads, model.depth, (2, 2),
                                         model.rope_theta, variant.pos_embed_kwargs)
            except (ValueError, TypeError) as err:
                raise ValueError(f"variants.{name}.pos_embed_kwargs: {err}") from None
        for name, variant in self.variants.items():
            if variant.weights_from is not None:
                self._check_weights_from(name, variant)
        if self.test_time is not None:
            self._matrix_names_resolve("test_time")
            for name in self.test_time.variants:
                if self.variants[name].weights_from is None:
                    raise ValueError(f"test_time.variants: {name} has no weights_from (the trained variant whose weights "
                                     f"it is evaluated with)")
            for dataset, variant in self.test_time.pairs():
                source = self.variants[variant].weights_from
                if (dataset, source) not in trained:
                    raise ValueError(f"test_time: {dataset}-{variant} is evaluated with the weights of {dataset}-{source}, "
                                     f"which none of {TRAINING_MATRICES} trains")
        for dataset, variant in [(d, None) for d in self.datasets] + sorted(trained | set(self.test_time_runs())):
            patch = self.model_for(variant, dataset).patch_size  # validates the dataset's model overrides too
            if variant is not None and "patch_size" in self.variants[variant].model:
                source = f"variants.{variant}.model.patch_size"
            elif "patch_size" in self.datasets[dataset].model:
                source = f"datasets.{dataset}.model.patch_size"
            else:
                source = "model.patch_size"
            spec = self.datasets[dataset]
            for key, res in [("train_resolution", spec.train_resolution)] + [("eval_resolutions", r) for r in spec.eval_resolutions]:
                if res % patch:
                    raise ValueError(f"datasets.{dataset}.{key}: {res} is not a multiple of {source}={patch}")
        return self

    def _check_rq1(self) -> None:
        """Every cell names a defined dataset, augmentation and trained variant; field of view fits its data sets."""
        from lib.extrapolation.protocols import FIELD_OF_VIEW_DATASETS
        for cell in self.rq1.cells:
            dataset, augmentation, variant, _ = self.rq1.parse(cell)
            _known(dataset, self.datasets, "dataset defined under 'datasets'", key=f"rq1.cells: {cell}")
            _known(augmentation, self.rq1.augmentations, "augmentation defined under 'rq1.augmentations'", key=f"rq1.cells: {cell}")
            _known(variant, self.variants, "variant defined under 'variants'", key=f"rq1.cells: {cell}")
            if self.variants[variant].weights_from is not None:
                raise ValueError(f"rq1.cells: {cell}: {variant} is a test-time variant; list the trained one and "
                                 f"rq1.rescalings for test-time rules")
            if "field_of_view" in self.rq1.protocols and dataset not in FIELD_OF_VIEW_DATASETS:
                raise ValueError(f"rq1.protocols: field_of_view is defined for {FIELD_OF_VIEW_DATASETS}, "
                                 f"not for cell {cell}'s {dataset}")
        if len(set(self.rq1.cells)) != len(self.rq1.cells):
            raise ValueError(f"rq1.cells: a cell is listed twice in {self.rq1.cells}")

    def _check_backbone_seeds(self, section: str, backbones_key: str, seeds: list[int]) -> None:
        """A stage whose backbones are rq1 cells needs an rq1 section that trains every one of its seeds."""
        if self.rq1 is None:
            raise ValueError(f"{section}.{backbones_key}: the backbones are rq1 cells, but params has no rq1 section")
        missing = sorted(set(seeds) - set(self.rq1.seeds))
        if missing:
            raise ValueError(f"{section}.seeds: {missing} not in rq1.seeds {self.rq1.seeds} (seed k's backbone is the "
                             f"cell's seed-k weights)")

    def _check_convex(self) -> None:
        """Every setting's backbone is an RQ1 cell trained for every convex seed, its data set is defined."""
        self._check_backbone_seeds("convex", "settings", self.convex.seeds)
        for setting in self.convex.pairings():
            key = f"convex.settings ({setting.name})"
            _known(setting.backbone, self.rq1.cells, "rq1 cell (rq1.cells)", key=f"{key} backbone")
            _known(setting.dataset, self.datasets, "dataset defined under 'datasets'", key=f"{key} dataset")
            _, _, variant, _ = self.rq1.parse(setting.backbone)
            depth = self.model_for(variant, self.rq1.parse(setting.backbone).dataset).depth
            if self.convex.layer > depth:
                raise ValueError(f"convex.layer: {self.convex.layer} exceeds the depth {depth} of backbone {setting.backbone}")

    def _check_analysis_seeds(self) -> None:
        """Every cell the analysis-seeds stage explains is an RQ1 cell trained for every one of its seeds."""
        self._check_backbone_seeds("analysis", "seed_cells", self.analysis.seeds)
        for cell in self.analysis.seed_cells:
            _known(cell, self.rq1.cells, "rq1 cell (rq1.cells)", key="analysis.seed_cells")
        if len(set(self.analysis.seed_cells)) < len(self.analysis.seed_cells):
            raise ValueError(f"analysis.seed_cells: a cell is listed twice in {self.analysis.seed_cells}")

    def _check_segmentation(self) -> None:
        """Every backbone is an RQ1 cell on a data set with object masks, trained for every segmentation seed."""
        if not self.segmentation.cells:  # the stage is off (the paper profile): nothing to check against rq1
            return
        self._check_backbone_seeds("segmentation", "cells", self.segmentation.seeds)
        variants = set()
        for cell in self.segmentation.cells:
            _known(cell, self.rq1.cells, "rq1 cell (rq1.cells)", key="segmentation.cells")
            dataset = self.rq1.parse(cell).dataset
            info = dataset_info(dataset, Path(self.data_root))
            if not info.get("has_masks", False):
                raise ValueError(f"segmentation.cells: {cell}'s data set {dataset} has no object masks to segment")
            if self.segmentation.task == "relation":
                from lib.segmentation.probe import RELATIONS
                if len(info["objects"]) != 2 or not all(any(f"_{r}_" in c for r in RELATIONS) for c in info["classes"]):
                    raise ValueError(f"segmentation.task: relation needs two objects and '<object>_<relation>_<object>' "
                                     f"classes; {cell}'s data set {dataset} has objects {info['objects']}")
            variants.add(self.rq1.parse(cell).variant)
        for first, second in self.segmentation.pairs():
            for name in (first, second):  # raw_patches: the control probe on the patches' own pixels
                _known(name, sorted(variants) + ["raw_patches"], "variant of a segmentation cell",
                       key="segmentation.comparisons")

    def _matrix_names_resolve(self, group: str) -> None:
        """Every dataset and variant of the matrix `group` is defined under `datasets` / `variants`."""
        for name in getattr(self, group).datasets:
            _known(name, self.datasets, "dataset defined under 'datasets'", key=f"{group}.datasets")
        for name in getattr(self, group).variants:
            _known(name, self.variants, "variant defined under 'variants'", key=f"{group}.variants")

    def _check_weights_from(self, name: str, variant: VariantParams) -> None:
        """A variant may run on another's weights only if it is that variant with a test-time position encoding."""
        key = f"variants.{name}.weights_from"
        source = _known(variant.weights_from, self.variants, "variant defined under 'variants'", key=key)
        base = POSITION_ENCODINGS[variant.pos_embed].test_time_of
        if base is None:
            test_time = sorted(n for n, spec in POSITION_ENCODINGS.items() if spec.test_time_of)
            raise ValueError(f"{key}: position encoding {variant.pos_embed!r} must be trained itself; only {test_time} "
                             f"run on another variant's weights")
        other = self.variants[source]
        if other.pos_embed != base or other.weights_from is not None:
            raise ValueError(f"{key}: {source} is a {other.pos_embed!r} variant"
                             f"{' that is not trained either' if other.weights_from else ''}; {variant.pos_embed!r} "
                             f"runs on the weights of a trained {base!r} variant")
        same = ("attention", "attention_kwargs", "model")
        differ = [field for field in same if getattr(other, field) != getattr(variant, field)]
        if differ:
            raise ValueError(f"{key}: {source} differs in {', '.join(differ)}; its weights fit an identical architecture only")

    def runs(self) -> list[tuple[str, str]]:
        """Every (dataset, variant) that `dvc repro` trains, matrix by matrix (TRAINING_MATRICES order)."""
        return [pair for group in TRAINING_MATRICES for pair in getattr(self, group).pairs()]

    def seed_runs(self) -> list[tuple[str, str, int]]:
        """Every (dataset, variant, seed) of the `train-seeds` matrix (the extra seeds only)."""
        return [(d, v, seed) for d, v in self.seeds.runs.pairs() for seed in self.seeds.seeds]

    def test_time_runs(self) -> list[tuple[str, str]]:
        """Every (dataset, variant) of `test_time`: evaluated with the weights of (dataset, weights_from)."""
        return self.test_time.pairs() if self.test_time is not None else []

    def weights_variant(self, variant: str) -> str:
        """The variant whose trained weights `variant` runs with: its `weights_from`, else itself."""
        return self.variants[variant].weights_from or variant

    def model_for(self, variant: str | None, dataset: str | None = None) -> ModelParams:
        """The architecture of `variant` on `dataset`: `model`, then the dataset's `model` overrides, then the
        variant's (either may be None: no overrides of its own)."""
        arch = self.model
        if dataset is not None:
            arch = _override(ModelParams, arch, self.datasets[dataset].model, f"datasets.{dataset}.model")
        if variant is not None:
            arch = _override(ModelParams, arch, self.variants[variant].model, f"variants.{variant}.model")
        return arch

    def rq1_train_resolution(self, cell: str) -> int:
        """Pixels per side an RQ1 cell trains at: its '-g<grid>' times the patch size, else the dataset's."""
        dataset, _, variant, grid = self.rq1.parse(cell)
        return grid * self.model_for(variant, dataset).patch_size if grid else self.datasets[dataset].train_resolution

    def train_for(self, dataset: str) -> "TrainParams":
        """Training settings for `dataset`: `train` with the dataset's `train` overrides applied."""
        return _override(TrainParams, self.train, self.datasets[dataset].train, f"datasets.{dataset}.train")


def _override(schema: type[BaseModel], base: BaseModel, overrides: dict, where: str):
    """`base` with `overrides` merged in (nested mappings key by key), validated against `schema`."""
    def merge(into: dict, changes: dict) -> dict:
        return {k: merge(into[k], v) if isinstance(v, dict) and isinstance(into.get(k), dict) else v
                for k, v in {**into, **changes}.items()}
    try:
        return schema.model_validate(merge(base.model_dump(), overrides))
    except ValidationError as err:
        problems = "; ".join(f"{where}{'.' if e['loc'] else ': '}{_describe(e, schema)}" for e in err.errors())
        raise ValueError(problems) from None


def _known(value: str, choices, what: str, key: str | None = None) -> str:
    if value not in choices:
        hint = difflib.get_close_matches(value, list(choices), n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        where = f"{key}: " if key else ""
        raise ValueError(f"{where}unknown {what} {value!r}{suggestion}; expected one of {sorted(choices)}")
    return value


class ParamsError(ValueError):
    """A params file that does not match the schema; the message lists every problem."""


def _describe(error: dict, root: type[BaseModel] | None = None) -> str:
    """One line per pydantic error: dotted key, what is wrong, and a suggestion for misspelt keys.

    root: the schema the error's location is relative to (default: Params).
    """
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        model = _schema_at(loc[:-1], root or Params)
        known = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(loc[-1], known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f"; expected one of {sorted(known)}" if known else ""
        return f"{key}: unknown key{suggestion}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "value_error":
        return f"{key + ': ' if key else ''}{message}"
    return f"{key}: {message} (got {error.get('input')!r})"


def _schema_at(path: list[str], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `path` below `root` (None where it is free-form)."""
    model: Any = root
    for part in path:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(part)
            model = field.annotation if field else None
        else:  # a dict[str, Model] field: any key selects the value model
            model = get_args(model)[-1] if get_origin(model) is dict else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming every bad key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (expected the study's YAML parameters file)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    problems = describe_errors(Params, raw)
    if problems:
        raise ParamsError("\n".join(f"{path}: {line}" for line in problems))
    return Params.model_validate(raw)


def describe_errors(schema: type[BaseModel], raw: dict) -> list[str]:
    """One line per problem of `raw` against `schema` (see `_describe`); [] when it is valid."""
    try:
        schema.model_validate(raw)
    except ValidationError as err:
        return [_describe(e, schema) for e in err.errors()]
    return []


def fingerprint(data: Any) -> str:
    """Short stable hash of JSON-serializable data (used to match checkpoints to their configuration)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def effective_settings(params: Params) -> list[dict]:
    """What each trained run actually uses once every override is applied (dataset `train` and `model` overrides,
    the variant's `model`, an RQ1 cell's augmentation and training grid): one row per stage and run."""
    def augmentation(augment: AugmentParams) -> str:
        if augment.crop_area is not None:
            return f"crop {augment.crop_area[0]:g}-{augment.crop_area[1]:g}" + (" flip" if augment.hflip else "")
        return f"shift {augment.translate:g} zoom {augment.scale:g}" + (" flip" if augment.hflip else "")

    def row(stage: str, run: str, dataset: str, variant: str, seeds: list[int], train: TrainParams, resolution: int) -> dict:
        arch = params.model_for(variant, dataset)
        return {"stage": stage, "run": run, "pos_embed": params.variants[variant].pos_embed,
                "attention": params.variants[variant].attention, "seeds": ",".join(map(str, seeds)),
                "epochs": train.epochs, "batch": train.batch_size, "lr": train.lr, "warmup": train.warmup_epochs,
                "augment": augmentation(train.augment), "px": resolution, "grid": resolution // arch.patch_size,
                "dim": arch.embed_dim, "depth": arch.depth, "heads": arch.num_heads}

    rows = []
    extra = {(d, v): list(params.seeds.seeds) for d, v in params.seeds.runs.pairs()}
    for group in TRAINING_MATRICES:
        for dataset, variant in getattr(params, group).pairs():
            rows.append(row(f"train ({group})", f"{dataset}-{variant}", dataset, variant,
                            [params.seed] + extra.get((dataset, variant), []), params.train_for(dataset),
                            params.datasets[dataset].train_resolution))
    for cell in params.rq1.cells if params.rq1 is not None else []:
        dataset, augment, variant, _ = params.rq1.parse(cell)
        train = params.train_for(dataset).model_copy(update={"augment": params.rq1.augmentations[augment]})
        rows.append(row("rq1", cell, dataset, variant, list(params.rq1.seeds), train, params.rq1_train_resolution(cell)))
    return rows


def print_effective(params: Params) -> None:
    """`effective_settings` as an aligned text table."""
    rows = effective_settings(params)
    columns = list(rows[0])
    text = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    for line in [columns, *text]:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())


def main(argv: list[str]) -> int:
    effective = "--effective" in argv
    argv = [arg for arg in argv if arg != "--effective"]
    path = argv[0] if argv else "params.yaml"
    try:
        params = load_params(path)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if effective:  # python -m lib.config --effective [params.yaml]: the values each run actually uses
        print_effective(params)
        return 0
    matrices = ", ".join(f"{group} {getattr(params, group).datasets} x {getattr(params, group).variants}"
                         for group in TRAINING_MATRICES)
    test_time = (f"; {len(params.test_time_runs())} evaluated with another run's weights: test_time "
                 f"{params.test_time.datasets} x {params.test_time.variants}" if params.test_time else "")
    print(f"{path}: OK ({len(params.runs())} runs: {matrices}{test_time})")
    return 0

