"""Profiles: the study at three scales in one params.yaml, switched by one key.

    profile: default                 # the profile whose values this file holds
    ...                              # every other key, as the study reads it
    profiles:
      default: {train: {epochs: 25}, study: {datasets: [mnist, shapes]}, ...}   # every key a profile sets
      smoke:   {train: {epochs: 2}, ...}       # what differs for the test suite's end-to-end run
      paper:   {study: {datasets: [cifar100, imagenet]}, ...}                   # what differs at GPU scale

DVC reads params.yaml as it is (its matrices cannot pick a list by a key), so a profile is applied by
writing its values into the file: `make profile PROFILE=paper` (`python -m lib.profiles paper`) rewrites
exactly the keys that `profiles.default` lists, in place (comments, layout and every other key kept), and
sets `profile: paper`. A profile's value of a key is its own where it sets the key, else the default's.

Checked whenever params.yaml is loaded (`check`):
- every key a profile sets is set by `profiles.default` and exists in the file;
- every profile, applied, gives a valid params file (the paper profile is validated on a CPU too);
- the file holds the profile that `profile` names. Values edited by hand (an ablation) are fine, but a
  `profile:` edited by hand while the values are still exactly another profile's is an error saying how to
  switch (`make profile` then applies it).
A switch refuses, changing nothing, while a key the profiles set holds a value edited by hand: the switch
would overwrite it.

`python -m lib.profiles paper --set-args` prints the same switch as `dvc exp run -S` arguments instead,
so that it runs as a DVC experiment: `dvc exp run $(python -m lib.profiles paper --set-args)`.
"""
import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str, ...]  # a key's place in the params tree, e.g. ("train", "epochs")


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


def profile_values(raw: dict, name: str) -> dict[KeyPath, Any]:
    """What profile `name` sets: for every key of `profiles.default`, the profile's value or the default's."""
    profiles = raw.get("profiles") or {}
    return {**leaves(profiles.get("default") or {}), **leaves(profiles.get(name) or {})}


def differences(raw: dict, name: str) -> list[KeyPath]:
    """The profile keys whose value in the file differs from profile `name`'s."""
    return [path for path, value in profile_values(raw, name).items() if _get(raw, path) != value]


def held_profile(raw: dict) -> str:
    """The profile whose values the file holds: the named `profile`, unless the file holds exactly another
    profile's values (a hand-edited `profile:`). Values edited by hand (ablations) keep the named profile."""
    named = raw.get("profile", "default")
    if not differences(raw, named):
        return named
    return next((name for name in raw["profiles"] if not differences(raw, name)), named)


def applied(raw: dict, name: str) -> dict:
    """The raw params with profile `name` applied (a deep copy)."""
    result = copy.deepcopy(raw)
    for path, value in profile_values(raw, name).items():
        _set(result, path, copy.deepcopy(value))
    result["profile"] = name
    return result


def check(raw: dict) -> list[str]:
    """Problems with the profiles of raw params (validated by lib.config), one line each; [] when fine."""
    from lib.config import Params, describe_errors  # lib.config calls this module

    profiles = raw.get("profiles")
    if not profiles:
        return []
    problems = []
    if "default" not in profiles:
        return ["profiles: needs a 'default' profile (the keys every profile sets and their default values)"]
    if raw.get("profile", "default") not in profiles:
        return [f"profile: unknown profile {raw.get('profile')!r}; expected one of {sorted(profiles)}"]
    controlled = leaves(profiles["default"])
    for path, value in controlled.items():
        if not _has(raw, path):
            problems.append(f"profiles.default.{dotted(path)}: not a key of this file (a profile sets existing keys)")
        elif isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            problems.append(f"profiles.default.{dotted(path)}: a profile value must be a scalar or a list of scalars")
    for name, block in profiles.items():
        if not isinstance(block, dict):
            problems.append(f"profiles.{name}: expected a mapping of keys to values, got {type(block).__name__}")
            continue
        for path in leaves(block):
            if path not in controlled:
                problems.append(f"profiles.{name}.{dotted(path)}: not set by profiles.default (every key a profile "
                                "sets needs its default value there, so that switching back restores it)")
    if problems:
        return problems
    for name in profiles:
        problems += [f"profiles.{name} (applied): {line}" for line in describe_errors(Params, applied(raw, name))]
    if problems:
        return problems
    named, held = raw.get("profile", "default"), held_profile(raw)
    if held != named:
        example = differences(raw, named)[0]
        problems.append(
            f"profile: {named!r}, but the values are those of profile {held!r} (e.g. {dotted(example)} is "
            f"{_get(raw, example)!r}, profile {named!r} sets {profile_values(raw, named)[example]!r}); "
            f"switch with `make profile PROFILE={named}` (it rewrites only the keys the profiles set)")
    return problems


