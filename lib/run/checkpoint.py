"""Saving and loading checkpoints safely.

Files are written atomically (a temporary file renamed into place), so a run killed mid-write never
leaves a half-written checkpoint, and read with `torch.load(weights_only=True)`, which unpickles
only tensors and plain containers: a crafted checkpoint cannot execute code.
"""
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run."""


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _reason(err: Exception) -> str:
    """The lines of torch.load's error that say what is wrong: its first, and for a refused pickle the
    "Unsupported global: GLOBAL <class>" (or "Unsupported operand") line, which torch puts after its advice."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:1] + [line for line in lines[1:] if "Unsupported" in line])


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint written by `save_atomic`; any failure names the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, truncated write, or a pickle that is not plain weights
        raise CheckpointError(
            f"{path}: unreadable checkpoint (expected a torch.save'd dict of tensors and plain values, "
            f"loadable with weights_only=True): {type(err).__name__}: {_reason(err)}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(state).__name__}")
    return state
