"""On-the-fly migration of ``_format_version`` "1.1" and "2.1" documents to "3.0".

The rules are Kong's (``kong/db/declarative/migrations/route_path.lua`` and
``kong/db/migrations/migrate_path_280_300.lua``):

* Only ``paths`` of routes are touched: top-level ``routes`` and ``routes`` nested in
  top-level ``services``. Nothing else changes between the formats.
* A path made only of ``[a-zA-Z0-9.\\-_~/%]`` is a plain prefix: it is normalised
  (unreserved ``%XX`` decoded, reserved ones upper-cased, dot segments removed, repeated
  slashes merged) and stays a prefix.
* Any other path is a regex: it gains the ``~`` prefix, and each ``%XX`` is decoded, except
  reserved characters (kept encoded, upper-cased) and regex metacharacters
  ``. ^ - { } \\ |`` (decoded to their escaped form, e.g. ``%2E`` -> ``\\.``).
* ``_format_version`` becomes "3.0" afterwards.

Validation (``_format_version`` missing or not one of "1.1", "2.1", "3.0") is the loader's
job; ``migrate_document`` leaves documents of any other version untouched.
"""

from __future__ import annotations

import re
from typing import Any

from guichet.config.rules import normalize_uri

FORMAT_VERSIONS = ("1.1", "2.1", "3.0")
LEGACY_VERSIONS = ("1.1", "2.1")
CURRENT_VERSION = "3.0"

_PLAIN_PATH = re.compile(r"[a-zA-Z0-9.\-_~/%]*")
_TRIPLET = re.compile(rb"%([0-9A-Fa-f]{2})")
_RESERVED = frozenset(b"!#$%&'()*+,/:;=?@[]")
_REGEX_META = {ord(k): v.encode() for k, v in
               {".": r"\.", "^": r"\^", "-": r"\-", "{": r"\{", "}": r"\}", "\\": "\\\\",
                "|": r"\|"}.items()}


def is_plain_path(path: str) -> bool:
    """Kong 2.x's test: a path that is not a regex."""
    return _PLAIN_PATH.fullmatch(path) is not None


def migrate_path(path: str) -> str:
    """One 1.1/2.1 route path in its 3.0 form."""
    if is_plain_path(path):
        return normalize_uri(path, merge_slashes=True)
    decoded = _TRIPLET.sub(_decode_regex_triplet, path.encode("utf-8"))
    try:
        return "~" + decoded.decode("utf-8")
    except UnicodeDecodeError:  # %XX bytes that are not UTF-8: keep them encoded
        return "~" + path


def _decode_regex_triplet(m: re.Match[bytes]) -> bytes:
    num = int(m.group(1), 16)
    if num in _RESERVED:
        return m.group(0).upper()
    return _REGEX_META.get(num) or bytes((num,))


def migrate_document(doc: Any) -> bool:
    """Migrate ``doc`` in place when its version is legacy; True when anything was done."""
    if not isinstance(doc, dict) or doc.get("_format_version") not in LEGACY_VERSIONS:
        return False
    _migrate_routes(doc.get("routes"))
    services = doc.get("services")
    if isinstance(services, list):
        for service in services:
            if isinstance(service, dict):
                _migrate_routes(service.get("routes"))
    doc["_format_version"] = CURRENT_VERSION
    return True


def _migrate_routes(routes: Any) -> None:
    if not isinstance(routes, list):
        return
    for route in routes:
        if not isinstance(route, dict):
            continue
        paths = route.get("paths")
        if isinstance(paths, list):
            route["paths"] = [migrate_path(p) if isinstance(p, str) else p for p in paths]
