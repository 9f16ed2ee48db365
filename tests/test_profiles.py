"""Profiles in params.yaml: one key switches the study between default, smoke and paper scale (lib/profiles.py)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.config import ParamsError, load_params
from lib.profiles import ProfileError, applied, held_profile, leaves, set_args, switch
from tests.conftest import REPO

PROFILES = ("default", "smoke", "paper")


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy2(REPO / "params.yaml", path)
    return path


def test_committed_file_holds_the_default_profile_exactly():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert raw["profile"] == "default" and set(raw["profiles"]) == set(PROFILES)
    assert applied(raw, "default") == raw  # every key the profiles set is at its default value
    for name in PROFILES:  # every key a profile sets has a default, so that switching back restores it
        assert set(leaves(raw["profiles"][name])) <= set(leaves(raw["profiles"]["default"])), name


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_applied_is_a_valid_study(params_file, name):
    switch(params_file, name)
    params = load_params(params_file)
    assert params.profile == name
    raw = yaml.safe_load(params_file.read_text())
    assert held_profile(raw) == name and applied(raw, name) == raw


def test_paper_profile_is_gpu_scale_on_cifar100_and_image_folders(params_file):
    switch(params_file, "paper")
    params = load_params(params_file)
    assert params.device == "cuda" and params.train.precision == "bf16" and params.data_workers > 0
    assert {d for d, _ in params.runs()} >= {"cifar100", "imagenet"}
    small = params.model_for("rope_mixed", "cifar100")
    assert (small.embed_dim, small.depth, small.num_heads, small.patch_size) == (384, 12, 6, 4)  # ViT-S/4
    assert params.model_for("rope_mixed", "imagenet").patch_size == 16  # ViT-S/16 at 224 px
    assert len(params.seeds.seeds) + 1 >= 5  # five training seeds of the RQ1 runs, for CIs over seeds


def test_switch_rewrites_only_profile_keys_and_round_trips_byte_for_byte(params_file):
    original = params_file.read_text()
    changed = switch(params_file, "smoke")
    text = params_file.read_text()
    assert "profile" in changed and "train.epochs" in changed and "seed" not in changed
    assert text.count("#") == original.count("#")  # every comment kept
    assert "  epochs: 2                # a dataset may set its own" in text  # in place, comment column kept
    smoke = yaml.safe_load(text)
    assert smoke["train"]["epochs"] == 2 and smoke["study"]["variants"] == ["ape", "rope_mixed"]
    assert smoke["variants"]["moh"]["attention_kwargs"] == {"shared_heads": 1, "top_k": 1}  # inside a flow mapping
    switch(params_file, "paper")
    switch(params_file, "default")
    assert params_file.read_text() == original


def test_switch_refuses_to_overwrite_hand_edits_and_changes_nothing(params_file):
    epochs = yaml.safe_load(params_file.read_text())["profiles"]["default"]["train"]["epochs"]
    assert epochs != 40
    edited = params_file.read_text().replace(f"  epochs: {epochs} ", "  epochs: 40 ", 1)
    assert edited != params_file.read_text()
    params_file.write_text(edited)
    assert switch(params_file, "default") == []  # the profile in place: an ablation edit is fine
    with pytest.raises(ProfileError, match=rf"(?s)train\.epochs: 40 \(profile .default. sets {epochs}\).*nothing was changed"):
        switch(params_file, "paper")
    assert params_file.read_text() == edited
    assert load_params(params_file).train.epochs == 40


def test_hand_edited_profile_key_is_caught_and_make_applies_it(params_file):
    params_file.write_text(params_file.read_text().replace("profile: default ", "profile: paper   "))
    with pytest.raises(ParamsError, match=r"(?s)profile: .paper., but the values are those of profile 'default'.*"
                                          r"make profile PROFILE=paper"):
        load_params(params_file)
    result = subprocess.run([sys.executable, "-m", "lib.profiles", "--params", str(params_file)],
                            capture_output=True, text=True, cwd=REPO)  # what `make profile` runs
    assert result.returncode == 0, result.stderr
    assert load_params(params_file).device == "cuda"


@pytest.mark.parametrize("edit, words", [
    (lambda raw: raw["profiles"]["paper"]["train"].update(epocs=3), ["profiles.paper.train.epocs", "not set by profiles.default"]),
    (lambda raw: raw["profiles"]["smoke"]["train"].update(warmup_epochs=5), ["profiles.smoke (applied)", "warmup_epochs=5"]),
    (lambda raw: raw["profiles"]["paper"].update(study={"datasets": ["cifar1000"]}), ["profiles.paper (applied)", "cifar1000"]),
    (lambda raw: raw.update(profile="gpu"), ["profile: unknown profile 'gpu'", "paper"]),
    (lambda raw: raw["profiles"].pop("default"), ["profiles: needs a 'default' profile"]),
    (lambda raw: raw["profiles"]["default"]["train"].update(momentum=0.9), ["profiles.default.train.momentum: not a key"]),
])
def test_bad_profiles_name_the_key(params_file, edit, words):
    raw = yaml.safe_load(params_file.read_text())
    edit(raw)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ParamsError) as info:
        load_params(params_file)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_set_args_make_the_same_switch_as_dvc_exp_run_arguments(params_file):
    args = set_args(params_file, "paper")
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
    assert raw == applied(raw, "paper")


def test_switch_works_on_a_file_that_dvc_exp_run_rewrote(params_file):
    """`dvc exp run -S` rewrites params.yaml with ruamel: nulls become empty values, flow mappings lose their
    alignment. Switching afterwards must still rewrite exactly the profile keys (it once wrote into the next line)."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params_file) as data:
        data["analysis"]["head_fusion"] = "max"  # an ablation of a key no profile sets
    assert "  max_images:              #" in params_file.read_text()  # null written as nothing
    rewritten = yaml.safe_load(params_file.read_text())
    for name in ("paper", "smoke", "default"):
        switch(params_file, name)
        assert yaml.safe_load(params_file.read_text()) == {**applied(rewritten, name), "analysis": {
            **applied(rewritten, name)["analysis"], "head_fusion": "max"}}


def test_a_misspelt_profile_key_is_named_the_schema_way(params_file):
    params_file.write_text(params_file.read_text().replace("\n  epochs: 20 ", "\n  epocs: 20 ", 1))
    before = params_file.read_text()
    result = subprocess.run([sys.executable, "-m", "lib.profiles", "--params", str(params_file)], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.epocs: unknown key (did you mean 'epochs'?)" in result.stderr
    assert "train.epochs: missing, but the profiles set it" in result.stderr and params_file.read_text() == before


@pytest.mark.parametrize("content", ["", "- a list\n"])
def test_a_file_that_is_no_params_file_is_named(tmp_path, content, capsys):
    from lib.profiles import main
    bad = tmp_path / "params.yaml"
    bad.write_text(content)
    assert main(["smoke", "--params", str(bad)]) == 2
    assert f"{bad}: expected a params file" in capsys.readouterr().err
    assert bad.read_text() == content
