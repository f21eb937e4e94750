"""Kong's value rules (``kong/db/schema/typedefs.lua``, ``kong/tools/ip.lua``), one function each.

Every ``check_*`` function returns its argument unchanged when it is valid and raises
``ValueError`` with Kong's wording otherwise, so it can be used directly as a pydantic
``AfterValidator``. The rules:

* names (services, routes, plugin instances): ASCII letters, digits, ``. - _ ~`` and any
  non-ASCII character; upstream names: a hostname (no IP, no port).
* tags: printable characters except ``,`` and ``/``.
* identity values (consumer ``username`` and ``custom_id``, basic-auth and hmac-auth
  usernames, ACL groups, JWT keys): no control character (C0, DEL), since each is sent to
  the upstream in a header (X-Consumer-Username, X-Consumer-Custom-ID, X-Consumer-Groups,
  X-Credential-Identifier); any other character, Chinese included, is accepted. Not a
  Kong rule: Kong accepts them and would write them into the upstream request.
* hosts: ``hostname_type`` decides ipv4 / ipv6 / name exactly as Kong does; names are
  ASCII letters, digits, ``- . _`` with no label ending in ``-`` and no empty label except a
  trailing one; ports are 0..65535; IPv6 may be bracketed and only then carry a port.
* route hosts: at most one ``*``, as the whole leftmost or rightmost label; an optional port.
* SNIs: a name (never an IP, never a port), optionally with one leading or trailing ``*``.
* paths (service path, health check path): start with ``/``, no empty segment, only
  RFC 3986 characters, well-formed percent-encoding.
* route paths: ``/prefix`` (must already be in normalised form, see ``normalize_uri``) or
  ``~/regex`` (must compile, see ``guichet.config.pcre``).
* header names: ``[A-Za-z0-9_-]+``; cookie names: an RFC 7230 token; methods: ``[A-Z]+``.
* ids: a UUID written 8-4-4-4-12, stored lower-cased.
"""

from __future__ import annotations

import ipaddress
import re

from guichet.config.pcre import compile_pcre

_NAME = re.compile(r"[A-Za-z0-9.\-_~\u0080-\U0010ffff]+")
_TAG_FORBIDDEN = re.compile(r"[\x00-\x1f,/\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_NAMES = {"\r": "CR", "\n": "LF", "\t": "TAB", "\x00": "NUL", "\x7f": "DEL"}
_HOST_LABELS = re.compile(r"[A-Za-z0-9\-._]+")
_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?::(\d+))?")
_PATH_CHARS = re.compile(r"/[A-Za-z0-9.\-_~/%:@!$&'()*+,;=]*")
_PERCENT_TRIPLET = re.compile(r"%[0-9A-Fa-f]{2}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN_FORBIDDEN = re.compile(r'[\x00-\x20\x7f()<>@,;:\\"/?={}\[\]]')
_METHOD = re.compile(r"[A-Z]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RESERVED = frozenset(b"!*'();:@&=+$,/?%#[]")
_ESCAPED_TRIPLET = re.compile(rb"%([0-9A-Fa-f]{2})")


class HostAddress:
    """What ``normalize_ip`` found: kind ``ipv4`` / ``ipv6`` / ``name``, host, optional port."""

    __slots__ = ("kind", "host", "port")

    def __init__(self, kind: str, host: str, port: int | None) -> None:
        self.kind, self.host, self.port = kind, host, port


def parse_host(address: str) -> HostAddress:
    """Kong's ``normalize_ip``: IPv4 (normalised), IPv6 (compressed, no brackets) or name."""
    kind = "ipv6" if address.count(":") > 1 else (
        "ipv4" if re.fullmatch(r"[\d.]+", address.replace(":", "")) else "name")
    if kind == "ipv4":
        m = _IPV4.fullmatch(address)
        if not m or any(int(p) > 255 for p in m.groups()[:4]):
            raise ValueError(f"invalid ipv4 address: {address}")
        host = ".".join(str(int(p)) for p in m.groups()[:4])
        return HostAddress(kind, host, _port(m.group(5)))
    if kind == "ipv6":
        port: int | None = None
        inner = address
        if address.startswith("["):
            end = address.find("]")
            if end == -1:
                raise ValueError(f"invalid ipv6 address: {address}")
            inner, rest = address[1:end], address[end + 1:]
            if rest:
                if not re.fullmatch(r":\d+", rest):
                    raise ValueError("invalid ipv6 address")
                port = _port(rest[1:])
        try:
            host = ipaddress.IPv6Address(inner).compressed
        except ValueError:
            raise ValueError(f"invalid ipv6 address: {address}") from None
        return HostAddress(kind, host, port)
    name, port = address, None
    m = re.search(r":(\d+)$", address)
    if m:
        name, port = address[: m.start()], _port(m.group(1))
    if not _HOST_LABELS.fullmatch(name):
        raise ValueError(f"invalid hostname: {address}")
    labels = name.split(".")
    for index, label in enumerate(labels):
        if label.endswith("-") or (label == "" and index != len(labels) - 1):
            raise ValueError(f"invalid hostname: {address}")
    return HostAddress(kind, name, port)


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    if int(text) > 65535:
        raise ValueError("invalid port number")
    return int(text)


def check_utf8_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid value '{name}': the only accepted ascii characters are "
                         "alphanumerics or ., -, _, and ~")
    return name


