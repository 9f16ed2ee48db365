"""Train one configuration from the command line: the entry point for several GPUs or machines.

    torchrun --nproc_per_node 4 -m lib.train_cli --dataset shapes --variant rope_mixed --device cuda
    python -m lib.train_cli --dataset shapes --variant rope_mixed      # one process, as the DVC stage trains

Writes what the DVC stage (notebooks/train.py) writes for a run: `<out>/live` (dvclive metrics),
`<out>/model.pt` and `<out>/timing.json`, and checkpoints to `<checkpoint-dir>/<dataset>-<variant>.pt`, from
which an interrupted run resumes, also with another number of processes (deleted once model.pt is written).
Only rank 0 writes.
"""
import argparse
import json
from pathlib import Path

from lib import distributed as dist
from lib.config import load_params
from lib.study import run_name
from lib.train import save_model, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lib.train_cli", description=__doc__.split("\n")[0])
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
            save_model(result, out / "model.pt")  # and deletes the checkpoint, now that the run is done
            timing = {"train_seconds": sum(record["epoch_seconds"] for record in result.history),
                      "resumed_from_epoch": result.resumed_from_epoch, "processes": dist.world_size()}
            (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
        dist.barrier()
    finally:
        dist.cleanup()


if __name__ == "__main__":
    main()
