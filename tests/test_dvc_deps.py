"""Every DVC stage depends on the lib code it runs, so that changing that code re-runs the stage.

A stage's code is its notebook (or script) and every lib module that it imports, directly or through other lib
modules (static imports, including those inside functions). `dvc repro` re-runs a stage only when one of its
listed `deps` changes: a module missing from the list lets a stage keep results that the current code would not
produce. Exempt, and not followed:
- lib/config (its __init__.py and schema.py): the params schema; the values every stage reads are tracked under
  `params:` (a change to its resolution logic needs `dvc repro --force`, docs/pipeline.md);
- lib/__init__.py: registers the models with timm on any `import lib...`, so following it would make every
  stage depend on every layer;
- lib/run/paths.py (finds the repo root), lib/run/notebook.py (the papermill runner) and lib/run/__init__.py (a
  docstring): they compute no result;
and the imports in NOT_FOLLOWED, inside functions no stage calls.
"""
import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

EXEMPT = {"lib/__init__.py", "lib/config/__init__.py", "lib/config/schema.py", "lib/run/__init__.py", "lib/run/paths.py",
          "lib/run/notebook.py"}
# imports inside a function that no stage calls, by (file, module): not followed
NOT_FOLLOWED = {("lib/run/compiling.py", "lib.efficiency.benchmark"):
                "compile_speedup: the `python -m lib.run.compiling` measurement"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> str | None:
    """Repo-relative file of a dotted lib module (a package's __init__.py), None for names that are not modules."""
    path = Path(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if (REPO / candidate).is_file():
            return candidate.as_posix()
    return None


def lib_imports(path: str) -> set[str]:
    """Dotted names of the lib modules (and their parent packages) that the file at `path` imports."""
    names = set()
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}  # a name may be a module
    parts = [name.split(".") for name in names if name.split(".")[0] == "lib"
             and not any((path, name.rsplit(".", i)[0]) in NOT_FOLLOWED for i in range(name.count(".") + 1))]
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


def code_of(entry: str) -> set[str]:
    """`entry` and every lib file it reaches through imports (EXEMPT files neither listed nor followed)."""
    found, todo = {entry}, [entry]
    while todo:
        for name in lib_imports(todo.pop()):
            path = module_file(name)
            if path and path not in found and path not in EXEMPT:
                found.add(path)
                todo.append(path)
    return found


def entry_point(command: str) -> str:
    """The notebook a stage runs (`python -P lib/run/notebook.py notebooks/X.py ...`), else the script it runs."""
    match = re.search(r"notebooks/\w+\.py", command) or re.search(r"lib/[\w/]+\.py", command)
    assert match, f"no notebook or script in: {command}"
    return match.group(0)


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_depends_on_the_lib_code_it_imports(stage):
    definition = STAGES[stage].get("do", STAGES[stage])  # a foreach stage's definition is under `do`
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in definition.get("deps", [])]
    missing = sorted(path for path in code_of(entry_point(definition["cmd"])) if not covered(path, deps))
    assert missing == [], f"dvc.yaml stage {stage!r} runs code it does not list under deps: {missing}"


def test_the_import_walk_finds_direct_indirect_and_in_function_imports(tmp_path):
    code = code_of("notebooks/safety_summary.py")
    assert "lib/safety/summary.py" in code  # imported by the notebook
    assert "lib/safety/robustness.py" in code  # imported by lib/safety/summary.py
    assert not code & EXEMPT
    assert "lib/layers/rope.py" in code_of("lib/models/vit.py")
