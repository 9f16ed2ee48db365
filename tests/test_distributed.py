"""Scale-out: 2 CPU processes (gloo) train as one process does; evaluation shards count every image once.

One group of 2 processes, joined through torchrun's environment variables (RANK, WORLD_SIZE, ...), evaluates,
resumes a single-process checkpoint and runs the torchrun entry point `lib.run.train_cli`; everything is
compared with single-process results computed here.
"""
import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from lib.config import Params
from lib.data import load_split
from lib.run import distributed as dist
from lib.run.checkpoint import load_checkpoint, save_atomic
from lib.run.study import build_model, normalize
from lib.run.train import evaluate_accuracy, train
import lib.run.train
from lib.run.train_cli import main as train_cli
from tests.conftest import tiny_params_dict

WORLD = 2
EVAL_SIZES = (1, 5, 64, 500)  # uneven splits included: 1 leaves rank 1 nothing, 5 gives it 2 of 5
TIMEOUT = 240


@pytest.fixture(scope="module")
def setup(data_root, tmp_path_factory) -> dict:
    """Tiny parameters; single-process training (keeping its epoch-1 checkpoint); then 2-process runs."""
    root = tmp_path_factory.mktemp("distributed")
    params_dict = tiny_params_dict(data_root)
    (root / "params.yaml").write_text(yaml.safe_dump(params_dict))
    params = Params.model_validate(params_dict)

    def save_and_keep_epoch_1(obj, path):
        save_atomic(obj, path)
        if obj["epoch"] == 1:
            shutil.copy(path, root / "epoch1.pt")

    started = time.perf_counter()
    saved, lib.run.train.save_atomic = lib.run.train.save_atomic, save_and_keep_epoch_1
    try:
        one = train(params, "shapes", "rope_mixed", root / "one" / "live", root / "one.pt", progress=False)
    finally:
        lib.run.train.save_atomic = saved

    shutil.copy(root / "epoch1.pt", root / "resume.pt")  # a single-process checkpoint, resumed by 2 processes
    _spawn(_worker, params, data_root, root)
    print(f"setup: {time.perf_counter() - started:.1f}s")
    return {"root": root, "params": params, "one": one, "spawned": torch.load(root / "spawned.pt")}


def test_two_processes_train_as_one(setup):
    root, params, one = setup["root"], setup["params"], setup["one"]
    two = build_model(params, "shapes", "rope_mixed")
    two.load_state_dict(torch.load(root / "two" / "model.pt")["model"])
    assert_same_model(one.model, two, params)
    history = json.loads((root / "two" / "live" / "metrics.json").read_text())  # the last epoch, written once
    last = one.history[-1]
    assert history["val"]["acc"] == last["val/acc"] and history["train"]["acc"] == last["train/acc"]
    assert history["val"]["loss"] == pytest.approx(last["val/loss"], abs=1e-5)
    assert history["train"]["loss"] == pytest.approx(last["train/loss"], abs=1e-5)
    assert json.loads((root / "two" / "timing.json").read_text())["processes"] == WORLD
    printed = [(root / f"stdout.{rank}").read_text() for rank in range(WORLD)]
    assert "epoch 2/2:" in printed[0] and printed[1:] == [""] * (WORLD - 1)  # only rank 0 prints
    assert not (root / "two-checkpoints" / "shapes-rope_mixed.pt").exists()  # the finished run's, deleted
    checkpoint = load_checkpoint(root / "resume.pt")  # epoch 2 of a run resumed by 2 processes
    assert checkpoint["epoch"] == 2 and set(checkpoint["model"]) == set(one.model.state_dict())  # no "module." prefix


def test_one_process_resumes_a_two_process_checkpoint(setup, tmp_path):
    shutil.copy(setup["root"] / "resume.pt", tmp_path / "ck.pt")  # its epoch 2 was trained by 2 processes
    resumed = train(setup["params"], "shapes", "rope_mixed", tmp_path / "live", tmp_path / "ck.pt", progress=False)
    assert resumed.resumed_from_epoch == 2
    assert_same_model(setup["one"].model, resumed.model, setup["params"])


