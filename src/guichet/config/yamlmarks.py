"""YAML (and JSON, which is YAML) parsed into plain Python values plus a line/column table.

``parse_yaml(text, source)`` composes the node tree with PyYAML (the libyaml C composer
when available) and builds the values itself, recording where each value and each mapping
key starts, keyed by its path (``("services", 0, "routes", 1, "paths", 0)``). Rules:

* Lines and columns are 1-based. CRLF, CR and LF line breaks all count as one line.
* Values: null, booleans, integers and floats as YAML 1.1 resolves them (``yes``/``no``
  are booleans, as in Kong's lyaml); timestamps stay the string that was written;
  ``!!binary``, ``!!set``, ``!!omap`` and application tags (``!foo``) are errors.
* Mapping keys are the text that was written (``1: x`` has the key ``"1"``); a key that is
  a mapping or a sequence is an error. A duplicate key is an error at the second key's
  line (Kong's lyaml silently keeps the last one; a duplicate is nearly always a mistake).
  ``<<`` merge keys are honoured, keys written in the mapping win over merged ones.
* Anchors and aliases are expanded; a recursive alias, or a document that expands to more
  than ``100_000 + len(text)`` values (an alias bomb), is an error.
* An empty document, more than one document (``---`` twice) and YAML syntax errors are
  errors with the line of the problem.
* JSON is YAML, except that JSON allows tab indentation: in a document that starts with
  ``{`` tabs are read as spaces (a JSON string cannot hold a raw tab), whichever YAML
  composer, C or Python, is installed.

Every problem becomes a ``ConfigIssue``; parsing never raises for bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from guichet.config.model import ConfigIssue

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = SafeConstructor()
_TAG = "tag:yaml.org,2002:"
_BUILD = {
    _TAG + "null": lambda node: None,
    _TAG + "bool": _SCALARS.construct_yaml_bool,
    _TAG + "int": _SCALARS.construct_yaml_int,
    _TAG + "float": _SCALARS.construct_yaml_float,
    _TAG + "str": lambda node: node.value,
    _TAG + "timestamp": lambda node: node.value,
}
_STR, _INT = _TAG + "str", _TAG + "int"
_PATH_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


class Marks:
    """Where each value (and each mapping key) of a parsed document starts.

    The tables hold PyYAML's own (0-based) marks, converted only when an issue needs one.
    """

    __slots__ = ("values", "keys")

    def __init__(self) -> None:
        self.values: dict[Path, Any] = {}
        self.keys: dict[Path, Any] = {}

    def locate(self, path: Path, *, key: bool = False) -> Mark | None:
        """The mark of ``path`` (of its key when ``key``), else of its nearest ancestor."""
        found = self.keys.get(path) if key else None
        while found is None:
            found = self.values.get(path)
            if found is None and not path:
                return None
            path = path[:-1]
        return Mark(found.line + 1, found.column + 1)


def format_path(path: Iterable[str | int]) -> str:
    """``("services", 0, "routes", 2)`` -> ``"services[0].routes[2]"``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else str(part))
    return "".join(out)


def parse_path(text: str) -> Path:
    """The inverse of ``format_path`` (for sub-paths reported by plugin schemas)."""
    return tuple(int(m.group(1)) if m.group(1) is not None else m.group(2)
                 for m in _PATH_TOKEN.finditer(text))


@dataclass(slots=True)
class ParsedYaml:
    data: Any
    marks: Marks
    issues: list[ConfigIssue]


def parse_yaml(text: str, source: str) -> ParsedYaml:
    """Parse one YAML/JSON document; problems are returned as issues, never raised."""
    marks = Marks()
    if text.lstrip().startswith("{") and "\t" in text:
        text = text.replace("\t", " ")  # one character for one: marks stay right
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = ": ".join(p for p in (exc.context, exc.problem) if p)
        if "expected a single document" in message:
            message = "a configuration file must hold exactly one YAML document"
        return ParsedYaml(None, marks, [_issue(source, mark, (), f"YAML syntax error: {message}")])
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return ParsedYaml(None, marks, [ConfigIssue(
            source, line, column, "", f"YAML error: unacceptable character #x{ord(char):04x}: "
            f"{exc.reason}")])
    if root is None:
        return ParsedYaml(None, marks, [ConfigIssue(
            source, None, None, "", "the configuration is empty: expected a mapping with "
            "_format_version and the entities")])
    builder = _Builder(source, marks, budget=100_000 + len(text))
    data = builder.build(root, ())
    return ParsedYaml(data, marks, builder.issues)


def _issue(source: str, mark: Any, path: Path, message: str) -> ConfigIssue:
    if mark is None:
        return ConfigIssue(source, None, None, format_path(path), message)
    return ConfigIssue(source, mark.line + 1, mark.column + 1, format_path(path), message)


class _Builder:
    def __init__(self, source: str, marks: Marks, budget: int) -> None:
        self.source = source
        self.marks = marks
        self.budget = budget
        self.issues: list[ConfigIssue] = []
        self.active: set[int] = set()
        self.exhausted = False

    def build(self, node: Node, path: Path) -> Any:
        self.budget -= 1
        if self.budget < 0:
            if not self.exhausted:
                self.exhausted = True
                self._error(node, path, "the document expands to too many values "
                                        "(are aliases nested into an alias bomb?)")
            return None
        self.marks.values.setdefault(path, node.start_mark)
        if isinstance(node, ScalarNode):
            if node.tag == _STR:
                return node.value
            if node.tag == _INT and node.value.isdigit() and node.value[0] != "0":
                return int(node.value)
            build = _BUILD.get(node.tag)
            if build is None:
                self._error(node, path, f"unsupported YAML tag '{node.tag}'")
                return None
            try:
                return build(node)
            except (ValueError, yaml.YAMLError):
                self._error(node, path, f"invalid {node.tag.rsplit(':', 1)[-1]} '{node.value}'")
                return None
        if id(node) in self.active:
            self._error(node, path, "recursive alias: a value cannot contain itself")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _TAG + "seq":
                    self._error(node, path, f"unsupported YAML tag '{node.tag}'")
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            if node.tag != _TAG + "map":
                self._error(node, path, f"unsupported YAML tag '{node.tag}'")
            return self._mapping(node, path)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        seen: dict[str, Any] = {}
        merged: list[tuple[Node, Path]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                merged.append((value_node, path))
                continue
            if not isinstance(key_node, ScalarNode):
                self._error(key_node, path, "a mapping key must be a plain value, "
                                            "not a mapping or a sequence")
                continue
            key = key_node.value
            child = path + (key,)
            if key in seen:
                first = seen[key].start_mark.line + 1
                self._error(key_node, child, f"duplicate key '{key}' (first defined at line "
                                             f"{first})")
                continue
            seen[key] = key_node
            self.marks.keys.setdefault(child, key_node.start_mark)
            result[key] = self.build(value_node, child)
        for value_node, at in merged:
            for source in self._merge_sources(value_node, at):
                for key, value in source.items():
                    result.setdefault(key, value)
        return result

    def _merge_sources(self, node: Node, path: Path) -> list[dict[str, Any]]:
        nodes = node.value if isinstance(node, SequenceNode) else [node]
        sources = []
        for item in nodes:
            if not isinstance(item, MappingNode):
                self._error(item, path, "a '<<' merge key needs a mapping or a list of mappings")
                continue
            # merged values keep the marks of the anchor they come from; marks of keys
            # written in the mapping itself were recorded first and win
            sources.append(self.build(item, path))
        return sources

    def _error(self, node: Node, path: Path, message: str) -> None:
        self.issues.append(_issue(self.source, node.start_mark, path, message))
