"""`data.dvc` pins the bytes of data/: materialize it when absent, refuse to go on when it differs.

    python -m lib.data.pin [--dvc-file data.dvc] [--params params.yaml]

- data/ absent (or holding only user-provided data sets, lib/data/external.py): materialize it, then check
  its DVC hash against the pin. A mismatch here means
  the generator no longer reproduces the pinned bytes (e.g. a changed package), which is an error,
  never a silent retrain on other data.
- data.dvc differs from its committed version: an error. `dvc repro` silently rewrites the .dvc
  file of modified data (even a frozen one), so the committed pin is the pin of record.
- data/ present: check its hash against the pin. On a mismatch, the data is regenerated into a
  temporary folder and compared file by file, so the error names each missing, altered or extra file.

The hash is DVC's directory hash, computed from the files, so no DVC cache is needed.
With --params, the user-provided data sets that the params file trains on must be in place and readable.
"""
import argparse
import filecmp
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from lib.data.external import EXTERNAL_DATASETS
from lib.data.materialize import DATASETS, dataset_info, load_split, materialize


class DataPinError(RuntimeError):
    """data/ does not hold the bytes that data.dvc pins."""


def directory_hash(folder: Path) -> str:
    """DVC's hash of a folder: md5 of the sorted JSON list of (file md5, relative path), plus '.dir'.

    Computed from the bytes every time: DVC's own state cache can serve a stale hash after a file
    is rewritten in place, which is exactly the case this check exists for.
    """
    entries = [{"md5": hashlib.md5(path.read_bytes()).hexdigest(), "relpath": path.relative_to(folder).as_posix()}
               for path in _pinned_files(folder)]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def manifest_hash(folder: Path) -> str:
    """Hash of a folder's file list: each file's relative path, size and modification time (not its bytes).

    For the user-provided data sets (lib/data/external.py), which the resume fingerprint must cover too:
    reading every byte of ImageNet (~150 GB) at each training start would take minutes, while replacing or
    editing files changes their size or mtime (extracting another archive, re-labelling, adding images).
    A mere `touch` or a copy that drops mtimes counts as a change: an interrupted run then restarts from
    scratch, the safe side.
    """
    folder = Path(folder)
    entries = sorted((path.relative_to(folder).as_posix(), path.stat().st_size, path.stat().st_mtime_ns)
                     for path in folder.rglob("*") if path.is_file())
    return hashlib.md5(json.dumps(entries).encode()).hexdigest() + ".manifest"


def dataset_hash(data_root: Path, dataset: str) -> str:
    """The hash of the files a run trains on, `data_root/<dataset>`: DVC's directory hash for the embedded data
    sets (as data.dvc pins them, from the bytes, under 0.1 s), a manifest hash for the user-provided ones."""
    folder = Path(data_root) / dataset
    return manifest_hash(folder) if dataset in EXTERNAL_DATASETS else directory_hash(folder)


def _pinned_files(folder: Path) -> list[Path]:
    """The files of data/ that the pin covers: all but the user-provided data sets (data/cifar100, ...), which
    .dvcignore hides from DVC as well."""
    return [path for path in folder.rglob("*")
            if path.is_file() and path.relative_to(folder).parts[0] not in EXTERNAL_DATASETS]


def _remove(data_dir: Path) -> str:
    """The command that removes the pinned data sets (never the user-provided ones beside them)."""
    return "rm -rf " + " ".join(str(data_dir / name) for name in DATASETS)


def _pinned_and_actual(dvc_file: Path) -> tuple[str, str | None, Path]:
    """(pinned hash, current hash or None if the folder is absent, folder) of a `dvc add`ed folder."""
    try:
        (out,) = yaml.safe_load(dvc_file.read_text())["outs"]
        pinned, path = out["md5"], out["path"]
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        raise DataPinError(f"{dvc_file}: expected a DVC file with one output (`outs: [{{md5, path}}]`)") from None
    data_dir = dvc_file.parent / path
    present = data_dir.is_dir() and _pinned_files(data_dir)  # user data alone (data/cifar100, ...) is no data/ yet
    return pinned, (directory_hash(data_dir) if present else None), data_dir