def test_two_processes_resume_a_single_process_checkpoint(setup):
    resumed = setup["spawned"]["resumed"]
    assert resumed["resumed_from_epoch"] == 1
    two = build_model(setup["params"], "shapes", "rope_mixed")
    two.load_state_dict(resumed["model"])
    assert_same_model(setup["one"].model, two, setup["params"])
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert load_checkpoint(setup["root"] / "resume.pt")["epoch"] == 2


def test_evaluation_shards_count_every_image_once(setup, data_root):
    spawned = setup["spawned"]
    for n in EVAL_SIZES:
        shards = spawned["shards"][n]
        assert sorted(i for shard in shards for i in shard) == list(range(n))
        assert [len(shard) for shard in shards] == [(n + 1) // 2, n // 2]
    val = load_split(data_root, "shapes", "val", 32)
    torch.manual_seed(0)
    model = build_model(setup["params"], "shapes", "rope_mixed")  # as the processes built it
    for n in EVAL_SIZES:
        alone = evaluate_accuracy(model, val.subset(range(n)), batch_size=2, label_smoothing=0.1)
        together = spawned["evaluated"][n]
        assert round(together["acc"] * n) == round(alone["acc"] * n)  # exact counts
        assert together["acc"] == alone["acc"]
        assert together["loss"] == pytest.approx(alone["loss"], rel=1e-6)


def test_batch_size_not_divisible_by_the_processes_is_refused(setup):
    assert "batch_size must be divisible by the number of processes" in setup["spawned"]["refused"]


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module, params: Params) -> None:
    images = load_split(Path(params.data_root), "shapes", "val", 32).images[:64]
    with torch.no_grad():
        difference = (a.eval()(normalize(images)) - b.eval()(normalize(images))).abs().max().item()
    print(f"largest logit difference, 1 vs {WORLD} processes: {difference:.2e}")
    assert difference < 1e-4
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, atol=1e-5, rtol=0)


def _worker(rank: int, params: Params, data_root: Path, root: Path, port: int) -> None:
    """One of WORLD processes, joined as torchrun would join them."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.setup()
    try:
        out = {"shards": {}, "evaluated": {}}
        for n in EVAL_SIZES:
            out["shards"][n] = _gather(list(dist.shard(range(n))))
        torch.manual_seed(0)
        model = build_model(params, "shapes", "rope_mixed")
        val = load_split(data_root, "shapes", "val", 32)
        for n in EVAL_SIZES:
            out["evaluated"][n] = evaluate_accuracy(model, val.subset(range(n)), batch_size=2, label_smoothing=0.1)

        resumed = train(params, "shapes", "rope_mixed", root / "resumed" / "live", root / "resume.pt", progress=False)
        out["resumed"] = {"resumed_from_epoch": resumed.resumed_from_epoch, "model": resumed.model.state_dict(),
                          "history": resumed.history}

        odd = params.model_copy(update={"train": params.train.model_copy(update={"batch_size": 63})})
        try:
            train(odd, "shapes", "rope_mixed", root / "odd" / "live", root / "odd.pt", progress=False)
        except ValueError as err:
            out["refused"] = str(err)
        if dist.is_main():
            torch.save(out, root / "spawned.pt")

        with open(root / f"stdout.{rank}", "w") as stdout, contextlib.redirect_stdout(stdout):
            train_cli(["--params", str(root / "params.yaml"), "--dataset", "shapes", "--variant", "rope_mixed",
                       "--out", str(root / "two"), "--checkpoint-dir", str(root / "two-checkpoints"), "--no-progress"])
    finally:
        dist.cleanup()


def _gather(obj) -> list:
    objects = [None] * WORLD
    torch.distributed.all_gather_object(objects, obj)
    return objects


def _spawn(fn, *args) -> None:
    """Run fn(rank, *args, port) in WORLD processes; fail (and stop them) if one fails or they hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.start_processes(fn, args=(*args, port), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, f"{WORLD} processes still running after {TIMEOUT}s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