def check_tag(tag: str) -> str:
    if _TAG_FORBIDDEN.search(tag):
        raise ValueError(f"invalid tag '{tag}': expected printable ascii (except `,` and `/`) "
                         "or valid utf-8 sequences")
    return tag


def check_header_text(value: str) -> str:
    """A value the gateway sends to the upstream in an identity header."""
    found = _CONTROL.search(value)
    if found is not None:
        char = found.group()
        shown = _CONTROL_NAMES.get(char, f"U+{ord(char):04X}")
        raise ValueError(f"must not contain control characters (found {shown}): it is sent "
                         "to the upstream in a header")
    return value


def check_uuid(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise ValueError("expected a valid UUID")
    return value.lower()


def check_host(host: str) -> str:
    """A service host: an IP or a name, without a port."""
    try:
        parsed = parse_host(host)
    except ValueError as exc:
        if str(exc) == "invalid port number":
            raise ValueError("must not have a port") from None
        raise ValueError(f"invalid value: {host}") from None
    if parsed.port is not None:
        raise ValueError("must not have a port")
    return host


def check_host_with_optional_port(host: str) -> str:
    parse_host(host)
    return host


def check_upstream_name(name: str) -> str:
    try:
        parsed = parse_host(name)
    except ValueError:
        raise ValueError(f"Invalid name ('{name}'); must be a valid hostname") from None
    if parsed.kind != "name":
        raise ValueError(f"Invalid name ('{name}'); no ip addresses allowed")
    if parsed.port is not None:
        raise ValueError(f"Invalid name ('{name}'); no port allowed")
    return name


def check_target(target: str) -> str:
    try:
        parse_host(target)
    except ValueError:
        raise ValueError(f"Invalid target ('{target}'); not a valid hostname or ip "
                         "address") from None
    return target


def check_sni(host: str, *, wildcard: bool = True) -> str:
    """An SNI name; with ``wildcard`` one leading or trailing ``*`` is allowed."""
    probe = host
    if wildcard and "*" in host:
        if host.count("*") > 1:
            raise ValueError("only one wildcard must be specified")
        if not (host.startswith("*") or host.endswith("*")):
            raise ValueError("wildcard must be leftmost or rightmost character")
        probe = host.replace("*", "wildcard")
    try:
        parsed = parse_host(probe)
    except ValueError as exc:
        if str(exc) == "invalid port number":
            raise ValueError("must not have a port") from None
        raise ValueError(f"invalid value: {host}") from None
    if parsed.kind != "name":
        raise ValueError("must not be an IP")
    if parsed.port is not None:
        raise ValueError("must not have a port")
    return host


def check_route_host(host: str) -> str:
    if host.count("*") > 1:
        raise ValueError("invalid wildcard: must have at most one wildcard")
    if "*" in host and not (host.startswith("*.") or host.endswith(".*")):
        raise ValueError("invalid wildcard: must be placed at leftmost or rightmost label")
    parse_host(host.replace("*", "abc"))
    return host


def path_problem(path: str) -> tuple[str, str] | None:
    """Kong's ``typedefs.path`` custom check: (message, kind) or None; kind is rfc3986|percent."""
    if not _PATH_CHARS.fullmatch(path):
        return (f"invalid path: '{path}' (characters outside of the reserved list of "
                "RFC 3986 found)", "rfc3986")
    raw = _PERCENT_TRIPLET.sub("___", path)
    pos = raw.find("%")
    if pos != -1:
        return f"invalid url-encoded value: '{raw[pos:pos + 3]}'", "percent"
    return None


def check_path(path: str) -> str:
    """A service path or a health check path (``typedefs.path``)."""
    if not path.startswith("/"):
        raise ValueError("should start with: /")
    if "//" in path:
        raise ValueError("must not have empty segments")
    problem = path_problem(path)
    if problem:
        raise ValueError(problem[0])
    return path


def check_router_path(path: str) -> str:
    """A route path: a normalised ``/prefix`` or a ``~/regex`` that compiles."""
    if not (path.startswith("/") or path.startswith("~/")):
        raise ValueError("should start with: / (fixed path) or ~/ (regex path)")
    if "//" in path:
        raise ValueError("must not have empty segments")
    problem = path_problem(path)
    if problem and problem[1] == "percent":
        raise ValueError(problem[0])
    if not path.startswith("~"):
        normalized = normalize_uri(path, merge_slashes=True)
        if normalized != path:
            raise ValueError(f"non-normalized path, consider use '{normalized}' instead")
        return path
    check_regex(path[1:])
    return path


def check_regex(pattern: str) -> str:
    try:
        compile_pcre(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex: '{pattern}' ({exc})") from None
    return pattern


def check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"bad header name '{name}', allowed characters are A-Z, a-z, 0-9, "
                         "'_', and '-'")
    return name


def check_cookie_name(name: str) -> str:
    if _TOKEN_FORBIDDEN.search(name):
        raise ValueError("contains one or more invalid characters. ASCII control characters "
                         "(0-31;127), space, tab and the characters ()<>@,;:\\\"/?={}[] are "
                         "not allowed.")
    return name


def check_method(method: str) -> str:
    if not _METHOD.fullmatch(method):
        raise ValueError(f"invalid value: {method} (an HTTP method in upper case)")
    return method


def normalize_uri(uri: str, *, merge_slashes: bool) -> str:
    """Kong's ``kong.tools.uri.normalize``: decode unreserved %XX, drop dot segments.

    Reserved characters stay encoded (with upper-case hex). The result is returned
    unchanged when decoding would produce bytes that are not UTF-8.
    """
    if uri in ("", "/"):
        return uri
    data = uri.encode("utf-8")
    if b"%" in data:
        data = _ESCAPED_TRIPLET.sub(_decode_triplet, data)
    if b"." not in data and (not merge_slashes or b"//" not in data):
        return _text(data, uri)
    out: list[bytes] = []
    while data:
        if data == b"/.":
            data = b"/"
        elif data == b"/..":
            data = b"/"
            if out:
                out.pop()
        elif data in (b".", b".."):
            data = b""
        elif data.startswith(b"../"):
            data = data[3:]
        elif data.startswith(b"./"):
            data = data[2:]
        elif data.startswith(b"/./"):
            data = data[2:]
        elif data.startswith(b"/../"):
            data = data[3:]
            if out:
                out.pop()
        elif merge_slashes and data.startswith(b"//"):
            data = data[1:]
        else:
            cut = data.find(b"/", 1)
            if cut == -1:
                out.append(data)
                data = b""
            else:
                out.append(data[:cut])
                data = data[cut:]
    return _text(b"".join(out), uri)


def _decode_triplet(m: re.Match[bytes]) -> bytes:
    num = int(m.group(1), 16)
    if num in _RESERVED:
        return m.group(0).upper()
    return bytes((num,))


def _text(data: bytes, original: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return original