class ProfileError(ValueError):
    """A profile switch that cannot be made without losing a value."""


def switch(params_file: Path, name: str) -> list[str]:
    """Rewrite `params_file` in place to hold profile `name`; returns the dotted keys that changed.

    Refuses (ProfileError, file untouched) when a profile key holds a value edited by hand.
    """
    params_file = Path(params_file)
    text = params_file.read_text()
    raw = yaml.safe_load(text)
    changes = _changes(params_file, raw, name)
    held = held_profile(raw)
    problems = check({**raw, "profile": held})  # the file as it is, whatever `profile` says
    if problems:
        raise ProfileError("\n".join(f"{params_file}: {line}" for line in problems))
    if name == held:  # already in place, ablation edits and all: at most the `profile` key is set
        changes = {path: value for path, value in changes.items() if path == ("profile",)}
    elif edited := differences(raw, held):
        lines = "\n  ".join(f"{dotted(p)}: {_get(raw, p)!r} (profile {held!r} sets {profile_values(raw, held)[p]!r})"
                            for p in edited)
        raise ProfileError(
            f"{params_file}: these profile keys hold values edited by hand, which switching to {name!r} would "
            f"overwrite:\n  {lines}\nPut them back, or copy them into profiles.{held} first; nothing was changed.")
    expected = copy.deepcopy(raw)
    for path, value in changes.items():
        _set(expected, path, value)
    new_text = _rewrite(text, changes)
    if yaml.safe_load(new_text) != expected:  # the text edit must change exactly these values
        raise ProfileError(f"{params_file}: could not rewrite the file in place; nothing was changed")
    if changes:
        tmp = params_file.with_name(f".{params_file.name}.tmp")
        tmp.write_text(new_text)
        os.replace(tmp, params_file)
    return [dotted(path) for path in changes]


def set_args(params_file: Path, name: str) -> list[str]:
    """`dvc exp run` arguments (`-S key=value` each) that switch `params_file` to profile `name`."""
    args = []
    for path, value in _changes(params_file, yaml.safe_load(Path(params_file).read_text()), name).items():
        text = _flow(value).replace(", ", ",")  # no blanks: `$(...)` splits its output at them
        if any(c.isspace() for c in text):
            raise ProfileError(f"{params_file}: profiles.{name}.{dotted(path)}: {text!r} has blanks, which a shell "
                               "splits; switch with `make profile` instead")
        args += ["-S", f"{dotted(path)}={text}"]
    return args


def _changes(params_file: Path, raw: dict, name: str) -> dict[KeyPath, Any]:
    """The keys, and their new values, that switching `raw` to profile `name` rewrites (`profile` included)."""
    profiles = raw.get("profiles") or {}
    if name not in profiles:
        raise ProfileError(f"{params_file}: unknown profile {name!r}; expected one of {sorted(profiles)}")
    missing = [path for path in leaves(profiles.get("default") or {}) if not _has(raw, path)]
    if missing:  # a misspelt or deleted key: say so the schema's way (with its "did you mean") before anything else
        from lib.config import Params, describe_errors  # lib.config calls this module

        schema = describe_errors(Params, {**raw, "profiles": {}})
        lines = schema + [f"{dotted(path)}: missing, but the profiles set it (profiles.default.{dotted(path)})"
                          for path in missing]
        raise ProfileError("\n".join(f"{params_file}: {line}" for line in lines))
    changes = {path: value for path, value in profile_values(raw, name).items() if _get(raw, path) != value}
    if raw.get("profile", "default") != name:
        changes[("profile",)] = name
    return changes


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
    parser.add_argument("--set-args", action="store_true", help="print `dvc exp run -S` arguments instead")
    args = parser.parse_args(argv)
    try:
        if not isinstance(yaml.safe_load(args.params.read_text()), dict):
            raise ProfileError(f"{args.params}: expected a params file (a YAML mapping of the study's keys)")
        name = args.profile or yaml.safe_load(args.params.read_text()).get("profile", "default")
        if args.set_args:
            print(" ".join(set_args(args.params, name)))
            return 0
        changed = switch(args.params, name)
    except (ProfileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.params}: profile {name!r}" + (f", {len(changed)} keys rewritten: {', '.join(changed)}"
                                                if changed else ", already in place"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
