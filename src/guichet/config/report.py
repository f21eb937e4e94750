"""Collects every ``ConfigIssue`` of one load, each located through the document's marks.

Rules: an issue is located at the value its path names; with ``at_key`` at the key
instead (unknown or refused keys); when the path does not exist in the document (a
required key that is missing, a default that failed a check) at the nearest enclosing
value, i.e. the mapping that lacks the key. Pydantic errors are translated into Kong's
wording ("expected an integer", "unknown field", "required field missing" ...).
"""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import ValidationError

from guichet.config.model import ConfigIssue
from guichet.config.yamlmarks import Marks, Path, format_path

_TYPE_MESSAGES = {
    "missing": "required field missing",
    "extra_forbidden": "unknown field",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected a boolean",
    "list_type": "expected an array",
    "dict_type": "expected a map",
    "model_type": "expected a record",
    "model_attributes_type": "expected a record",
}
_KEY_LOCATED = ("extra_forbidden",)


class Reporter:
    """The issues found so far, for one source file."""

    __slots__ = ("source", "marks", "issues")

    def __init__(self, source: str, marks: Marks, issues: Iterable[ConfigIssue] = ()) -> None:
        self.source = source
        self.marks = marks
        self.issues: list[ConfigIssue] = list(issues)

    def add(self, path: Path, message: str, *, at_key: bool = False) -> None:
        mark = self.marks.locate(path, key=at_key)
        line, column = (mark.line, mark.column) if mark else (None, None)
        self.issues.append(ConfigIssue(self.source, line, column, format_path(path), message))

    def add_validation_error(self, base: Path, error: ValidationError,
                             relocate: Any = None) -> None:
        """Report each pydantic error under ``base``; ``relocate(loc, message)`` may
        return a different (loc, message) for errors that belong elsewhere, or None for
        errors already reported another way."""
        for detail in error.errors(include_url=False, include_input=False):
            loc = tuple(p for p in detail["loc"] if p != "[key]")
            at_key = detail["type"] in _KEY_LOCATED or "[key]" in detail["loc"]
            message = pydantic_message(detail)
            if relocate is not None:
                moved = relocate(loc, message)
                if moved is None:
                    continue
                loc, message = moved
            self.add(base + loc, message, at_key=at_key)

    def sorted(self) -> list[ConfigIssue]:
        """Issues in file order; issues about the whole document first."""
        return sorted(self.issues, key=lambda i: (i.line is not None, i.line or 0,
                                                  i.column or 0))


def pydantic_message(detail: Any) -> str:
    kind = detail["type"]
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    ctx = detail.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        return f"expected one of: {ctx.get('expected', '')}".replace(" or ", ", ")
    if kind in ("string_too_short", "too_short"):
        return f"length must be at least {ctx.get('min_length', 1)}"
    return str(detail["msg"])
