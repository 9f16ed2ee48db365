"""Profiles: override files in profiles/ that one command writes into params.yaml (lib/config/profiles.py)."""
import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.config import load_params
from lib.config.profiles import ProfileError, applied, held_profile, leaves, read_profile, read_profiles, set_args, switch
from tests.conftest import REPO

PROFILES_DIR = REPO / "profiles"
PROFILES = ("default", "smoke", "paper")


@pytest.fixture
def default() -> dict:
    """The default study: the committed params.yaml (what `make profile PROFILE=default` restores)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy2(REPO / "params.yaml", path)
    return path


def profiles(tmp_path: Path, **edits) -> Path:
    """A copy of profiles/ with `name=raw profile` replaced."""
    folder = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, folder)
    for name, raw in edits.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def test_params_yaml_is_the_default_study_and_profiles_list_only_differences(default):
    assert default["profile"] == "default" and "profiles" not in default
    for name in ("smoke", "paper"):  # one place per setting: a profile repeats no default value
        same = [".".join(p) for p, v in read_profile(name, PROFILES_DIR).items() if leaves(default)[p] == v]
        assert same == [], f"profiles/{name}.yaml repeats default values: {same}"


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_applied_is_a_valid_study(params_file, default, name):
    switch(params_file, name, PROFILES_DIR, default)
    params = load_params(params_file)
    raw = yaml.safe_load(params_file.read_text())
    assert params.profile == name and raw == applied(default, name, PROFILES_DIR)
    assert held_profile(raw, default, read_profiles(PROFILES_DIR)) == name


def test_paper_profile_is_gpu_scale_on_cifar100_and_image_folders(params_file, default):
    switch(params_file, "paper", PROFILES_DIR, default)
    params = load_params(params_file)
    assert params.device == "cuda" and params.train.precision == "bf16" and params.data_workers > 0
    assert {d for d, _ in params.runs()} >= {"cifar100", "imagenet"}
    small = params.model_for("rope_mixed", "cifar100")
    assert (small.embed_dim, small.depth, small.num_heads, small.patch_size) == (384, 12, 6, 4)  # ViT-S/4
    assert params.model_for("rope_mixed", "imagenet").patch_size == 16  # ViT-S/16 at 224 px
    assert len(params.rq1.seeds) >= 5  # five training seeds of the RQ1 cells, for CIs over seeds


def test_switch_rewrites_only_profile_keys_in_place_and_round_trips_byte_for_byte(params_file, default):
    original = params_file.read_text()
    changed = switch(params_file, "smoke", PROFILES_DIR, default)
    text = params_file.read_text()
    assert "profile" in changed and "train.epochs" in changed and "seed" not in changed
    assert text.count("#") == original.count("#")  # every comment kept
    assert "  epochs: 2                # a dataset may set its own" in text  # in place, comment column kept
    names = {key.split(".")[-1] for key in changed}
    removed = [line for line in difflib.ndiff(original.splitlines(), text.splitlines()) if line.startswith("- ")]
    untouched = [line for line in removed if ":" in line and not names & set(re.findall(r"(\w+):", line))]
    assert removed and untouched == []  # every line it changed holds a changed key (or continues its value)
    smoke = yaml.safe_load(text)
    assert smoke["train"]["epochs"] == 2 and smoke["study"]["variants"] == ["ape", "rope_mixed"]
    assert smoke["variants"]["moh"]["attention_kwargs"] == {"shared_heads": 1, "top_k": 1}  # inside a flow mapping
    switch(params_file, "paper", PROFILES_DIR, default)  # smoke's keys back to the default, then paper's
    assert yaml.safe_load(params_file.read_text()) == applied(default, "paper", PROFILES_DIR)
    switch(params_file, "default", PROFILES_DIR, default)
    assert params_file.read_text() == original


def test_default_comes_from_git_head(tmp_path):
    """Without --default, switching back restores the values of the committed params.yaml."""
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROFILES_DIR, tmp_path / "profiles")
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True)
    original = (tmp_path / "params.yaml").read_text()
    for name in ("paper", "default"):
        result = subprocess.run([sys.executable, "-m", "lib.config.profiles", name], cwd=tmp_path, capture_output=True,
                                text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "params.yaml").read_text() == original


def test_without_git_or_default_the_switch_says_what_to_pass(params_file):
    with pytest.raises(ProfileError, match=r"cannot read the committed default study.*--default FILE"):
        switch(params_file, "smoke", PROFILES_DIR)


def test_switch_refuses_to_overwrite_hand_edits_and_changes_nothing(params_file, default):
    switch(params_file, "smoke", PROFILES_DIR, default)
    edited = params_file.read_text().replace("  epochs: 2 ", "  epochs: 40", 1)
    params_file.write_text(edited)
    assert switch(params_file, "smoke", PROFILES_DIR, default) == []  # the profile in place: an ablation is fine
    with pytest.raises(ProfileError, match=r"(?s)train\.epochs: 40 \(profile .smoke. sets 2\).*nothing was changed"):
        switch(params_file, "default", PROFILES_DIR, default)
    assert params_file.read_text() == edited
    assert load_params(params_file).train.epochs == 40


def test_ablations_of_keys_no_profile_sets_survive_switches(params_file, default):
    text = params_file.read_text().replace("  head_fusion: mean ", "  head_fusion: max  ", 1)
    assert text != params_file.read_text()
    params_file.write_text(text)
    for name in ("smoke", "paper", "default"):
        switch(params_file, name, PROFILES_DIR, default)
        assert yaml.safe_load(params_file.read_text())["analysis"]["head_fusion"] == "max"
    assert params_file.read_text() == text


def test_hand_edited_profile_key_is_applied_by_make(params_file, default):
    """`profile: paper` typed by hand while the values are the default's: `make profile` (no name) applies it."""
    params_file.write_text(params_file.read_text().replace("profile: default ", "profile: paper   "))
    assert held_profile(yaml.safe_load(params_file.read_text()), default, read_profiles(PROFILES_DIR)) == "default"
    result = subprocess.run([sys.executable, "-m", "lib.config.profiles", "--params", str(params_file), "--profiles",
                             str(PROFILES_DIR), "--default", str(REPO / "params.yaml")], capture_output=True, text=True,
                            cwd=REPO)  # what `make profile` runs
    assert result.returncode == 0, result.stderr
    assert load_params(params_file).device == "cuda"


