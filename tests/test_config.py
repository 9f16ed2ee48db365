"""params.yaml validation: every bad input stops with a message naming the key and what was expected."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.config import ParamsError, load_params, main

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def edited(path: str, value) -> dict:
    """A deep copy of the repo's params with the dotted key `path` set to `value` (or removed if ...)."""
    params = yaml.safe_load(yaml.safe_dump(PARAMS))
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return params


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.study.datasets and params.study.variants


BAD = [
    # (dotted key, value, words the message must contain)
    ("train.epocs", 3, ["train.epocs", "unknown key", "did you mean 'epochs'"]),
    ("modle", {}, ["modle", "unknown key", "did you mean 'model'"]),
    ("train.epochs", "10", ["train.epochs", "valid integer", "'10'"]),
    ("train.epochs", 0, ["train.epochs", "greater than 0"]),
    ("train.lr", -0.1, ["train.lr", "greater than 0"]),
    ("train.label_smoothing", 1.5, ["train.label_smoothing", "less than 1"]),
    ("train.warmup_epochs", 50, ["train: warmup_epochs=50 must be smaller than epochs"]),
    ("train.augment.translate", 0.9, ["train.augment.translate", "0.5"]),
    ("train.augment.flip", True, ["train.augment.flip", "unknown key"]),
    ("model.num_heads", 5, ["embed_dim=64", "num_heads=5"]),
    ("model.patch_size", 5, ["not a multiple of model.patch_size=5"]),
    ("seed", -1, ["seed", "greater than or equal to 0"]),
    ("datasets.mnist.eval_resolutions", [28, 14], ["datasets.mnist.eval_resolutions", "increasing"]),
    ("datasets.mnist.train_resolution", ..., ["datasets.mnist.train_resolution", "missing"]),
    ("datasets.cifar", {"train_resolution": 32, "eval_resolutions": [32]}, ["unknown dataset 'cifar'"]),
    ("variants.ape.attention", "sotfmax", ["unknown attention 'sotfmax'", "did you mean 'softmax'"]),
    ("variants.ape.pos_embed", "rope_mix", ["unknown position encoding 'rope_mix'", "did you mean 'rope_mixed'"]),
    ("variants.ape.model", {"depht": 2}, ["variants.ape.model.depht", "did you mean 'depth'"]),
    ("study.variants", ["ape", "rope_mxed"], ["study.variants", "rope_mxed", "did you mean 'rope_mixed'"]),
    ("study.datasets", [], ["study.datasets", "at least 1"]),
    ("study", ..., ["study", "required key is missing"]),
    ("variants.rope_mixed.model", {"embed_dim": 72, "num_heads": 4}, ["variants.rope_mixed", "divisible by 4"]),
    ("variants.local.pos_embed", "fire", ["variants.local", "'fire'", "attention 'local' does not take"]),
    ("variants.ape.model", {"depth": 0}, ["variants.ape.model.depth", "greater than 0"]),
    ("variants.local.attention_kwargs", {"radius": 2}, ["variants.local", "attention_kwargs.radius", "did you mean 'window_radius'"]),
    ("zoo.variants", ["ape"], ["zoo: ['shapes-ape'] already trained by another matrix"]),
    ("case_study.variants", ["ape", "rope_mixd"], ["case_study.variants", "did you mean 'rope_mixed'"]),
    ("zoo.datasets", ["cifar"], ["zoo.datasets", "unknown dataset defined under 'datasets' 'cifar'"]),
    ("datasets.shapes.train", {"epoch": 5}, ["datasets.shapes.train.epoch", "did you mean 'epochs'"]),
    ("datasets.shapes.train", {"augment": {"translate": 2.0}}, ["datasets.shapes.train.augment.translate", "0.5"]),
    ("datasets.shapes.train", {"epochs": 1}, ["datasets.shapes.train: warmup_epochs=2 must be smaller than epochs=1"]),
    ("analysis.runs", {"datasets": ["mnist"], "variants": ["linear"]}, ["analysis.runs", "mnist-linear is not trained"]),
    ("analysis.head_fusion", "median", ["analysis.head_fusion", "'mean', 'max' or 'min'"]),
    ("analysis.reference_pos_embed", "rope_mixd", ["analysis.reference_pos_embed", "did you mean 'rope_mixed'"]),
    ("analysis.fills", ["mean", "blurr"], ["analysis.fills", "unknown fill 'blurr'", "did you mean 'blur'"]),
    ("analysis.fills", ["mean", "mean"], ["analysis.fills", "every fill once"]),
    ("analysis.fills", [], ["analysis.fills", "at least 1 item"]),
    ("analysis.ig_baseline", "white", ["analysis.ig_baseline", "unknown Integrated Gradients baseline 'white'",
                                       "'black', 'blur', 'mean'"]),
    ("analysis.control_variants", ["ape", "rope_mixd"], ["analysis.control_variants", "unknown variant defined under "
                                                     "'variants' 'rope_mixd'", "did you mean 'rope_mixed'"]),
    ("analysis.sanity_max_correlation", 1.5, ["analysis.sanity_max_correlation", "less than 1"]),
    ("safety.corruptions", ["gaussian_nosie"], ["safety.corruptions", "did you mean 'gaussian_noise'"]),
    ("safety.severities", [1, 6], ["safety.severities", "less than or equal to 5"]),
    ("variants.moh.attention_kwargs", {"shared_heads": 1, "top_k": 4},
     ["variants.moh.attention_kwargs", "need 1 <= top_k <= 3 routed heads, got top_k=4"]),
    ("variants.local.attention_kwargs", {"window_radius": -1}, ["variants.local.attention_kwargs", "window_radius"]),
    ("variants.rope_mixed.pos_embed_kwargs", {"thetta": 50}, ["variants.rope_mixed", "pos_embed_kwargs.thetta",
                                                              "did you mean 'theta'"]),
    ("variants.ape.pos_embed_kwargs", {"theta": 50}, ["variants.ape", "pos_embed_kwargs.theta",
                                                      "position encoding 'ape'", "expected one of []"]),
    ("variants.rope_mixed_norm.pos_embed_kwargs", {"jitter": 0.5}, ["variants.rope_mixed_norm.pos_embed_kwargs",
                                                                    "jitter"]),
    ("seeds.seeds", [0, 1], ["seeds.seeds: 0 is the study's own `seed`"]),
    ("seeds.seeds", [2, 1], ["seeds.seeds", "strictly increasing"]),
    ("seeds.map_images", 0, ["seeds.map_images", "greater than 0"]),
    ("seeds.top_fraction", 1.5, ["seeds.top_fraction", "less than or equal to 1"]),
    ("seeds.runs", {"datasets": ["mnist"], "variants": ["linear"]}, ["seeds.runs", "mnist-linear is not trained"]),
    ("safety.severities", [3, 1], ["safety.severities", "increasing"]),
    ("safety.baseline_variant", "apee", ["safety.baseline_variant", "did you mean 'ape'"]),
    ("efficiency.baseline", "axial_x", ["efficiency", "baseline 'axial_x' must be one of efficiency.variants"]),
    ("efficiency.compiled", ["lib_rope_mxed"], ["efficiency.compiled", "'lib_rope_mixed'", "'timm_eva_rope_mixed'"]),
    # test-time variants: run on another variant's weights, never trained
    ("zoo.variants", ["none", "rope_adaptive_res"], ["zoo.variants: rope_adaptive_res is never trained",
                                                     "weights of rope_mixed", "list it under test_time"]),
    ("variants.rope_adaptive_res.weights_from", "rope_mixd", ["variants.rope_adaptive_res.weights_from",
                                                             "did you mean 'rope_mixed'"]),
    ("variants.rope_adaptive_res.weights_from", "rope_axial", ["variants.rope_adaptive_res.weights_from",
                                                              "rope_axial is a 'rope_axial' variant", "trained 'rope_mixed'"]),
    ("variants.rope_adaptive_res.model", {"depth": 2}, ["variants.rope_adaptive_res.weights_from",
                                                       "rope_mixed differs in model"]),
    ("variants.ape.weights_from", "rope_mixed", ["variants.ape.weights_from", "'ape' must be trained itself",
                                                "['rope_adaptive_res']"]),
    ("test_time.variants", ["rope_gated_bank"], ["test_time.variants: rope_gated_bank has no weights_from"]),
    ("test_time.variants", ["rope_adaptive"], ["test_time.variants", "did you mean 'rope_adaptive_res'"]),
    ("test_time.datasets", ["cifar100"], ["test_time: cifar100-rope_adaptive_res is evaluated with the weights of "
                                          "cifar100-rope_mixed, which none of"]),
    ("analysis.runs", {"datasets": ["shapes"], "variants": ["rope_adaptive_res"]},
     ["analysis.runs", "shapes-rope_adaptive_res is not trained", "shapes-rope_mixed's weights: use that run"]),
    # RQ1: every bad name or list stops before any work, naming the key
    ("rq1.protocols", ["zoom", "field_of_veiw"], ["rq1.protocols", "unknown protocol 'field_of_veiw'",
                                                  "did you mean 'field_of_view'"]),
    ("rq1.rescalings", ["pi", "ntk-aware"], ["rq1.rescalings", "unknown test-time rescaling 'ntk-aware'"]),
    ("rq1.cells", ["shapes-randaug-ape"], ["rq1.cells: shapes-randaug-ape", "unknown augmentation defined under "
                                                                            "'rq1.augmentations' 'randaug'"]),
    ("rq1.cells", ["shapes-rrc-rope_mixd"], ["rq1.cells: shapes-rrc-rope_mixd", "did you mean 'rope_mixed'"]),
    ("rq1.cells", ["shapes-rope_mixed"], ["rq1.cells", "'shapes-rope_mixed' is not '<dataset>-<augmentation>-<variant>'"]),
    ("rq1.cells", ["signs-rrc-ape"], ["rq1.protocols: field_of_view is defined for", "signs-rrc-ape"]),
    ("rq1.cells", ["shapes-rrc-ape-gx"], ["rq1.cells: 'shapes-rrc-ape-gx'", "'gx' is not a training grid 'g<patches per side>'"]),
    ("rq1.cells", ["shapes-rrc-ape-g1"], ["rq1.cells: 'shapes-rrc-ape-g1'", "(at least g2)"]),
    ("rq1.cells", ["shapes-rrc-ape-9"], ["rq1.cells", "is not '<dataset>-<augmentation>-<variant>' or"]),
    ("rq1.cells", ["shapes-rrc-rope_adaptive_res"], ["rq1.cells: shapes-rrc-rope_adaptive_res", "test-time variant"]),
    ("rq1.cells", ["shapes-rrc-ape", "shapes-rrc-ape"], ["rq1.cells: a cell is listed twice"]),
    ("rq1.scales", [0.5, 2.0], ["rq1", "scales: [0.5, 2.0] must include 1.0"]),
    ("rq1.seeds", [0], ["rq1", "seeds: [0] gives no confidence interval over seeds"]),
    ("convex.seeds", [0], ["convex.seeds", "gives no confidence interval over seeds"]),
    ("convex.seeds", [0, 7], ["convex.seeds: [7] not in rq1.seeds"]),
    ("convex.settings", ["shapes-light-rope_mixed"], ["convex.settings", "is not '<backbone rq1 cell>-><dataset>'"]),
    ("convex.settings", ["shapes-light-rope_mixd->shapes"], ["convex.settings (shapes-light-rope_mixd->shapes) backbone",
                                                                "did you mean 'shapes-light-rope_mixed'"]),
    ("convex.settings", ["shapes-light-rope_mixed->shapse"], ["convex.settings (shapes-light-rope_mixed->shapse) dataset",
                                                                "did you mean 'shapes'"]),
    ("convex.settings", ["shapes-light-rope_mixed->shapes", "shapes-light-rope_mixed->shapes"], ["listed twice"]),
    ("convex.heads", ["convex linear atention"], ["convex.heads", "convex head", "did you mean 'convex linear attention'"]),
    ("convex.layer", 9, ["convex.layer: 9 exceeds the depth 4 of backbone shapes-light-rope_mixed"]),
    ("convex.grid_size", 2, ["convex.grid_size", "greater than or equal to 3"]),
    ("rq1.augmentations", {"rrc": {"crop_area": [1.0, 0.25]}}, ["rq1.augmentations.rrc.crop_area", "increasing"]),
    ("rq1.augmentations", {"rrc": {"crop_area": [0.0, 1.0]}, "light": {}}, ["rq1.augmentations.rrc.crop_area.0",
                                                                           "greater than 0"]),
    ("pretrained.models", {"vit_s": {"timm_model": "vit_nonexistent", "checkpoint": None}},
     ["pretrained.models.vit_s.timm_model", "'vit_nonexistent' is not a timm model"]),
    ("pretrained.models", {"ViT S": {"timm_model": "vit_small_patch16_rope_224", "checkpoint": None}},
     ["pretrained.models", "ViT S", "pattern"]),
    ("pretrained.run", ["vit_s_rope_mixd"], ["pretrained.run", "unknown model of pretrained.models 'vit_s_rope_mixd'",
                                             "did you mean 'vit_s_rope_mixed'"]),
    ("pretrained.resolutions", [224, 128], ["pretrained.resolutions", "increasing"]),
    ("safety.corruption_lengths", "pixel", ["safety.corruption_lengths", "'image' or 'patch'"]),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_params_name_the_key(tmp_path, key, value, words):
    path = write(tmp_path, edited(key, value))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def test_all_problems_are_listed_at_once(tmp_path):
    params = edited("train.epocs", 3)
    params["train"]["lr"] = "fast"
    with pytest.raises(ParamsError) as info:
        load_params(write(tmp_path, params))
    assert "train.epocs" in str(info.value) and "train.lr" in str(info.value)


@pytest.mark.parametrize("text,words", [
    ("train: [1, 2", ["not valid YAML"]),
    ("- just\n- a list\n", ["expected a mapping"]),
])
def test_unreadable_files(tmp_path, text, words):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match="|".join(words)):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_exit_codes(tmp_path, capsys):
    assert main([str(REPO / "params.yaml")]) == 0
    assert main([str(write(tmp_path, edited("train.epocs", 1)))]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_cli_runs_as_module(tmp_path):
    bad = write(tmp_path, edited("train.batch_size", 0))
    result = subprocess.run([sys.executable, "-m", "lib.config", str(bad)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "train.batch_size" in result.stderr


def test_dataset_train_overrides_merge_nested_keys(tmp_path):
    loaded = load_params(write(tmp_path, edited("datasets.shapes.train", {"epochs": 5, "augment": {"scale": 0.0}})))
    shapes, mnist = loaded.train_for("shapes"), loaded.train_for("mnist")
    assert shapes.epochs == 5 and shapes.augment.scale == 0.0
    assert shapes.augment.translate == loaded.train.augment.translate  # untouched nested key kept
    assert mnist == loaded.train.model_copy(update={"epochs": 10, "batch_size": 32})  # mnist: only its own overrides


def test_variant_overrides_apply(tmp_path):
    loaded = load_params(write(tmp_path, edited("variants.ape.model", {"depth": 2})))
    assert loaded.model_for("ape").depth == 2 and loaded.model_for("rope_axial").depth == loaded.model.depth


def test_run_folders_name_every_missing_table(tmp_path):
    from lib.config import StudyParams
    from lib.run.study import run_folders

    runs = StudyParams(datasets=["shapes"], variants=["ape", "rope_mixed"])
    (tmp_path / "shapes-ape").mkdir()
    (tmp_path / "shapes-ape" / "layer_head.csv").write_text("x\n")
    with pytest.raises(FileNotFoundError, match="shapes-rope_mixed/layer_head.csv") as info:
        run_folders(tmp_path, runs, "layer_head.csv", "analysis")
    assert "shapes-ape" not in str(info.value)
    (tmp_path / "shapes-rope_mixed").mkdir()
    (tmp_path / "shapes-rope_mixed" / "layer_head.csv").write_text("x\n")
    assert [p.name for p in run_folders(tmp_path, runs, "layer_head.csv", "analysis")] == ["shapes-ape", "shapes-rope_mixed"]


def test_effective_settings_show_what_each_run_uses_after_every_override():
    """`python -m lib.config --effective`: per-dataset epochs win over train.epochs, an RQ1 cell gets its own
    augmentation and training grid, MNIST its own batch size."""
    result = subprocess.run([sys.executable, "-m", "lib.config", "--effective"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    header, *lines = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()]
    rows = {(fields[0], fields[1]): dict(zip(header, fields)) for fields in lines}
    params = load_params(REPO / "params.yaml")
    assert len(rows) == len(lines) == len(params.runs()) + len(params.rq1.cells)
    assert params.train.epochs != params.train_for("shapes").epochs  # the case the table exists for
    study = rows[("train (study)", "shapes-ape")]
    assert (study["epochs"], study["batch"], study["augment"]) == (str(params.train_for("shapes").epochs), "128",
                                                                    "shift 0.05 zoom 0.05")
    grid_cell = rows[("rq1", "shapes-rrc-rope_mixed-g9")]
    assert (grid_cell["augment"], grid_cell["px"], grid_cell["grid"]) == ("crop 0.25-1", "36", "9")
    mnist = rows[("rq1", "mnist-rrc_mild-ape")]
    assert (mnist["epochs"], mnist["batch"], mnist["augment"], mnist["seeds"]) == (
        "10", "32", "crop 0.5-1", ",".join(map(str, params.rq1.seeds)))
