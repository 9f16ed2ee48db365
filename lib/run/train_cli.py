"""Train one configuration from the command line: the entry point for several GPUs or machines.

    torchrun --nproc_per_node 4 -m lib.run.train_cli --dataset shapes --variant rope_mixed --device cuda
    python -m lib.run.train_cli --dataset shapes --variant rope_mixed      # one process, as the DVC stage trains

Writes what the DVC stage (notebooks/train.py) writes for a run: `<out>/live` (dvclive metrics),
`<out>/model.pt` and `<out>/timing.json`, and checkpoints to `<checkpoint-dir>/<dataset>-<variant>.pt`, from
which an interrupted run resumes, also with another number of processes (deleted once model.pt is written).
Only rank 0 writes.
"""
import argparse
from pathlib import Path

from lib.config import load_params
from lib.run import distributed as dist
from lib.run.study import run_name
from lib.run.train import save_run, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.run.train_cli", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--out", type=Path, help="run folder (default: results/runs/<dataset>-<variant>)")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"), help="default: checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no per-step progress bar")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override params.yaml's `device`")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    if args.device:
        params = params.model_copy(update={"device": args.device})
    run = run_name(args.dataset, args.variant)
    out = args.out or Path("results/runs") / run
    try:
        result = train(params, args.dataset, args.variant, live_dir=out / "live",
                       checkpoint_path=args.checkpoint_dir / f"{run}.pt", progress=not args.no_progress)
        if dist.is_main():
            save_run(result, out, processes=dist.world_size())  # and deletes the checkpoint: the run is done
        dist.barrier()
    finally:
        dist.cleanup()


if __name__ == "__main__":
    main()
