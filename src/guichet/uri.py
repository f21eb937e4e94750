"""The request-target: split it (RFC 9112 §3.2) and normalise its path (GUARANTEES §6).

``split_target(target) -> (path, query)``

* origin-form ``/p?q``: the path up to the first ``?`` and the query after it (no ``?``;
  ``""`` when there is none).
* absolute-form ``http://host/p?q`` (``http``/``https``/``ws``/``wss``, any case): only its
  path and query are kept, ``/`` when the path is empty. Its authority is **never** used to
  select a route or an upstream: the router reads the Host header, as Kong does. A userinfo
  part (``user@host``) is rejected, as RFC 9110 §4.2.4 asks.
* asterisk-form: exactly ``*`` comes back as ``("*", "")``; whether it is acceptable (only
  for ``OPTIONS``) is the caller's decision, and ``normalize_path("*")`` raises.
* anything else (authority-form, a relative path, an empty target): ``BadRequest``.
* a fragment (``#``) is rejected: RFC 9112's request-target grammar has no fragment, and
  a gateway that dropped it while an upstream kept it (or the reverse) would disagree on
  the resource (Envoy rejects too; nginx truncates).
* space, controls and DEL anywhere: ``BadRequest``. Bytes >= 0x80 are percent-encoded
  (upper-case hex) in the path and the query, so both come back as ASCII ``str``.

``normalize_path(raw_path) -> str`` (Kong's ``kong.tools.uri.normalize`` with merged
slashes, RFC 3986 §6.2.2):

1. the path must start with ``/`` and every ``%`` must start a ``%XX`` hex triplet, else
   ``BadRequest``;
2. triplets of unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded; every other
   triplet stays encoded with its hex upper-cased (``%2f`` -> ``%2F``, an encoded slash is
   never a separator);
3. characters that are neither unreserved nor reserved (space, ``"<>\\^`{|}``, controls,
   non-ASCII) are percent-encoded as UTF-8, and so are ``?`` and ``#``, which cannot be
   part of a path; reserved characters are left as they are;
4. runs of ``/`` become one ``/``;
5. dot segments are removed (RFC 3986 §5.2.4); ``..`` never climbs above the root.

So ``/a/../admin``, ``//admin``, ``/%61dmin`` and ``/admin`` all give ``/admin``. A path
that needs none of this is returned as the very same object (one scan, no allocation).

Kong also decodes triplets of the "other" characters (``%20`` -> space) and re-escapes them
when it forwards; we keep them encoded instead, so the normalised path is always a valid,
ASCII request path that is forwarded as it is. Both choices put the same paths in the same
equivalence class; docs/routing.md lists the one visible effect (regex captures).
"""

from __future__ import annotations

import re

from guichet.errors import BadRequest

__all__ = ["normalize_path", "split_target"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

# A character outside the set kept as-is (unreserved + reserved minus "?" and "#"); "%" is
# outside too, so that a path with escapes takes the slow path, where they are checked.
_ODD_CHAR = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@\[\]/]").search
_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})?")
_TO_ESCAPE = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@\[\]/%]")
_SLASHES = re.compile(r"//+")

_BAD_TARGET_BYTE = re.compile(rb"[\x00-\x20\x7f#]").search
_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
_ABSOLUTE_FORM = re.compile(rb"(?i:https?|wss?)://([^/?]*)")


def normalize_path(raw_path: str) -> str:
    """The normalised form of a request path (rules in the module docstring)."""
    if raw_path[:1] != "/":
        raise BadRequest("Bad request: invalid request path")
    if "//" not in raw_path and "/." not in raw_path and _ODD_CHAR(raw_path) is None:
        return raw_path
    path = raw_path
    if "%" in path:
        path = _TRIPLET.sub(_decode_triplet, path)
    path = _TO_ESCAPE.sub(_escape_char, path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def split_target(target: bytes) -> tuple[str, str]:
    """``(path, query)`` of a request-target (forms and checks in the module docstring)."""
    if _BAD_TARGET_BYTE(target) is not None:
        raise BadRequest("Bad request: invalid request target")
    if target[:1] != b"/":
        if target == b"*":
            return "*", ""
        m = _ABSOLUTE_FORM.match(target)
        if m is None or b"@" in m.group(1):
            raise BadRequest("Bad request: invalid request target")
        target = target[m.end():]
        if target[:1] != b"/":
            target = b"/" + target
    if not target.isascii():
        target = _HIGH_BYTE.sub(_escape_byte, target)
    text = target.decode("ascii")
    cut = text.find("?")
    if cut == -1:
        return text, ""
    return text[:cut], text[cut + 1:]


def _decode_triplet(m: re.Match[str]) -> str:
    hexa = m.group(1)
    if hexa is None:
        raise BadRequest("Bad request: invalid percent-encoding in path")
    char = chr(int(hexa, 16))
    if char in _UNRESERVED:
        return char
    return "%" + hexa.upper()


def _escape_char(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogatepass"))


def _escape_byte(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m.group()[0]


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path that has no empty segment left."""
    parts = path.split("/")
    last = len(parts) - 1
    out: list[str] = []
    for i in range(1, last + 1):
        seg = parts[i]
        if seg == ".":
            if i == last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


_TARGETS: dict[bytes, tuple[str, str, str]] = {}
_TARGET_CACHE_MAX = 4096


def parse_target(target: bytes) -> tuple[str, str, str]:
    """``(path as sent, query, normalised path)`` of a request-target.

    Clients repeat their URLs, so results are cached (targets up to 256 bytes, at most
    ``_TARGET_CACHE_MAX`` of them; the cache is emptied when full). A target that is
    refused raises BadRequest and is never cached. ``*`` comes back as ``("*", "", "*")``.
    """
    hit = _TARGETS.get(target)
    if hit is not None:
        return hit
    raw, query = split_target(target)
    result = (raw, query, raw if raw == "*" else normalize_path(raw))
    if len(target) <= 256:
        if len(_TARGETS) >= _TARGET_CACHE_MAX:
            _TARGETS.clear()
        _TARGETS[target] = result
    return result