def _differences(data_dir: Path, reference: Path) -> list[str]:
    """Relative paths that are missing, altered or extra in `data_dir` compared with `reference`."""
    expected = {p.relative_to(reference) for p in reference.rglob("*") if p.is_file()}
    present = {p.relative_to(data_dir) for p in _pinned_files(data_dir) if p.name != ".gitignore"}
    problems = [f"missing: {data_dir / p}" for p in sorted(expected - present)]
    problems += [f"altered: {data_dir / p}" for p in sorted(expected & present)
                 if not filecmp.cmp(data_dir / p, reference / p, shallow=False)]
    problems += [f"unexpected: {data_dir / p}" for p in sorted(present - expected)]
    return problems


def ensure_data(dvc_file: Path = Path("data.dvc"), create_missing: bool = True) -> Path:
    """Make sure the folder that `dvc_file` tracks holds exactly the pinned bytes; return that folder.

    create_missing: materialize the folder if it is absent (else that is an error too).
    """
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        raise DataPinError(f"{dvc_file}: not found (expected the DVC file that pins data/)")
    pinned, actual, data_dir = _pinned_and_actual(dvc_file)
    committed = committed_pin(dvc_file)
    if committed is not None and committed != pinned:
        # `dvc repro` silently rewrites a .dvc file whose data was modified (even a frozen one)
        raise DataPinError(
            f"{dvc_file} pins {pinned} but the committed {dvc_file} pins {committed} (DVC re-pins modified data "
            f"during `dvc repro`). Restore with `git checkout {dvc_file} && {_remove(data_dir)} && make data`, "
            f"or commit {dvc_file} if the new data is intended."
        )
    if actual is None and not create_missing:
        raise DataPinError(f"{data_dir}: missing (expected the data pinned by {dvc_file}); run `make data`")
    if actual is None:
        print(f"{data_dir}: absent, materializing from packaged data")
        materialize(data_dir)
        _, actual, _ = _pinned_and_actual(dvc_file)
        if actual != pinned:
            raise DataPinError(
                f"{data_dir}: freshly generated data hashes to {actual}, but {dvc_file} pins {pinned}. "
                "The generator no longer reproduces the pinned bytes (different package versions than "
                "requirements.lock?). If the change is intended, run `dvc add data` and commit data.dvc."
            )
    elif actual != pinned:
        with tempfile.TemporaryDirectory() as reference:
            materialize(Path(reference))
            problems = _differences(data_dir, Path(reference))
        detail = "\n  ".join(problems) if problems else "(the regenerated files match: the pin itself is stale)"
        raise DataPinError(
            f"{data_dir} does not match {dvc_file} (hash {actual}, pinned {pinned}):\n  {detail}\n"
            f"Restore it with `{_remove(data_dir)} && make data`."
        )
    return data_dir


def committed_pin(dvc_file: Path) -> str | None:
    """The hash `dvc_file` pins in the last git commit (None outside git or if the file is not committed)."""
    dvc_file = Path(dvc_file).resolve()
    result = subprocess.run(["git", "show", f"HEAD:./{dvc_file.name}"], cwd=dvc_file.parent,
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    try:
        return yaml.safe_load(result.stdout)["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def check_pinned(data_root: Path) -> None:
    """Before training on `data_root`: if a `<data_root>.dvc` pins it, its bytes must match the pin."""
    dvc_file = Path(data_root).with_name(Path(data_root).name + ".dvc")
    if dvc_file.is_file():
        ensure_data(dvc_file, create_missing=False)


def check_external(params_file: Path) -> list[str]:
    """The user-provided data sets (lib/data/external.py) that `params_file`'s runs train on, each checked to be
    in place (its classes and every split readable); raises FileNotFoundError / ValueError naming what is wrong."""
    from lib.config import load_params  # imports torch and timm: only when asked to check

    params = load_params(params_file)
    used = {dataset for dataset, _ in params.runs()} & set(EXTERNAL_DATASETS)
    root = Path(params.data_root)
    for dataset in sorted(used):
        dataset_info(dataset, root)
        for split in ("train", "val", "test"):
            data = load_split(root, dataset, split, params.datasets[dataset].train_resolution)
            if len(data) == 0:
                raise ValueError(f"{root / dataset}: the {split} split holds no images")
    return sorted(used)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dvc-file", type=Path, default=Path("data.dvc"))
    parser.add_argument("--params", type=Path, help="also check the user-provided data sets this params file trains on")
    args = parser.parse_args(argv)
    try:
        data_dir = ensure_data(args.dvc_file)
        external = check_external(args.params) if args.params else []
    except (DataPinError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{data_dir}: matches {args.dvc_file}" + (f"; user-provided data in place: {', '.join(external)}" if external else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
