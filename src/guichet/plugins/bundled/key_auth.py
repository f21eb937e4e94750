"""key-auth: authenticate a request by an API key (Kong's ``key-auth``, priority 1250).

Rules (Kong 3.x ``kong/plugins/key-auth``):

- For each name of ``key_names`` in order, the key is looked for in the request header of
  that name (``key_in_header``), then the query argument (``key_in_query``), then a field
  of the body (``key_in_body``: ``application/x-www-form-urlencoded``, ``application/json``
  (top-level object) or ``multipart/form-data``). The first name that yields a string
  wins. A name that yields several values (a repeated header, query argument or form
  field, or a JSON array or object) is refused: 401 "Duplicate API key found".
- No key, or an empty key: 401 "No API key found in request". A key matching no
  credential, or an expired one (``ttl``): 401 "Unauthorized". Every 401 carries
  ``WWW-Authenticate: Key realm="<realm>"``, or ``Key`` when no realm is configured.
- A realm (of key-auth, basic-auth, hmac-auth, jwt and jwt-jwks: :data:`Realm`) is written
  in a quoted-string of ``WWW-Authenticate``; it may hold only printable ASCII (space
  included) other than ``"`` and ``\\``, so it never needs escaping and always encodes.
- Keys are matched by a dict lookup on their keyed digest
  (:func:`~guichet.plugins.consumers.secret_digest`), in an index built once per
  configuration snapshot and shared by every key-auth instance of it: the time taken does
  not depend on how much of a wrong key was right, and plaintext keys are not kept.
- A key is compared as bytes: a configured key by its UTF-8 encoding; a key from a header
  by the bytes the client sent (the request's headers are Latin-1 text, one character per
  byte, so :func:`header_bytes` gives them back); a key from the query string or the body
  by the UTF-8 encoding of its percent-decoded text. A key "clé" thus matches whether it
  comes in a header as UTF-8 bytes or in the query as ``cl%C3%A9``.
- A credential's ``ttl`` is, as in Kong's declarative files (what ``kong config db_export``
  writes), the Unix time at which it expires: from then on its key is refused.
- ``hide_credentials``: the header and the query argument of the name that held the key
  are removed toward the upstream, and so is the body field when ``key_in_body`` is on
  (the body is sent re-framed with its new Content-Length).
- Success: ``req.set_consumer(consumer, credential, credential.id)``.
- ``anonymous`` set (Kong's "logical OR"): nothing is done when an earlier plugin already
  authenticated the request; a failed authentication lets the request go on as the
  anonymous consumer (X-Anonymous-Consumer: true). An ``anonymous`` naming no consumer is
  a configuration fault answered 500 "anonymous consumer <name> is configured but doesn't
  exist", as in Kong (logged once when the plugin is built, and on each such request).
- ``run_on_preflight: false``: ``OPTIONS`` requests pass without authentication.

The anonymous fallback (:class:`AnonymousFallback`) is shared with basic-auth and
hmac-auth.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Iterable
from urllib.parse import unquote_plus

import orjson
from pydantic import AfterValidator, Field, field_validator

from guichet.plugins.api import ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.consumers import ConsumerDirectory, secret_digest
from guichet.plugins.request import Request

if TYPE_CHECKING:
    from guichet.config.model import Consumer
    from guichet.plugins.env import BuildEnv

log = logging.getLogger("guichet.plugins.auth")

NO_API_KEY = "No API key found in request"
DUPLICATE_API_KEY = "Duplicate API key found"
INVALID_KEY = "Unauthorized"

_KEY_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
# What a quoted-string may hold without escaping, minus HTAB and obs-text (RFC 9110 §5.6.4)
_REALM_CHARACTERS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
DEFAULT_BODY_LIMIT = 8 * 1024 * 1024

# What a lookup of one name in one place of the request found: nothing, a value, or
# several values (Kong's "table" case, refused as a duplicate key).
_DUPLICATE = object()


def check_realm(realm: str) -> str:
    """A realm as it may be written in ``WWW-Authenticate: <scheme> realm="<realm>"``."""
    if not _REALM_CHARACTERS.fullmatch(realm):
        raise ValueError("a realm may hold only printable ASCII characters and spaces, "
                         "without '\"' or '\\' (it is sent in the WWW-Authenticate header)")
    return realm


Realm = Annotated[str, AfterValidator(check_realm)]


def header_bytes(value: str) -> bytes:
    """The bytes a client sent for a header value. Request headers are Latin-1 text (one
    character per byte received), so Latin-1 gives them back exactly; a value set by a
    plugin with characters beyond Latin-1 (never received as such) is taken as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


