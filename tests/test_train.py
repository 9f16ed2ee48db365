"""Training: determinism, resume after interruption (also SIGKILL), no resume across configurations or data,
safe checkpoints, NaN guard."""
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lib.config import Params
from lib.run.checkpoint import CheckpointError, load_checkpoint, save_atomic
from lib.run.train import NonFiniteLossError, run_config, save_model, train
import lib.run.train
from tests.conftest import REPO, tiny_params_dict, write_image_folder


def metrics_of(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in history]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_and_metrics(tiny_params, tmp_path):
    first = train(tiny_params, "shapes", "rope_mixed", tmp_path / "a" / "live", tmp_path / "a.pt", progress=False)
    second = train(tiny_params, "shapes", "rope_mixed", tmp_path / "b" / "live", tmp_path / "b.pt", progress=False)
    assert same_weights(first.model, second.model)
    assert metrics_of(first.history) == metrics_of(second.history)
    assert (tmp_path / "a" / "live" / "metrics.json").read_bytes() == (tmp_path / "b" / "live" / "metrics.json").read_bytes()


def test_learns_something(data_root, tmp_path):
    params = tiny_params_dict(data_root)
    params["train"].update(epochs=3, train_subset=1024, batch_size=32, lr=3e-3)
    params["datasets"]["mnist"].pop("train", None)  # the profile's per-dataset epochs would win over train.epochs
    result = train(Params.model_validate(params), "mnist", "ape", tmp_path / "live", tmp_path / "ck.pt", progress=False)
    assert len(result.history) == 3
    # small ViTs leave the initial plateau slowly; with light augmentation and 20 epochs MNIST reached 92.7-94.9%
    first, last = result.history[0], result.history[-1]
    assert last["val/loss"] < first["val/loss"] - 0.05
    assert last["val/acc"] > 0.15  # 10 classes: chance is 0.1


def interrupt_after_first_checkpoint(monkeypatch) -> None:
    """The training process "dies" right after writing its first epoch's checkpoint."""
    def save_then_die(obj, path):
        save_atomic(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(lib.run.train, "save_atomic", save_then_die)


def test_resume_after_interruption_equals_uninterrupted(tiny_params, tmp_path, monkeypatch):
    full = train(tiny_params, "mnist", "rope_mixed", tmp_path / "full", tmp_path / "full.pt", progress=False)

    interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_params, "mnist", "rope_mixed", tmp_path / "cut", tmp_path / "cut.pt", progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "cut.pt")["epoch"] == 1

    resumed = train(tiny_params, "mnist", "rope_mixed", tmp_path / "cut", tmp_path / "cut.pt", progress=False)
    assert resumed.resumed_from_epoch == 1
    assert same_weights(full.model, resumed.model)
    assert metrics_of(full.history) == metrics_of(resumed.history)


KILL_SCRIPT = """
import sys
from pathlib import Path
from lib.config import load_params
from lib.run.train import train
out = Path(sys.argv[2])
result = train(load_params(sys.argv[1]), "mnist", "rope_mixed", out / "live", out / "ck.pt", progress=False)
print("FINAL", result.history[-1]["val/acc"], result.history[-1]["val/loss"])
"""


