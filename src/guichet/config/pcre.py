"""Kong's regexes (PCRE syntax) compiled with Python's ``re``.

Kong hands route regex paths (``~/users/(?<id>\\d+)$``) and ``~*`` header values to PCRE.
Python's ``re`` accepts nearly the same syntax; the differences met in real ``kong.yml``
files are the named-group spellings, which this module rewrites before compiling:

* ``(?<name>...)`` and ``(?'name'...)``  ->  ``(?P<name>...)``
* ``\\k<name>``, ``\\k'name'``, ``\\k{name}`` and ``(?P=name)``  ->  ``(?P=name)``
* ``\\z`` (end of subject)  ->  ``\\Z``

Lookbehinds (``(?<=``, ``(?<!``) are left alone, and nothing inside a character class or
after a backslash is rewritten. Any other PCRE-only construct (``\\K``, recursion, ``\\h``)
fails to compile and is reported as an invalid regex: the loader and the router use this
same function, so what loads is exactly what matches.
"""

from __future__ import annotations

import re
from functools import lru_cache

_NAME_START = re.compile(r"[A-Za-z_]")


def translate_pcre(pattern: str) -> str:
    """Rewrite the PCRE-only spellings listed above into Python ``re`` syntax."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if not in_class and nxt == "k" and i + 2 < n and pattern[i + 2] in "<'{":
                close = {"<": ">", "'": "'", "{": "}"}[pattern[i + 2]]
                end = pattern.find(close, i + 3)
                if end != -1:
                    out.append(f"(?P={pattern[i + 3:end]})")
                    i = end + 1
                    continue
            if not in_class and nxt == "z":
                out.append("\\Z")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            i += 1
            # a "]" right after "[" or "[^" is a literal member of the class
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("]")
                i += 1
            continue
        if pattern.startswith("(?<", i) and _NAME_START.match(pattern, i + 3):
            out.append("(?P<")
            i += 3
            continue
        if pattern.startswith("(?'", i):
            end = pattern.find("'", i + 3)
            if end != -1:
                out.append(f"(?P<{pattern[i + 3:end]}>")
                i = end + 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_pcre(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """Compile a Kong (PCRE) regex; raises ``re.error`` when Python cannot express it."""
    return re.compile(translate_pcre(pattern), flags)