class AnonymousFallback:
    """Kong's ``anonymous`` rule, shared by the authentication plugins.

    ``skip(req)``: in "logical OR" mode (``anonymous`` set), an earlier plugin already
    authenticated the request with a credential, so this plugin does nothing.
    ``conclude(req, refusal)``: after an authentication attempt, either the refusal is the
    answer ("logical AND" mode), or the request goes on as the anonymous consumer.
    """

    __slots__ = ("name", "consumer", "plugin_name")

    def __init__(self, plugin_name: str, name: str | None, consumers: ConsumerDirectory) -> None:
        self.plugin_name = plugin_name
        self.name = name
        self.consumer: "Consumer | None" = consumers.find(name) if name is not None else None
        if name is not None and self.consumer is None:
            log.error("%s: anonymous consumer %s is configured but doesn't exist",
                      plugin_name, name)

    def skip(self, req: "Request") -> bool:
        return self.name is not None and req.authenticated

    def conclude(self, req: "Request", refusal: ErrorResponse | None) -> Response | None:
        if refusal is None or self.name is None:
            return refusal
        if self.consumer is None:
            message = f"anonymous consumer {self.name} is configured but doesn't exist"
            log.error("%s: %s", self.plugin_name, message)
            return error(500, message)
        req.set_consumer(self.consumer, None)
        return None


class KeyAuthConfig(PluginConfig):
    key_names: list[str] = Field(default_factory=lambda: ["apikey"])
    hide_credentials: bool = False
    anonymous: str | None = None
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    run_on_preflight: bool = True
    realm: Realm | None = None

    @field_validator("key_names")
    @classmethod
    def _valid_key_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.match(_KEY_NAME_PATTERN, name):
                raise ValueError(f"bad header name '{name}', allowed characters are "
                                 "A-Z, a-z, 0-9, '_', and '-'")
        return names


class KeyEntry:
    """One indexed key: its credential, consumer and expiry (monotonic seconds or None)."""

    __slots__ = ("credential", "consumer", "expires_at")

    def __init__(self, credential: Any, consumer: "Consumer", expires_at: float | None) -> None:
        self.credential = credential
        self.consumer = consumer
        self.expires_at = expires_at