def test_sigkill_mid_epoch_resumes_to_the_same_result(data_root, tmp_path):
    params = tiny_params_dict(data_root)
    params["train"].update(epochs=4, train_subset=1024)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    command = [sys.executable, "-c", KILL_SCRIPT, str(params_file)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    reference = subprocess.run(command + [str(tmp_path / "ref")], capture_output=True, text=True, env=env, cwd=REPO)
    assert reference.returncode == 0, reference.stderr

    victim = subprocess.Popen(command + [str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    checkpoint = tmp_path / "run" / "ck.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)  # into the second epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= killed_at < 4

    resumed = subprocess.run(command + [str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {killed_at}" in resumed.stdout
    final = [line for line in resumed.stdout.splitlines() if line.startswith("FINAL")]
    assert final == [line for line in reference.stdout.splitlines() if line.startswith("FINAL")]


def test_checkpoint_of_another_configuration_is_set_aside(tiny_params, tmp_path, capsys):
    path = tmp_path / "ck.pt"
    save_atomic({"config_id": "someone-else", "epoch": 1, "model": {}, "optimizer": {}, "history": []}, path)
    result = train(tiny_params, "mnist", "ape", tmp_path / "live", path, progress=False)
    assert result.resumed_from_epoch == 0
    assert (tmp_path / "ck.someone-else.stale.pt").exists()  # kept, not overwritten
    # a checkpoint from before configs were stored cannot say what differs
    assert f"{path}: written for another configuration; kept as ck.someone-else.stale.pt" in capsys.readouterr().out


def test_changed_setting_is_named_and_trains_from_scratch(data_root, tmp_path, capsys, monkeypatch):
    params = tiny_params_dict(data_root)
    path = tmp_path / "ck.pt"
    interrupt_after_first_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(Params.model_validate(params), "mnist", "ape", tmp_path / "live", path, progress=False)
    monkeypatch.undo()
    params["train"]["lr"] /= 2
    capsys.readouterr()
    result = train(Params.model_validate(params), "mnist", "ape", tmp_path / "live", path, progress=False)
    assert result.resumed_from_epoch == 0
    stale = [line for line in capsys.readouterr().out.splitlines() if "another configuration" in line]
    assert stale == [f"{path}: written for another configuration (changed: train.lr); "
                     f"kept as {next(tmp_path.glob('ck.*.stale.pt')).name}, starting from scratch"]


def test_changed_training_labels_are_not_resumed(data_root, tmp_path, capsys):
    """The stale-resume bug: new labels with an old checkpoint gave the old model, bit for bit."""
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    params = tiny_params_dict(data)
    old = train(Params.model_validate(params), "mnist", "ape", tmp_path / "live", tmp_path / "ck.pt", progress=False)
    labels_file = data / "mnist" / "train_labels.npy"
    labels = np.load(labels_file)
    labels[:128] = (labels[:128] + 1) % 10  # within the 256 images the tiny runs train on
    np.save(labels_file, labels)
    capsys.readouterr()

    rerun = train(Params.model_validate(params), "mnist", "ape", tmp_path / "live", tmp_path / "ck.pt", progress=False)
    assert rerun.resumed_from_epoch == 0
    assert "written for another configuration (changed: data)" in capsys.readouterr().out
    assert not same_weights(old.model, rerun.model)
    fresh = train(Params.model_validate(params), "mnist", "ape", tmp_path / "fresh", tmp_path / "fresh.pt", progress=False)
    assert same_weights(fresh.model, rerun.model)  # from scratch on the new labels, nothing of the old run


def test_user_data_is_fingerprinted_by_its_file_list(tiny_params, tmp_path):
    """Image folders (and CIFAR) are not pinned by data.dvc: a manifest of paths, sizes and mtimes stands in."""
    write_image_folder(tmp_path / "data")
    params = tiny_params.model_copy(update={"data_root": str(tmp_path / "data")})
    before = run_config(params, "imagenet", "ape")["data"]
    assert run_config(params, "imagenet", "ape")["data"] == before  # stable while nothing changes
    image = next((tmp_path / "data" / "imagenet" / "train").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")  # a replaced file: new size and mtime
    assert run_config(params, "imagenet", "ape")["data"] != before


def test_finished_run_deletes_its_checkpoint_and_reruns_from_scratch(tiny_params, tmp_path):
    """`dvc repro --force` on a finished stage retrains; checkpoints/ keeps no finished runs."""
    checkpoint = tmp_path / "checkpoints" / "mnist-ape.pt"
    first = train(tiny_params, "mnist", "ape", tmp_path / "live", checkpoint, progress=False)
    assert load_checkpoint(checkpoint)["epoch"] == 2  # until the model is written, the run can resume
    save_model(first, tmp_path / "model.pt")
    assert not checkpoint.exists()
    saved = load_checkpoint(tmp_path / "model.pt")
    assert saved["config"] == run_config(tiny_params, "mnist", "ape")
    assert all(torch.equal(saved["model"][k], v) for k, v in first.model.state_dict().items())

    again = train(tiny_params, "mnist", "ape", tmp_path / "live", checkpoint, progress=False)
    assert again.resumed_from_epoch == 0 and len(again.history) == 2
    assert same_weights(first.model, again.model)


def test_unreadable_checkpoint_stops_before_training(tiny_params, tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: unreadable checkpoint")) as info:
        train(tiny_params, "mnist", "ape", tmp_path / "live", path, progress=False)
    assert f"delete it (rm {path}) to train this run from scratch" in str(info.value)
    assert path.read_bytes() == b"not a checkpoint"  # left as it was
    assert not (tmp_path / "live").exists()


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match="weights_only") as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "Unsupported operand" in str(info.value)  # says what the unpickler refused


def test_checkpoint_holding_a_class_names_it(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": CheckpointError("any class outside the allowed ones")}, path)
    with pytest.raises(CheckpointError, match="Unsupported global: GLOBAL lib.run.checkpoint.CheckpointError"):
        load_checkpoint(path)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_params, tmp_path, monkeypatch):
    real_cross_entropy = lib.run.train.F.cross_entropy
    calls = {"n": 0}
    steps_per_epoch = 256 // 64

    def poisoned(logits, labels, **kwargs):
        loss = real_cross_entropy(logits, labels, **kwargs)
        if kwargs.get("reduction") == "sum":  # validation: leave alone
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > steps_per_epoch + 1 else loss  # epoch 2, step 2

    monkeypatch.setattr(lib.run.train.F, "cross_entropy", poisoned)
    path = tmp_path / "ck.pt"
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 2"):
        train(tiny_params, "mnist", "ape", tmp_path / "live", path, progress=False)
    assert load_checkpoint(path)["epoch"] == 1



def _live_in_dvc_repo(root, monkeypatch):
    """A dvclive run inside a DVC repository at `root` (dvclive finds it through DVC_ROOT), one step logged."""
    from dvclive import Live
    (root / ".dvc").mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(root))
    live = Live(dir=str(root / "live"), dvcyaml=None, save_dvc_exp=False, report=None)
    live.log_metric("val/acc", 0.5)
    live.next_step()
    signal_file = root / ".dvc" / "tmp" / "exps" / "run" / lib.run.train.STEP_SIGNAL_FILE
    assert signal_file.exists()
    return live, signal_file


class _OsWithStaleCheck:
    """`os` as dvclive's signal code sees it when another run removes the file between its check and its removal."""
    path = type("path", (), {"join": staticmethod(os.path.join), "exists": staticmethod(
        lambda file: Path(file).name == lib.run.train.STEP_SIGNAL_FILE or os.path.exists(file))})

    def __getattr__(self, name):
        return getattr(os, name)


@pytest.mark.parametrize("ended_by", ["dvclive", "end_live"])
def test_end_live_survives_a_parallel_run_removing_the_step_signal(tmp_path, monkeypatch, ended_by):
    # the interleaving that failed CI with RQ1's seeds side by side
    import dvclive.vscode
    live, signal_file = _live_in_dvc_repo(tmp_path, monkeypatch)
    signal_file.unlink()  # the other run's removal
    monkeypatch.setattr(dvclive.vscode, "os", _OsWithStaleCheck())
    if ended_by == "dvclive":
        with pytest.raises(FileNotFoundError, match=lib.run.train.STEP_SIGNAL_FILE):
            live.end()
    else:
        lib.run.train.end_live(live)
        assert (tmp_path / "live" / "metrics.json").exists()  # the run's logs are whole


def test_end_live_still_raises_for_any_other_missing_file(tmp_path, monkeypatch):
    live, _ = _live_in_dvc_repo(tmp_path, monkeypatch)

    def lose_a_log():
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "live" / "metrics.json"))
    monkeypatch.setattr(live, "end", lose_a_log)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        lib.run.train.end_live(live)
