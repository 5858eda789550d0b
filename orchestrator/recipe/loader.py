"""Load a recipe: ruamel.yaml with positions, then profiles and ``--set`` overrides.

The result is plain Python data plus a ``Positions`` table mapping each dotted path to the line
and column of its key and value, and an ``origins`` table naming the profile or override that set
a value, so that every later error can point at the right place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Diagnostic, RecipeError

Path_ = tuple[Any, ...]  # a path into the document: ("components", "embed", "params", "lr")


@dataclass
class Positions:
    """1-based (line, col) of keys and values by path."""

    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path_, prefer: str = "value") -> tuple[int, int]:
        """Position of ``path`` or of its nearest ancestor that has one."""
        path = tuple(path)
        while True:
            tables = (self.values, self.keys) if prefer == "value" else (self.keys, self.values)
            for table in tables:
                if path in table:
                    return table[path]
            if not path:
                return (1, 1)
            path = path[:-1]


@dataclass
class LoadedRecipe:
    file: str  # as given by the user (used in messages)
    path: Path  # absolute path of the recipe file
    data: dict[str, Any]
    positions: Positions
    origins: dict[Path_, str] = field(default_factory=dict)  # path -> "--set a.b=1" / "profile 'gpu'"
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)

    def origin_of(self, path: Path_) -> str | None:
        path = tuple(path)
        for i in range(len(path), 0, -1):
            if path[:i] in self.origins:
                return self.origins[path[:i]]
        return None

    def diagnostic(self, path: Path_, message: str, prefer: str = "value") -> Diagnostic:
        line, col = self.positions.locate(path, prefer)
        origin = self.origin_of(path)
        if origin:
            message = f"{message} (value set by {origin})"
        dotted = ".".join(str(p) for p in path)
        return Diagnostic(self.file, line, col, dotted, message)


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


def _plain(node: Any, path: Path_, pos: Positions) -> Any:
    """Convert ruamel's round-trip nodes to plain Python, recording positions."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for k in node:
            child = path + (str(k),)
            try:
                kl, kc = node.lc.key(k)
                pos.keys[child] = (kl + 1, kc + 1)
                vl, vc = node.lc.value(k)
                pos.values[child] = (vl + 1, vc + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            out[str(k)] = _plain(node[k], child, pos)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, v in enumerate(node):
            child = path + (i,)
            try:
                line, col = node.lc.item(i)
                pos.keys[child] = pos.values[child] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
            items.append(_plain(v, child, pos))
        return items
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def parse_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    pos = Positions()
    try:
        raw = _yaml().load(io.StringIO(text))
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = (e.problem or str(e)).strip()
        if "duplicate key" in problem:
            problem += "; each key may appear once in a mapping"
        raise RecipeError([Diagnostic(file, line, col, "", f"invalid YAML: {problem}")]) from None
    except YAMLError as e:  # pragma: no cover - unmarked YAML errors are rare
        raise RecipeError([Diagnostic(file, 1, 1, "", f"invalid YAML: {e}")]) from None
    return _plain(raw, (), pos), pos


def parse_scalar(text: str) -> Any:
    """Parse an override's value as YAML (``3e-5`` -> float, ``[1,5]`` -> list, ``true`` -> bool)."""
    if text.lstrip().startswith(("!", "&", "*", "%", "@", "`")):
        return text  # YAML tags/anchors/reserved: a user writing --set x=!! means the string
    try:
        value, _ = parse_yaml_text(text, "<override>")
    except RecipeError:
        return text
    return text if value is None and text.strip() not in ("null", "~", "") else value


def load_recipe(file: str | Path, profile: str | None = None, overrides: list[str] | None = None) -> LoadedRecipe:
    """Read a recipe file and apply a profile then ``--set`` overrides (later wins)."""
    shown = str(file)
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise RecipeError([Diagnostic(shown, 1, 1, "", "recipe file not found; check the path")])
    data, pos = parse_yaml_text(path.read_text(encoding="utf-8"), shown)
    if not isinstance(data, dict):
        raise RecipeError([Diagnostic(shown, 1, 1, "", "a recipe must be a mapping with at least 'name' and 'components'")])
    loaded = LoadedRecipe(shown, path, data, pos, profile=profile, overrides=list(overrides or []))
    diagnostics: list[Diagnostic] = []
    if profile:
        _apply_profile(loaded, profile, diagnostics)
    for text in overrides or []:
        _apply_override(loaded, text, f"--set {text}", diagnostics)
    if diagnostics:
        raise RecipeError(diagnostics)
    return loaded


def _apply_profile(loaded: LoadedRecipe, name: str, diagnostics: list[Diagnostic]) -> None:
    from .errors import did_you_mean

    profiles = loaded.data.get("profiles") or {}
    if not isinstance(profiles, dict) or name not in profiles:
        names = list(profiles) if isinstance(profiles, dict) else []
        diagnostics.append(Diagnostic(loaded.file, *loaded.positions.locate(("profiles",), "key"), "profiles",
                                      f"no profile named '{name}'{did_you_mean(name, names)}"))
        return
    body = profiles[name] or {}
    if not isinstance(body, dict):
        diagnostics.append(loaded.diagnostic(("profiles", name), "a profile is a mapping of dotted paths to values"))
        return
    for dotted, value in body.items():
        where = loaded.positions.locate(("profiles", name, dotted), "key")
        origin = f"profile '{name}' at {loaded.file}:{where[0]}"
        _set_path(loaded, str(dotted), value, origin, diagnostics, where)


def _apply_override(loaded: LoadedRecipe, text: str, origin: str, diagnostics: list[Diagnostic]) -> None:
    if "=" not in text:
        diagnostics.append(Diagnostic("--set", 1, 1, "", f"override '{text}' must look like a.b.c=value"))
        return
    dotted, raw = text.split("=", 1)
    _set_path(loaded, dotted.strip(), parse_scalar(raw), origin, diagnostics, None)


def _set_path(loaded: LoadedRecipe, dotted: str, value: Any, origin: str, diagnostics: list[Diagnostic],
              where: tuple[int, int] | None) -> None:
    from .errors import did_you_mean

    parts: list[Any] = [p for p in dotted.split(".") if p != ""]
    if not parts:
        diagnostics.append(Diagnostic(loaded.file, 1, 1, "", f"{origin}: empty path"))
        return
    node: Any = loaded.data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not str(part).isdigit() or int(part) >= len(node):
                diagnostics.append(_override_error(loaded, origin, where, dotted, f"'{part}' is not an index of the list at {'.'.join(map(str, parts[:i]))}"))
                return
            parts[i] = int(part)
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            diagnostics.append(_override_error(loaded, origin, where, dotted, f"'{'.'.join(map(str, parts[:i]))}' is not a mapping"))
            return
        if part not in node or node[part] is None:
            # Creating a new branch is fine for params/resources; unknown top-level paths are caught by validation.
            if i < 2 and part not in node:
                hint = did_you_mean(part, node.keys())
                diagnostics.append(_override_error(loaded, origin, where, dotted, f"no key '{part}' at '{'.'.join(map(str, parts[:i])) or '<top>'}'{hint}"))
                return
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not str(last).isdigit() or int(last) >= len(node):
            diagnostics.append(_override_error(loaded, origin, where, dotted, f"'{last}' is not an index of the list"))
            return
        parts[-1] = int(last)
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        diagnostics.append(_override_error(loaded, origin, where, dotted, f"'{'.'.join(map(str, parts[:-1]))}' is not a mapping"))
        return
    path = tuple(parts)
    # Drop stale positions of the replaced subtree; point it at the override's line when known.
    for table in (loaded.positions.keys, loaded.positions.values):
        for p in [p for p in table if p[: len(path)] == path and len(p) > len(path)]:
            del table[p]
    if where is not None:
        loaded.positions.values[path] = where
    loaded.origins[path] = origin


def _override_error(loaded: LoadedRecipe, origin: str, where: tuple[int, int] | None, dotted: str, msg: str) -> Diagnostic:
    if where is None:
        return Diagnostic("--set", 1, 1, dotted, f"{msg} (in {origin})")
    return Diagnostic(loaded.file, where[0], where[1], dotted, f"{msg} (in {origin})")
