"""lib/run/lanes.py: which stages run side by side and how they are dealt into lanes. The lanes' real run, and that
a stage's results do not depend on the lane that ran it, are checked end to end by tests/test_pipeline.py (its
studies are built as `make repro` builds them)."""
import subprocess
import sys

import pytest
import yaml

from lib.run.lanes import PHASES, cpu_shares, select
from tests.conftest import REPO

STAGES = ["train@shapes-ape", "train@shapes-rope_mixed", "train-zoo@shapes-linear", "train-case-study@signs-ape",
          "train-seeds@shapes-rope_mixed-1", "rq1@shapes-rrc-ape", "rq1-summary", "evaluate", "efficiency",
          "analysis@shapes-ape", "analysis-summary", "analysis-seeds", "safety@signs-ape", "safety-summary", "convex",
          "segmentation", "paper-figures"]


def test_phases_train_first_then_read_longest_first_and_leave_out_what_runs_alone():
    phases = [select(STAGES, patterns) for patterns in PHASES]
    assert phases == [["rq1@shapes-rrc-ape", "train@shapes-ape", "train@shapes-rope_mixed", "train-zoo@shapes-linear",
                       "train-case-study@signs-ape", "train-seeds@shapes-rope_mixed-1"],
                      ["convex", "analysis-seeds", "segmentation", "evaluate", "analysis@shapes-ape", "safety@signs-ape",
                       "rq1-summary"],
                      ["analysis-summary", "safety-summary"]]
    assert select(STAGES, ("train*", "train@*")) == select(STAGES, ("train*",))  # a stage once
    assert [s for s in STAGES if not select([s], sum(PHASES, ()))] == ["efficiency", "paper-figures"]
    # what a phase's stages read under results/ (dvc.yaml's deps) comes from an earlier phase
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    def results_folders(stage: str, key: str) -> set[str]:  # results/<folder>/... that a stage reads or writes
        paths = [next(iter(p)) if isinstance(p, dict) else p for p in stages[stage.split("@")[0]][key]]
        return {p.split("/")[1] for p in paths if p.startswith("results/")}

    written_before: set[str] = set()
    for number, phase in enumerate(phases):
        for stage in phase:
            assert bool(results_folders(stage, "deps")) == (number > 0), stage  # the first phase reads no results
            assert results_folders(stage, "deps") <= written_before, stage
        written_before |= set().union(*(results_folders(stage, "outs") for stage in phase))


# a stage in a lane must not take every core: what limits each phase stage's threads (floats depend on the count)
THREADS_SET_BY = {"train": "limit_threads(params.threads)", "analysis": "limit_threads(params.threads)",
                  "safety": "limit_threads(params.threads)", "evaluate": "limit_threads(params.threads)",
                  "convex": "torch.set_num_threads(1)", "rq1": "run_cell(", "segmentation": "segment_cells(",
                  "analysis-seeds": "explain_cells(", "safety-seeds": "limit_threads(params.threads)",
                  "rq1-summary": "limit_threads(params.threads)", "analysis-summary": "limit_threads(params.threads)",
                  "safety-summary": "limit_threads(params.threads)"}


def test_every_phase_stage_limits_its_threads():
    """Through params.yaml's `threads` (a tracked param of the stage), one thread, or RQ1's `rq1.threads` per worker."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    in_phases = [name for name in stages if select([f"{name}@x", name], sum(PHASES, ()))]
    assert {name.split("-")[0] if name.startswith("train") else name for name in in_phases} == set(THREADS_SET_BY)
    for name in in_phases:
        notebook = stages[name]["cmd"].split()[3]
        marker = THREADS_SET_BY[name.split("-")[0] if name.startswith("train") else name]
        assert marker in (REPO / notebook).read_text(), f"{name}: {notebook} must limit its threads ({marker})"
        if "params.threads" in marker:
            assert "threads" in stages[name]["params"], f"dvc.yaml {name}: params must list threads"


def test_lanes_get_disjoint_cpu_shares_where_there_are_enough_cpus():
    assert cpu_shares([0, 1], 2) == [{0}, {1}]
    assert cpu_shares([0, 1, 2, 3, 4], 2) == [{0, 2, 4}, {1, 3}]
    assert cpu_shares([0, 1], 1) == [{0, 1}]
    assert cpu_shares([0], 2) == [{0}, {0}]  # more lanes than CPUs: they share
    with pytest.raises(ValueError, match="parallel_stages: expected at least 1, got 0"):
        cpu_shares([0, 1], 0)


def test_a_pool_inside_a_lane_is_no_larger_than_its_cpu_share():
    """An RQ1 cell in a lane of one CPU trains its seeds in its own process instead of two workers on one CPU."""
    probe = ("import os; os.sched_setaffinity(0, {0}); from lib.run.study import available_cpus, map_in_workers; "
             "print(available_cpus(), map_in_workers(os.getpid, [(), ()], workers=2, threads=1) == [os.getpid()] * 2)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1", "True"]


def test_the_runner_starts_without_importing_torch():
    """`make repro` runs it as a script, before every `dvc repro`: it must not pay for torch."""
    probe = "import runpy, sys; runpy.run_path('lib/run/lanes.py', run_name='probe'); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-P", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert "$(BIN)/python -P lib/run/lanes.py\n\t$(BIN)/dvc repro" in (REPO / "Makefile").read_text()


def test_lanes_reproduce_independent_stages_and_name_the_one_that_failed(tmp_path):
    """A tiny DVC project: four independent stages, one failing. Both lanes run (DVC's lock is shared between the
    two `dvc repro` processes), every other stage is reproduced and recorded in dvc.lock, the failure is named."""
    stages = {f"s{i}": {"cmd": f"python -c \"import time; time.sleep(1); open('out{i}.txt', 'w').write('{i}')\"",
                        "outs": [f"out{i}.txt"]} for i in range(3)}
    stages["broken"] = {"cmd": "python -c \"raise SystemExit(3)\"", "outs": ["never.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "params.yaml").write_text("parallel_stages: 2\n")
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)
    runner = [sys.executable, "-P", str(REPO / "lib" / "run" / "lanes.py"), "s*", "broken"]
    result = subprocess.run(runner, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "lanes: failed: broken" in result.stderr
    assert "4 stages matching s* broken, 2 at a time" in result.stdout
    assert {line[:8] for line in result.stdout.splitlines() if line.startswith("[lane")} == {"[lane 1]", "[lane 2]"}
    assert [(tmp_path / f"out{i}.txt").read_text() for i in range(3)] == ["0", "1", "2"]
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "s0", "s1", "s2"], cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout
