"""Profiles: the study at other scales, each an override file listing only what differs from params.yaml.

    params.yaml            the default study (2 CPU cores); `profile:` names the scale its values are at
    profiles/smoke.yaml    what the test suite's end-to-end run changes (seconds per stage)
    profiles/paper.yaml    what the GPU-scale study changes (ViT-S, CIFAR-100 and ImageNet-style folders)

DVC reads params.yaml as it is (its matrices cannot pick a list by a key), so a profile is applied by writing
its values into the file: `make profile PROFILE=paper` (`python -m lib.config.profiles paper`) sets exactly the keys
that profiles/paper.yaml lists, in place, and `profile: paper`. Every other key, every comment and the layout
are kept, so `git diff params.yaml` shows the profile and nothing else (a YAML round trip through ruamel, as
`dvc exp run -S` does, re-lays out 40 lines of this file). `make profile PROFILE=default` puts the keys the
held profile set back to the committed default study's values (git HEAD's params.yaml, or `--default FILE`).

A switch refuses, changing nothing, while a key it would overwrite holds a value edited by hand (an ablation
of the held profile), when a profile names a key params.yaml does not have, and when the result is not a valid
study (lib.config's schema). Ablations of keys no profile sets are kept.

`python -m lib.config.profiles paper --set-args` prints the same switch as `dvc exp run -S` arguments instead:
`dvc exp run $(python -m lib.config.profiles paper --set-args)`.
"""
import argparse
import copy
import difflib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lib.config import Params, describe_errors

DEFAULT = "default"  # the profile params.yaml holds when no override is applied
KeyPath = tuple[str, ...]  # a key's place in the params tree, e.g. ("train", "epochs")


class ProfileError(ValueError):
    """A profile switch that cannot be made without losing a value, or a bad profile file."""


def leaves(tree: dict, prefix: KeyPath = ()) -> dict[KeyPath, Any]:
    """Every non-mapping value of a nested mapping, by path (lists are values, not branches)."""
    found = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and value:
            found.update(leaves(value, path))
        else:
            found[path] = value
    return found


def dotted(path: KeyPath) -> str:
    return ".".join(path)


def _get(tree: dict, path: KeyPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _has(tree: dict, path: KeyPath) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _set(tree: dict, path: KeyPath, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _missing_key(tree: dict, path: KeyPath) -> str:
    """Why `path` is not in `tree`: the first part that is missing, with the closest existing key."""
    for depth, key in enumerate(path):
        if not isinstance(tree, dict) or key not in tree:
            known = list(tree) if isinstance(tree, dict) else []
            hint = difflib.get_close_matches(key, known, n=1)
            where = dotted(path[:depth + 1])
            return f"{where}: not a key of params.yaml" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        tree = tree[key]
    return ""


# --- profiles and what they set ------------------------------------------------------------------------

def profile_names(profiles_dir: Path) -> list[str]:
    return [DEFAULT, *sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))]


def read_profile(name: str, profiles_dir: Path) -> dict[KeyPath, Any]:
    """The keys profile `name` sets and its values ({} for the default study)."""
    if name == DEFAULT:
        return {}
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {name!r}: {path} not found; expected one of {profile_names(profiles_dir)}")
    try:
        block = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(block, dict):
        raise ProfileError(f"{path}: expected a mapping of params.yaml keys to values, got {type(block).__name__}")
    values = leaves(block)
    for path_, value in values.items():
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            raise ProfileError(f"{path}: {dotted(path_)}: a profile value must be a scalar or a list of scalars")
        if path_ == ("profile",):
            raise ProfileError(f"{path}: profile: set by the switch itself, not by a profile file")
    return values


def committed_default(params_file: Path) -> dict:
    """The default study as committed: git HEAD's version of `params_file`."""
    params_file = Path(params_file).resolve()
    result = subprocess.run(["git", "show", f"HEAD:./{params_file.name}"], cwd=params_file.parent,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ProfileError(f"{params_file}: cannot read the committed default study (git show HEAD:{params_file.name}: "
                           f"{result.stderr.strip()}); pass --default FILE, a params file at the default profile")
    raw = yaml.safe_load(result.stdout)
    if not isinstance(raw, dict) or raw.get("profile", DEFAULT) != DEFAULT:
        raise ProfileError(f"{params_file}: git HEAD's version is not at the default profile; pass --default FILE, "
                           f"a params file at the default profile (e.g. `git show main:params.yaml > default.yaml`)")
    return raw


def read_profiles(profiles_dir: Path) -> dict[str, dict[KeyPath, Any]]:
    """Every profile by name, what it sets (`read_profile`); the default sets nothing."""
    return {name: read_profile(name, profiles_dir) for name in profile_names(profiles_dir)}


def profile_values(default: dict, own: dict[KeyPath, Any], keys) -> dict[KeyPath, Any]:
    """The value of each of `keys` under a profile that sets `own`: its own where it sets the key, else the
    default study's."""
    return {path: own[path] if path in own else _get(default, path) for path in keys}


def applied(raw: dict, name: str, profiles_dir: Path) -> dict:
    """`raw` (the default study) with profile `name`'s values set (a deep copy)."""
    result = copy.deepcopy(raw)
    for path, value in read_profile(name, profiles_dir).items():
        if not _has(result, path):
            raise ProfileError(f"{Path(profiles_dir) / name}.yaml: {_missing_key(result, path)}")
        _set(result, path, copy.deepcopy(value))
    result["profile"] = name
    return result


def held_profile(raw: dict, default: dict, profiles: dict[str, dict[KeyPath, Any]]) -> str:
    """The profile whose values the file holds: the named `profile`, unless the file holds exactly another
    profile's values (a hand-edited `profile:`). Values edited by hand (ablations) keep the named profile."""
    named = raw.get("profile", DEFAULT)
    keys = {path for own in profiles.values() for path in own}  # every key some profile sets

    def holds(name: str) -> bool:
        values = profile_values(default, profiles[name], keys)
        return all(_has(raw, p) and _get(raw, p) == v for p, v in values.items())

    if named not in profiles or holds(named):
        return named
    return next((name for name in profiles if holds(name)), named)


def _with(raw: dict, changes: dict[KeyPath, Any]) -> dict:
    result = copy.deepcopy(raw)
    for path, value in changes.items():
        _set(result, path, value)
    return result


def _changes(params_file: Path, raw: dict, name: str, profiles_dir: Path, default: dict) -> dict[KeyPath, Any]:
    """The keys, and their new values, that switching `raw` to profile `name` writes (`profile` included).
    Raises ProfileError, naming each key, where the switch would lose a hand-edited value."""
    read_profile(name, profiles_dir)  # an unknown name first
    profiles = read_profiles(profiles_dir)
    problems = [f"{profiles_dir / n}.yaml: {_missing_key(default, p)}" for n, own in profiles.items() for p in own
                if not _has(default, p)]
    missing = [f"{params_file}: {dotted(p)}: missing, but profile {n!r} sets it" for n, own in profiles.items()
               for p in own if _has(default, p) and not _has(raw, p)]
    if missing:  # a misspelt or deleted key: the schema says which, with its "did you mean"
        problems += [f"{params_file}: {line}" for line in describe_errors(Params, raw)] + missing
    if problems:
        raise ProfileError("\n".join(dict.fromkeys(problems)))
    held = held_profile(raw, default, profiles)
    keys = list(dict.fromkeys([*profiles.get(held, {}), *profiles[name]]))  # held's and the target's, once
    now = profile_values(default, profiles.get(held, {}), keys)
    edited = [p for p in keys if _get(raw, p) != now[p]]
    if name != held and edited:
        lines = "\n  ".join(f"{dotted(p)}: {_get(raw, p)!r} (profile {held!r} sets {now[p]!r})" for p in edited)
        raise ProfileError(
            f"{params_file}: these keys hold values edited by hand, which switching to {name!r} would overwrite:\n"
            f"  {lines}\nPut them back, or copy them into profiles/{name}.yaml first; nothing was changed.")
    target = profile_values(default, profiles[name], keys)
    changes = {} if name == held else {p: v for p, v in target.items() if _get(raw, p) != v}
    if raw.get("profile", DEFAULT) != name:
        changes[("profile",)] = name
    invalid = describe_errors(Params, _with(raw, changes))
    if invalid:
        raise ProfileError("\n".join(f"{params_file} at profile {name!r}: {line}" for line in invalid))
    return changes


def _plan(params_file: Path, name: str, profiles_dir: Path | None, default: dict | None) -> tuple[str, dict, dict]:
    """The file's text, its values and the changes switching it to profile `name` makes (`_changes`)."""
    profiles_dir = Path(profiles_dir) if profiles_dir is not None else params_file.parent / "profiles"
    text = params_file.read_text()
    raw = _params_mapping(params_file, text)
    default = committed_default(params_file) if default is None else default
    return text, raw, _changes(params_file, raw, name, profiles_dir, default)


def switch(params_file: Path, name: str, profiles_dir: Path | None = None, default: dict | None = None) -> list[str]:
    """Rewrite `params_file` in place to hold profile `name`; returns the dotted keys that changed.

    profiles_dir: where the profile files are (default: profiles/ beside `params_file`); default: the default
    study's raw params (default: git HEAD's `params_file`). Refuses (ProfileError, file untouched) where a key it
    would overwrite holds a value edited by hand.
    """
    params_file = Path(params_file)
    text, raw, changes = _plan(params_file, name, profiles_dir, default)
    if not changes:
        return []
    new_text = _rewrite(text, changes)
    if yaml.safe_load(new_text) != _with(raw, changes):  # the text edit must change exactly these values
        raise ProfileError(f"{params_file}: could not rewrite the file in place; nothing was changed")
    tmp = params_file.with_name(f".{params_file.name}.tmp")
    tmp.write_text(new_text)
    os.replace(tmp, params_file)
    return [dotted(path) for path in changes]


def set_args(params_file: Path, name: str, profiles_dir: Path | None = None, default: dict | None = None) -> list[str]:
    """`dvc exp run` arguments (`-S key=value` each) that switch `params_file` to profile `name`."""
    params_file = Path(params_file)
    _, _, changes = _plan(params_file, name, profiles_dir, default)
    args = []
    for path, value in changes.items():
        text = _flow(value).replace(", ", ",")  # no blanks: `$(...)` splits its output at them
        if any(c.isspace() for c in text):
            raise ProfileError(f"{params_file}: {dotted(path)}: {text!r} has blanks, which a shell splits; switch "
                               "with `make profile` instead")
        args += ["-S", f"{dotted(path)}={text}"]
    return args


def _params_mapping(params_file: Path, text: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ProfileError(f"{params_file}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{params_file}: expected a params file (a YAML mapping of the study's keys)")
    return raw


# --- the in-place text edit ---------------------------------------------------------------------------

def _flow(value: Any) -> str:
    """A value as one line of YAML flow text: 25, 3.0e-3, null, [mnist, shapes]."""
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    if isinstance(value, float) and value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.15e}".split("e")
        mantissa = mantissa.rstrip("0")
        return f"{mantissa}{'0' if mantissa.endswith('.') else ''}e{int(exponent)}"  # YAML 1.1 needs the '.'
    text = yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()
    return text[1:-1]  # the list brackets around the single item


def _value_spans(text: str, changes: dict[KeyPath, Any]) -> list[tuple[int, int, KeyPath, bool]]:
    """(start, end) character offsets of each changed value in `text`, its path, and whether it sits in
    flow context (inside {...})."""
    from ruamel.yaml import YAML  # locates every node's line and column

    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    document = YAML().load(text)
    spans = []
    for path in changes:
        parent = _get(document, path[:-1]) if len(path) > 1 else document
        key_line, key_col, line, col = parent.lc.data[path[-1]]
        start = starts[line] + col
        in_flow = bool(getattr(parent, "fa", None) and parent.fa.flow_style())
        if parent[path[-1]] is None and (line != key_line or text[start] in "#\n"):
            # a null written as nothing after the colon (`dvc exp run -S` writes null so): the value starts there
            start = text.index(":", starts[key_line] + key_col) + 1
            spans.append((start, start, path, in_flow))
            continue
        spans.append((start, _value_end(text, start, in_flow), path, in_flow))
    return sorted(spans, reverse=True)


def _value_end(text: str, start: int, in_flow: bool) -> int:
    """Offset just past the YAML value that begins at `start` (a flow collection or a plain scalar)."""
    if text[start] in "[{":
        depth, i = 0, start
        while True:
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                return i
    i = start
    stops = ",}]\n" if in_flow else "\n"
    while i < len(text) and text[i] not in stops and not (text[i] == "#" and text[i - 1] in " \t"):
        i += 1
    return len(text[start:i].rstrip()) + start


def _wrapped(value: Any, column: int, width: int = 118) -> str:
    """Flow text of `value`; a list too long for the line continues under its first item."""
    text = _flow(value)
    if not isinstance(value, list) or column + len(text) <= width:
        return text
    lines, line = [], "["
    for item in (_flow(v) for v in value):
        if len(line) > 1 and column + len(line) + len(item) + 2 > width:
            lines.append(line + ",")
            line = " " * (column + 1) + item
        else:
            line += ("" if line.endswith("[") else ", ") + item
    return "\n".join(lines + [line + "]"])


def _rewrite(text: str, changes: dict[KeyPath, Any]) -> str:
    """`text` with the values at `changes`' paths replaced, EOL comments kept in their column."""
    if not changes:
        return text
    for start, end, path, in_flow in _value_spans(text, changes):
        empty = start == end  # nothing after the colon: the new value needs its blank
        column = start - (text.rfind("\n", 0, start) + 1) + empty
        new = (" " if empty else "") + (_flow(changes[path]) if in_flow else _wrapped(changes[path], column))
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        rest = text[end:line_end]
        comment = rest.find("#")
        if not in_flow and comment > 0 and rest[:comment].strip() == "":  # keep the comment where it was
            room = end - start + comment
            new = new.ljust(room - 1) + " " if len(new) < room and "\n" not in new else new + "  "
            end += comment
        text = text[:start] + new + text[end:]
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", nargs="?", help="the profile to switch to (default: the one `profile` names)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--profiles", type=Path, default=None, help="profile files (default: profiles/ beside --params)")
    parser.add_argument("--default", type=Path, default=None,
                        help="a params file at the default profile (default: git HEAD's version of --params)")
    parser.add_argument("--set-args", action="store_true", help="print `dvc exp run -S` arguments instead")
    args = parser.parse_args(argv)
    try:
        raw = _params_mapping(args.params, args.params.read_text())
        default = None if args.default is None else _params_mapping(args.default, args.default.read_text())
        name = args.profile or raw.get("profile", DEFAULT)
        if args.set_args:
            print(" ".join(set_args(args.params, name, args.profiles, default)))
            return 0
        changed = switch(args.params, name, args.profiles, default)
    except (ProfileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.params}: profile {name!r}" + (f", {len(changed)} keys rewritten: {', '.join(changed)}"
                                                if changed else ", already in place"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
