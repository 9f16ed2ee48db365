"""Run independent DVC stages side by side: what `make repro` does before its `dvc repro`.

    python -P lib/run/lanes.py             # every phase of PHASES, params.yaml's `parallel_stages` lanes each
    python -P lib/run/lanes.py 'train*'    # only the stages matching these patterns

DVC runs one stage at a time, but releases its repository lock while a stage's command runs and guards each
stage's paths with read/write locks, so separate `dvc repro` processes may reproduce stages that share no outputs
at once. Each phase here runs its stages in `parallel_stages` lanes: a lane takes the next stage of the phase
when its last one ends (`dvc --wait-for-lock repro --single-item <stage>`), every line of output prefixed with
the lane, and runs on its own share of the CPUs (a pool inside a stage, such as an RQ1 cell's seeds, then sizes
itself to that share: lib.run.study.available_cpus). The stages of a phase need nothing from one another (their
upstream stages belong to an earlier phase) and set their own thread counts from params.yaml, so their results
are the same whichever lane, or a plain `dvc repro`, runs them. A stage that is up to date is skipped; a stage that
fails does not stop the others of its phase, but stops the later phases, and the exit status names it.

Run as a script, like lib/run/notebook.py: it imports neither torch nor the `lib` package.
"""
import argparse
import fnmatch
import os
import subprocess
import sys
import threading
from pathlib import Path

import yaml

# The phases, in order, each a tuple of stage-name patterns: every stage that trains, then every stage that reads
# only what those trained, then the summaries of the second phase's stages; within a phase longest first (RQ1 cells
# train 5 seeds each), so short ones fill the lanes at the end. Left to the `dvc repro` after them: the paper, and
# `efficiency`, which times code and must run alone.
PHASES: tuple[tuple[str, ...], ...] = (
    ("rq1@*", "safety-seeds", "train@*", "train-*@*"),
    ("convex", "analysis-seeds", "segmentation", "evaluate", "analysis@*", "safety@*", "rq1-summary"),
    ("analysis-summary", "safety-summary"),
)


def select(stages: list[str], patterns: tuple[str, ...]) -> list[str]:
    """The stages matching any of the glob `patterns`, in the patterns' order, then dvc.yaml's."""
    chosen = []
    for pattern in patterns:
        chosen += [stage for stage in stages if fnmatch.fnmatchcase(stage, pattern) and stage not in chosen]
    return chosen


def cpu_shares(cpus: list[int], lanes: int) -> list[set[int]]:
    """The CPUs each of `lanes` lanes runs on: `cpus` dealt round-robin (every CPU to every lane when there are
    more lanes than CPUs)."""
    if lanes < 1:
        raise ValueError(f"parallel_stages: expected at least 1, got {lanes}")
    if lanes > len(cpus):
        return [set(cpus)] * lanes
    return [set(cpus[i::lanes]) for i in range(lanes)]


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def stage_names() -> list[str]:
    """Every stage of dvc.yaml, matrix items expanded, in dvc.yaml's order."""
    listed = subprocess.run(dvc("stage", "list", "--name-only"), capture_output=True, text=True, check=True)
    return listed.stdout.split()


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (every CPU where the OS cannot say, e.g. macOS): the lanes' to share, or, in
    a stage that a lane runs, that lane's share (lib.run.study.available_cpus)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def run_stage(stage: str, share: set[int], prefix: str) -> bool:
    """`dvc repro --single-item stage` on the CPUs of `share`, its output prefixed; whether it succeeded."""
    process = subprocess.Popen(dvc("--wait-for-lock", "repro", "--single-item", stage), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1)
    if hasattr(os, "sched_setaffinity"):  # dvc imports for a second before it starts the stage, which inherits this
        try:  # (not preexec_fn: unsafe in a threaded parent)
            os.sched_setaffinity(process.pid, share)
        except ProcessLookupError:  # already done
            pass
    for line in process.stdout:
        print(f"{prefix} {line}", end="", flush=True)
    return process.wait() == 0


def run_lanes(stages: list[str], lanes: int) -> list[str]:
    """Every stage of `stages`, `lanes` at a time, each lane on its share of this process's CPUs; the stages that
    failed."""
    queue, failed, lock = list(stages), [], threading.Lock()
    shares = cpu_shares(usable_cpus(), lanes)

    def lane(number: int) -> None:
        while True:
            with lock:
                if not queue:
                    return
                stage = queue.pop(0)
            if not run_stage(stage, shares[number], f"[lane {number + 1}]"):
                with lock:
                    failed.append(stage)

    threads = [threading.Thread(target=lane, args=(number,)) for number in range(min(lanes, len(stages)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [stage for stage in stages if stage in failed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P lib/run/lanes.py", description=__doc__.split("\n")[0])
    parser.add_argument("patterns", nargs="*", help="glob patterns of stage names (default: every phase of PHASES)")
    parser.add_argument("--lanes", type=int, help="stages at once (default: params.yaml's parallel_stages)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    lanes = args.lanes or yaml.safe_load(args.params.read_text()).get("parallel_stages", 1)
    stages = stage_names()
    for patterns in [tuple(args.patterns)] if args.patterns else PHASES:
        selected = select(stages, patterns)
        if not selected:
            continue
        print(f"lanes: {len(selected)} stages matching {' '.join(patterns)}, {min(lanes, len(selected))} at a time",
              flush=True)
        failed = run_lanes(selected, lanes)
        if failed:
            print(f"lanes: failed: {' '.join(failed)} (output above; `dvc status` names the stages left to run)",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