def build_key_index(directory: ConsumerDirectory) -> dict[bytes, KeyEntry]:
    """digest(key) -> entry for every key-auth credential whose consumer exists."""
    index: dict[bytes, KeyEntry] = {}
    for credential in directory.credentials("keyauth_credentials"):
        consumer = directory.get(credential.consumer_id)
        if consumer is None:
            continue
        expires_at = getattr(credential, "ttl", None)  # Unix time, or None: never
        index.setdefault(secret_digest(credential.key), KeyEntry(credential, consumer, expires_at))
    return index


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 1250
    Config = KeyAuthConfig
    no_consumer = True

    def __init__(self, config: KeyAuthConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.keys: dict[bytes, KeyEntry] = env.consumers.index("key-auth", build_key_index)
        self.anonymous = AnonymousFallback(self.name, config.anonymous, env.consumers)
        self.www_authenticate = f'Key realm="{config.realm}"' if config.realm else "Key"
        settings = env.settings
        self.body_limit = getattr(settings, "client_body_buffer_size", DEFAULT_BODY_LIMIT)
        # the fast path of access(): a header holding the key, nothing to hide
        self.fast_header = (config.key_names[0] if config.key_in_header
                            and not config.hide_credentials else None)
        self.skip_preflight = not config.run_on_preflight

    def access(self, req: "Request") -> Response | None | Awaitable[Response | None]:
        if self.fast_header is not None:
            # The common case, decided here: the first key name's header, sent once. Kong
            # looks there first too and stops at it, so the answer is the one the long way
            # below would give; anything else (no such header, OPTIONS, an earlier plugin
            # already authenticated) goes the long way.
            values = req.raw_header_values(self.fast_header)
            if (len(values) == 1 and values[0]
                    and not (self.skip_preflight and req.method == "OPTIONS")
                    and not (self.anonymous.name is not None and req.credential is not None)):
                entry = self._lookup(values[0])  # the bytes as sent
                if entry is not None:
                    req.set_consumer(entry.consumer, entry.credential, entry.credential.id)
                    return None
                return self.anonymous.conclude(
                    req, error(401, INVALID_KEY, {"WWW-Authenticate": self.www_authenticate}))
        conf = self.config
        if not conf.run_on_preflight and req.method == "OPTIONS":
            return None
        if self.anonymous.skip(req):
            return None
        position, name, value = self._locate(req, None)
        if (position != 0 or conf.hide_credentials) and self._body_may_hold_key(req):
            # A body field of an earlier name (or of this one) comes first, or the field
            # must be removed from the body: read it.
            return self._access_with_body(req)
        return self.anonymous.conclude(req, self._authenticate(req, name, value, None))

    async def _access_with_body(self, req: "Request") -> Response | None:
        raw = await req.read_body(self.body_limit)
        body = RequestBody(req.header("content-type"), raw)
        _, name, value = self._locate(req, body)
        return self.anonymous.conclude(req, self._authenticate(req, name, value, body))

    def _body_may_hold_key(self, req: "Request") -> bool:
        return (self.config.key_in_body and req.has_body
                and form_kind(req.header("content-type")) is not None)

    # ------------------------------------------------------------------ the key
    def _locate(self, req: "Request", body: "RequestBody | None") -> tuple[int, str | None, Any]:
        """(position in key_names, name, value) of the first name that yields a key (the
        bytes of a header, the text of a query argument or body field) or several values;
        (-1, None, None) when none does."""
        conf = self.config
        query: dict[str, list[str | None]] | None = None
        for position, name in enumerate(conf.key_names):
            value: Any = None
            if conf.key_in_header:
                value = _header_value(req, name)
                if isinstance(value, str):
                    value = header_bytes(value)
            if value is None and conf.key_in_query:
                if query is None:
                    query = parse_form(_query_text(req.query))
                value = _single(query.get(name))
            if value is None and body is not None:
                value = body.value(name)
            if value is _DUPLICATE or isinstance(value, (str, bytes)):
                return position, name, value
        return -1, None, None

    def _authenticate(self, req: "Request", name: str | None, value: Any,
                      body: "RequestBody | None") -> ErrorResponse | None:
        if value is _DUPLICATE:
            return error(401, DUPLICATE_API_KEY, {"WWW-Authenticate": self.www_authenticate})
        if name is not None and self.config.hide_credentials:
            self._hide(req, name, body)
        if not value:
            return error(401, NO_API_KEY, {"WWW-Authenticate": self.www_authenticate})
        entry = self._lookup(value)
        if entry is None:
            return error(401, INVALID_KEY, {"WWW-Authenticate": self.www_authenticate})
        req.set_consumer(entry.consumer, entry.credential, entry.credential.id)
        return None

    def _lookup(self, key: str | bytes) -> KeyEntry | None:
        """The entry of a presented key, by its digest; None when unknown or expired."""
        entry = self.keys.get(secret_digest(key))
        if entry is None or (entry.expires_at is not None and time.time() >= entry.expires_at):
            return None
        return entry

    def _hide(self, req: "Request", name: str, body: "RequestBody | None") -> None:
        req.remove_header(name)
        if "-" in name or "_" in name:
            req.remove_header(_header_alias(name))
        if req.query:
            stripped = remove_form_field(req.query, name)
            if stripped != req.query:
                req.set_query(stripped)
        if body is not None:
            new_body = body.without(name)
            if new_body is not None:
                req.set_body(new_body)


# ---------------------------------------------------------------------- request parsing
def _header_alias(name: str) -> str:
    """Kong reads headers through nginx, where ``_`` and ``-`` in a name are the same."""
    return name.replace("_", "-") if "_" in name else name.replace("-", "_")


def _header_value(req: "Request", name: str) -> Any:
    values = req.header_values(name)
    if not values and ("_" in name):
        values = req.header_values(_header_alias(name))
    if not values:
        return None
    return values[0] if len(values) == 1 else _DUPLICATE


def _query_text(query: str) -> str:
    """The query string as UTF-8 text. The request's query is Latin-1 text (one character
    per byte received): a key sent as raw UTF-8 bytes rather than percent-encoded is read
    as the characters those bytes encode; bytes that are not UTF-8 cannot match a key."""
    if query.isascii():
        return query
    return header_bytes(query).decode("utf-8", "replace")


def _single(values: list[str | None] | None) -> Any:
    """Kong's view of one argument: absent, a string, ``true`` (no "=": ignored) or a table."""
    if not values:
        return None
    if len(values) > 1:
        return _DUPLICATE
    return values[0]


def parse_form(raw: str) -> dict[str, list[str | None]]:
    """``a=1&b&a=2`` -> ``{"a": ["1", "2"], "b": [None]}`` (Kong's argument tables: an
    argument without "=" has no string value)."""
    args: dict[str, list[str | None]] = {}
    for piece in raw.split("&"):
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        args.setdefault(unquote_plus(name), []).append(unquote_plus(value) if eq else None)
    return args


def remove_form_field(raw: str, name: str) -> str:
    """``raw`` (a query string or urlencoded body) without the fields called ``name``; the
    other fields are kept as they were written."""
    kept = [piece for piece in raw.split("&")
            if piece and unquote_plus(piece.partition("=")[0]) != name]
    return "&".join(kept)


def form_kind(content_type: str | None) -> str | None:
    """Which body format Kong's ``get_body`` reads for this Content-Type, if any."""
    if not content_type:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("application/x-www-form-urlencoded"):
        return "form"
    if media.startswith("application/json"):
        return "json"
    if media.startswith("multipart/form-data"):
        return "multipart"
    return None


class RequestBody:
    """A request body read as Kong's ``kong.request.get_body`` reads it. A body that cannot
    be parsed holds no field (Kong logs and goes on with an empty table)."""

    __slots__ = ("kind", "raw", "content_type", "fields", "_json")

    def __init__(self, content_type: str | None, raw: bytes) -> None:
        self.kind = form_kind(content_type)
        self.raw = raw
        self.content_type = content_type or ""
        self.fields: dict[str, Any] = {}
        self._json: dict[str, Any] | None = None
        try:
            if self.kind == "form":
                self.fields = dict(parse_form(raw.decode("utf-8")))
            elif self.kind == "json":
                decoded = orjson.loads(raw)
                if isinstance(decoded, dict):
                    self._json = decoded
                    self.fields = decoded
            elif self.kind == "multipart":
                self.fields = {name: values for name, values in
                               _group(multipart_fields(self.content_type, raw))}
        except (ValueError, UnicodeDecodeError):
            self.fields = {}

    def value(self, name: str) -> Any:
        found = self.fields.get(name)
        if found is None:
            return None
        if self.kind == "json":
            if isinstance(found, (list, dict)):
                return _DUPLICATE
            return found if isinstance(found, str) else None
        return _single(found)

    def without(self, name: str) -> bytes | None:
        """The body without the field ``name``; None when it has no such field."""
        if name not in self.fields:
            return None
        if self.kind == "form":
            return remove_form_field(self.raw.decode("utf-8"), name).encode("utf-8")
        if self.kind == "json" and self._json is not None:
            rest = {k: v for k, v in self._json.items() if k != name}
            return orjson.dumps(rest)
        if self.kind == "multipart":
            return remove_multipart_field(self.content_type, self.raw, name)
        return None


def _group(pairs: Iterable[tuple[str, str | None]]) -> Iterable[tuple[str, list[str | None]]]:
    grouped: dict[str, list[str | None]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped.items()


def _boundary(content_type: str) -> bytes | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary":
            value = value.strip().strip('"')
            return value.encode("latin-1") if value else None
    return None


def _multipart_parts(content_type: str, raw: bytes) -> tuple[bytes, list[bytes]] | None:
    """(delimiter, the parts between the delimiters) of a multipart body, or None."""
    boundary = _boundary(content_type)
    if boundary is None:
        return None
    delimiter = b"--" + boundary
    pieces = raw.split(delimiter)
    if len(pieces) < 3:
        return None
    return delimiter, pieces[1:-1]


def _part_name(part: bytes) -> tuple[str | None, bytes]:
    head, sep, content = part.partition(b"\r\n\r\n")
    if not sep:
        return None, b""
    if content.endswith(b"\r\n"):
        content = content[:-2]
    for line in head.split(b"\r\n"):
        field, _, value = line.partition(b":")
        if field.strip().lower() != b"content-disposition":
            continue
        for param in value.decode("latin-1").split(";")[1:]:
            key, _, pval = param.strip().partition("=")
            if key.strip().lower() == "name":
                return pval.strip().strip('"'), content
    return None, content


def multipart_fields(content_type: str, raw: bytes) -> list[tuple[str, str | None]]:
    """(name, value) of each part of a ``multipart/form-data`` body; a value that is not
    UTF-8 text is None (it cannot be a key)."""
    split = _multipart_parts(content_type, raw)
    if split is None:
        raise ValueError("not a multipart body")
    fields: list[tuple[str, str | None]] = []
    for part in split[1]:
        name, content = _part_name(part)
        if name is None:
            continue
        try:
            fields.append((name, content.decode("utf-8")))
        except UnicodeDecodeError:
            fields.append((name, None))
    return fields


def remove_multipart_field(content_type: str, raw: bytes, name: str) -> bytes | None:
    split = _multipart_parts(content_type, raw)
    if split is None:
        return None
    delimiter, parts = split
    pieces = raw.split(delimiter)
    kept = [part for part in parts if _part_name(part)[0] != name]
    return delimiter.join([pieces[0], *kept, pieces[-1]])
