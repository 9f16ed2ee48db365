"""Process-group helpers for training on several GPUs or machines with torchrun (DistributedDataParallel).

torchrun starts one process per GPU (or per CPU share) and gives each the environment variables RANK,
WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR / MASTER_PORT). `setup()` then joins the process group: NCCL
with one GPU per process where CUDA is available, else gloo on the CPU. A process started any other way
is a single process: rank 0 of 1, `setup()` joins nothing and the collectives below return their input.
The only state is torch.distributed's own process group.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Subset


def launched() -> bool:
    """Whether torchrun (or anything that sets its environment variables) started this process."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def local_device(choice: str = "cpu") -> torch.device:
    """The device `choice` (params.yaml `device`) names for this process: "cpu"; "cuda" (an error without a
    GPU); "auto" (CUDA where available). Under torchrun a GPU is this process's cuda:LOCAL_RANK."""
    if choice not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device: expected cpu, cuda or auto, got {choice!r}")
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise RuntimeError("device: cuda, but torch sees no CUDA device (set `device: cpu` or `auto` in params.yaml)")
    if choice == "cpu" or not cuda:
        return torch.device("cpu")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # torch.use_deterministic_algorithms needs it
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def setup(choice: str = "cpu") -> torch.device:
    """Join the process group if launched by torchrun (once; later calls only return the device).

    Returns the device to train on (`local_device(choice)`): under torchrun, this process's GPU with NCCL or
    the CPU with gloo; a single process not started by torchrun joins nothing.
    """
    device = local_device(choice)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return device


def cleanup() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files (checkpoints, logs) and prints."""
    return rank() == 0


def share() -> slice:
    """This process's share of a sequence that every process holds: every world_size-th item from its rank."""
    return slice(rank(), None, world_size())


def shard(dataset: Dataset) -> Dataset:
    """This process's share of `dataset` (see `share`): the shards are disjoint, hold every item exactly once
    between them and differ in size by at most one. One process's shard is the dataset itself."""
    return dataset if world_size() == 1 else Subset(dataset, range(len(dataset))[share()])


def barrier() -> None:
    """Wait until every process has got here."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(*values: int | float) -> tuple:
    """Each value summed over all processes (e.g. correct counts, loss sums); ints stay ints (exact up to 2**53)."""
    if not dist.is_initialized():
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(totals)
    return tuple(type(value)(total) for value, total in zip(values, totals.tolist()))


def all_true(flag: bool) -> bool:
    """Whether `flag` holds on every process (so that all of them stop together, or none)."""
    return all_reduce_sum(int(not flag))[0] == 0


def broadcast_object(obj=None, src: int = 0):
    """`obj` as process `src` passed it (pickled), returned on every process; the others pass None."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel, which averages gradients over the processes; `model` itself on one.

    Train through the wrapper; save, evaluate and read the model itself (same parameters, no "module." prefix).
    """
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU with NCCL, the CPU with gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
