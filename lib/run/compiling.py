"""torch.compile for the study's models: compile where asked, fall back to eager (one line) where a model cannot.

Every attention variant and position encoding traces whole (fullgraph=True) under torch.compile and torch.export,
with the eager outputs and gradients (tests/test_compile.py): RoPE rotates in real arithmetic while traced
(lib/layers/rope.py). `train.compile: true` compiles the training step (forward and backward); evaluation stays
eager. Whether compiling pays depends on the machine and on how many steps share one compilation:

    python -m lib.run.compiling --grid 6 --batch 128     # eager vs compiled training steps, and the compile time
"""
import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn


def compile_or_eager(module: nn.Module, name: str, warmup: Callable[[nn.Module], None], log=print) -> nn.Module:
    """`torch.compile(module)`, compiled now by `warmup(compiled)` (e.g. one training forward and backward);
    if compiling fails, `module` itself, with one line naming `name` and the error. The global RNG is left as
    it was, so a run's draws do not depend on whether it compiled."""
    compiled = torch.compile(module)
    try:
        with torch.random.fork_rng():
            warmup(compiled)
    except Exception as err:  # any failure of Dynamo, AOTAutograd or Inductor: train eagerly instead
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        log(f"train.compile: {name} does not compile ({type(err).__name__}: {first}); training it eagerly")
        return module
    finally:
        module.zero_grad(set_to_none=True)  # the warm-up's gradients never reach an optimizer step
    return compiled


def compile_speedup(pos_embed: str, grid: int, batch: int, repeats: int, rounds: int,
                    attention: str = "softmax") -> dict:
    """Training steps of the study's CPU-sized ViT, eager against compiled (same weights and images): the
    compile time (the first compiled step) and, over `rounds` interleaved rounds of `repeats` steps each,
    images/s of both and the speed-up per round (median, min, max); `break_even_steps`: steps after which the
    compiled run has saved its compile time."""
    from lib.efficiency.benchmark import images_for, median_seconds, tiny_model, train_step  # not a training dependency

    eager = tiny_model(attention, pos_embed, grid)
    images = images_for(grid, batch)
    eager_step = train_step(eager, images)
    compiled_step = train_step(torch.compile(copy.deepcopy(eager)), images)
    start = time.perf_counter()
    compiled_step()
    compile_seconds = time.perf_counter() - start
    eager_times, compiled_times = [], []
    for _ in range(rounds):  # interleaved: a slow phase of the machine hits both
        eager_times.append(median_seconds(eager_step, repeats))
        compiled_times.append(median_seconds(compiled_step, repeats))
    speedups = [e / c for e, c in zip(eager_times, compiled_times)]
    saved = statistics.median(eager_times) - statistics.median(compiled_times)
    return {"attention": attention, "pos_embed": pos_embed, "grid": grid, "batch": batch,
            "eager_images_per_s": batch / statistics.median(eager_times),
            "compiled_images_per_s": batch / statistics.median(compiled_times),
            "speedup": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
            "compile_seconds": compile_seconds,
            "break_even_steps": compile_seconds / saved if saved > 0 else float("inf")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pos-embeds", nargs="+", default=["ape", "rope_axial", "rope_mixed"])
    parser.add_argument("--grid", type=int, default=6, help="patch grid side (6: shapes at 24 px)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [compile_speedup(p, args.grid, args.batch, args.repeats, args.rounds) for p in args.pos_embeds]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(pd.DataFrame(rows).round(2).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