@pytest.mark.parametrize("name, edit, words", [
    ("paper", lambda raw: raw["train"].update(epocs=3), ["profiles/paper.yaml: train.epocs: not a key of params.yaml",
                                                          "did you mean 'epochs'"]),
    ("smoke", lambda raw: raw["train"].update(warmup_epochs=5), ["at profile 'smoke'", "warmup_epochs"]),
    ("paper", lambda raw: raw.update(study={"datasets": ["cifar1000"]}), ["at profile 'paper'", "cifar1000"]),
    ("paper", lambda raw: raw["rq1"].update(scales=[[1.0]]), ["rq1.scales: a profile value must be a scalar"]),
    ("paper", lambda raw: raw.update(profile="smoke"), ["profile: set by the switch itself"]),
])
def test_bad_profile_files_name_the_key_and_change_nothing(tmp_path, params_file, default, name, edit, words):
    raw = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    edit(raw)
    folder = profiles(tmp_path, **{name: raw})
    before = params_file.read_text()
    with pytest.raises(ProfileError) as info:
        switch(params_file, name, folder, default)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"
    assert params_file.read_text() == before


def test_an_unknown_profile_lists_the_known_ones(params_file, default):
    with pytest.raises(ProfileError, match=r"unknown profile 'gpu'.*\['default', 'paper', 'smoke'\]"):
        switch(params_file, "gpu", PROFILES_DIR, default)


def test_set_args_make_the_same_switch_as_dvc_exp_run_arguments(params_file, default):
    args = set_args(params_file, "paper", PROFILES_DIR, default)
    pairs = dict(arg.split("=", 1) for arg in args[1::2])
    assert args[::2] == ["-S"] * len(pairs) and pairs["profile"] == "paper" and pairs["device"] == "cuda"
    assert pairs["study.datasets"] == "[cifar100,imagenet]" and pairs["train.lr"] == "1.0e-3"
    raw = yaml.safe_load(params_file.read_text())  # applying them as DVC would gives the paper profile
    for key, value in pairs.items():
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node[part]
        node[last] = yaml.safe_load(value)
    assert raw == applied(default, "paper", PROFILES_DIR)


def test_switch_works_on_a_file_that_dvc_exp_run_rewrote(params_file, default):
    """`dvc exp run -S` rewrites params.yaml with ruamel: nulls become empty values, flow mappings lose their
    alignment. Switching afterwards must still rewrite exactly the profile keys (it once wrote into the next line)."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params_file) as data:
        data["analysis"]["head_fusion"] = "max"  # an ablation of a key no profile sets
    assert re.search(r"\n  num_val_images: +#", params_file.read_text())  # null written as nothing (paper sets it)
    for name in ("paper", "smoke", "default"):
        switch(params_file, name, PROFILES_DIR, default)
        expected = applied(default, name, PROFILES_DIR)
        expected["analysis"]["head_fusion"] = "max"
        assert yaml.safe_load(params_file.read_text()) == expected


def test_a_misspelt_profile_managed_key_is_named_with_a_suggestion(params_file):
    params_file.write_text(params_file.read_text().replace("\n  epochs: 20 ", "\n  epocs: 20 ", 1))
    before = params_file.read_text()
    result = subprocess.run([sys.executable, "-m", "lib.config.profiles", "smoke", "--params", str(params_file), "--profiles",
                             str(PROFILES_DIR), "--default", str(REPO / "params.yaml")], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.epocs: unknown key (did you mean 'epochs'?)" in result.stderr
    assert "train.epochs: missing, but profile 'smoke' sets it" in result.stderr
    assert params_file.read_text() == before


@pytest.mark.parametrize("content", ["", "- a list\n"])
def test_a_file_that_is_no_params_file_is_named(tmp_path, content, capsys):
    from lib.config.profiles import main
    bad = tmp_path / "params.yaml"
    bad.write_text(content)
    assert main(["smoke", "--params", str(bad)]) == 2
    assert f"{bad}: expected a params file" in capsys.readouterr().err
    assert bad.read_text() == content
