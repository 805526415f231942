"""YAML config files with line numbers: ``FILE:LINE: path: message`` errors.

The one loader for every YAML file Siaga reads (the site config, simulation scenarios, the
coordinator's config and office registry): PyYAML's SafeLoader with YAML 1.2 booleans (only
true/false, so ``contact: NO`` stays a string), the line of every key and list item, duplicate
keys refused. It knows no config model: ``agent.config`` and ``central.config`` validate the data
with their own pydantic models and use :func:`line` to point at the failing key. A bottom-layer
module (it imports nothing of Siaga), so ``central`` may import it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import yaml

Loc = tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    path: str  # dotted, with [i] for list items; "" for the whole file
    line: int | None  # 1-based YAML line, None when unknown
    message: str


class ConfigError(Exception):
    """Everything wrong with one config file. ``str()`` gives ``FILE:LINE: path: message``
    lines (``:LINE`` left out when unknown, ``path: `` when the problem is the whole file)."""

    def __init__(self, problems: list[Problem], source: str = "<string>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(f"{self.source}{'' if p.line is None else f':{p.line}'}: "
                         f"{p.path + ': ' if p.path else ''}{p.message}" for p in self.problems)


_BOOL = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false), so ``contact: NO`` stays a string."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != _BOOL]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def dotted(loc: tuple) -> str:
    """``("a", "b", "2", "c")`` -> ``a.b[2].c``."""
    s = ""
    for seg in loc:
        s += f"[{seg}]" if isinstance(seg, int) or str(seg).isdigit() else f".{seg}"
    return s.lstrip(".")


def _index(node: yaml.Node, loc: Loc, lines: dict[Loc, int], dups: list[Problem],
           seen: set[int]) -> None:
    """Record the line of every key and list item under ``node``; report duplicate keys."""
    if id(node) in seen:  # aliases share nodes; also stops recursive anchors
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            sub, at = loc + (key.value,), key.start_mark.line + 1
            if key.value in first and key.value != "<<":
                msg = f"duplicate key {key.value!r} (first on line {first[key.value]})"
                dups.append(Problem(dotted(sub), at, msg))
                continue
            first[key.value] = at
            lines[sub] = at
            _index(value, sub, lines, dups, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = loc + (str(i),)
            lines[sub] = item.start_mark.line + 1
            _index(item, sub, lines, dups, seen)


MAX_EXPANDED_NODES = 1_000_000  # values after aliases are expanded: "billion laughs" is refused


class _Expansion(ValueError):
    def __init__(self, node: yaml.Node, why: str) -> None:
        super().__init__(why)
        self.line = node.start_mark.line + 1


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (each node counted
    once, so this is cheap); raises _Expansion (at the node's line) past MAX_EXPANDED_NODES or for a self-reference."""
    known = memo.get(id(node))
    if known is not None:
        if known < 0:
            raise _Expansion(node, "an alias refers to the value it is part of")
        return known
    memo[id(node)] = -1
    total = 1
    if isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(item, memo) for item in node.value)
    if total > MAX_EXPANDED_NODES:
        raise _Expansion(node, f"this expands to more than {MAX_EXPANDED_NODES:,} values through aliases (*name)")
    memo[id(node)] = total
    return total


def line(lines: dict[Loc, int], loc: tuple) -> int | None:
    """The line of ``loc`` (a pydantic error location), or of its nearest parent."""
    key = tuple(str(s) for s in loc)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return None


def line_of(lines: dict, path: str, prefix: tuple = ()) -> int | None:
    """Line of a dotted path (``a.b[2].c``) under ``prefix``, or of its nearest parent."""
    parts = tuple(int(s) if s.isdigit() else s for s in re.findall(r"[^.\[\]]+", path))
    return line(lines, prefix + parts)


def read_yaml(text: str, source: str = "<string>",
              top_level: str = "the top level must be a mapping") -> tuple[dict, dict[Loc, int]]:
    """The mapping at the top of ``text`` and the line of every key in it; ConfigError (empty,
    not a mapping, a syntax error, a duplicate key) with the line where known."""
    lines: dict[Loc, int] = {}
    dups: list[Problem] = []
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                try:
                    _expanded_size(node, {})
                except _Expansion as e:
                    raise ConfigError([Problem("", e.line, f"refused: {e}")], source) from None
                _index(node, (), lines, dups, set())
            if dups:
                raise ConfigError(dups, source)
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(s for s in (e.context, e.problem) if s)
        raise ConfigError([Problem("", mark.line + 1 if mark else None,
                                   f"YAML syntax error: {msg}")], source) from None
    except yaml.reader.ReaderError as e:
        at = text[: e.position].count("\n") + 1
        msg = f"YAML syntax error: {e.reason} (character #x{e.character:x})"
        raise ConfigError([Problem("", at, msg)], source) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as e:
        # e.g. an impossible !!timestamp (ValueError) or absurd nesting (RecursionError)
        raise ConfigError([Problem("", None, f"cannot read YAML: {e}")], source) from None
    if data is None:
        raise ConfigError([Problem("", None, "the file is empty")], source)
    if not isinstance(data, dict):
        raise ConfigError([Problem("", 1, top_level)], source)
    return data, lines


def read_text(path: str | os.PathLike[str]) -> str:
    """A config file's text (UTF-8, a BOM allowed); ConfigError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        return raw.decode("utf-8-sig")
    except OSError as e:
        raise ConfigError([Problem("", None, f"cannot read the file: {e.strerror or e}")],
                          str(path)) from None
    except UnicodeDecodeError as e:
        at = raw[: e.start].count(b"\n") + 1
        raise ConfigError([Problem("", at, "the file is not UTF-8 text")], str(path)) from None
