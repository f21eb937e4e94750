"""Rules that relate several fields of one entity (Kong's ``entity_checks``).

Each ``check_<kind>`` takes a validated model and returns ``[(sub-path, message)]``; an
empty list means the entity is consistent. The rules:

* service: ``tls_verify`` only with protocol https or wss.
* route: protocols are either within {http, https} or within {ws, wss}; ``snis`` only when
  the protocols contain https or wss; at least one of methods, hosts, headers, paths (plus
  snis for https/wss) is set and non-empty; header names are unique once lower-cased and
  never ``Host``, each has at least one value, and ``~*`` values are regexes that compile.
* upstream: Kong's ``hash_on``/``algorithm`` shorthand (see ``upstream_algorithm``), then
  the hash rules: the ``*_header``/``*_cookie``/``*_query_arg``/``*_uri_capture`` field a
  hash source needs is present, ``hash_fallback`` is ``none`` when ``hash_on`` is ``none``
  or ``cookie``, never repeats ``hash_on`` (except header/query_arg/uri_capture with a
  different name), and the on/fallback names differ.
* certificate: ``cert_alt``/``key_alt`` both or neither; PEM that parses (with the
  ``cryptography`` package when installed, else an armour check); each key matches its
  certificate; the alternative certificate has a different key type.
* consumer: at least one of ``username`` and ``custom_id``.
* JWT secret: algorithms RS*, PS*, ES* and EdDSA need ``rsa_public_key`` (Kong requires
  it for RS*, PS* and EdDSA only; an ES* secret without a key could never verify a
  token); that key must be a PEM public key (parsed with ``cryptography``) whose type
  fits the algorithm: RSA for RS*/PS*, the curve P-256/P-384/P-521 for ES256/384/512,
  Ed25519 or Ed448 for EdDSA. With HS* algorithms ``rsa_public_key`` is not used.
* basic-auth password: when the file's secrets are to be transformed (the root's
  ``_transform``, true by default) the plaintext is hashed with bcrypt on load, so it
  must be at most 72 UTF-8 bytes (bcrypt ignores the rest); with ``_transform: false``
  it must already be a bcrypt or argon2 hash (Kong's own unsalted SHA-1 form is refused).

``parse_service_url`` expands a service's ``url`` shorthand the way Kong does: the scheme
is the protocol; the port defaults to 443 for https and wss, to 80 otherwise; no path
means no path. Unlike Kong, user information, a query string or a fragment are errors
(Kong silently drops them).
"""

from __future__ import annotations

import re
from typing import Any

from guichet import passwords
from guichet.config import rules, schema

Problems = list[tuple[tuple[str | int, ...], str]]

_SNI_PROTOCOLS = ("https", "wss")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?", re.S)


def parse_service_url(url: str) -> dict[str, Any]:
    """``https://api.example.com:8443/v1`` -> protocol, host, port and path fields."""
    m = _URL.fullmatch(url)
    if not m:
        raise ValueError(f"could not parse url '{url}': expected scheme://host[:port][/path]")
    scheme, authority, path, query, fragment = m.groups()
    if query is not None or fragment is not None:
        raise ValueError("url must not have a query string or a fragment")
    if "@" in authority:
        raise ValueError("url must not contain user information")
    host, port = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        host, rest = authority[: end + 1], authority[end + 1:]
        if end == -1 or (rest and not re.fullmatch(r":\d+", rest)):
            raise ValueError(f"invalid host in url '{url}'")
        port = rest[1:] or None
    elif ":" in authority:
        host, port = authority.rsplit(":", 1)
        if not port.isdigit():
            raise ValueError(f"invalid port in url '{url}'")
    if not host:
        raise ValueError("missing host in url")
    fields: dict[str, Any] = {"protocol": scheme, "host": host}
    fields["port"] = int(port) if port else (443 if scheme in ("https", "wss") else 80)
    if path:
        fields["path"] = path
    return fields


def check_service(service: schema.Service) -> Problems:
    if service.tls_verify is not None and service.protocol not in _SNI_PROTOCOLS:
        return [(("tls_verify",), "can only be set when 'protocol' is 'https' or 'wss'")]
    return []


def check_route(route: schema.Route) -> Problems:
    problems: Problems = []
    protocols = set(route.protocols)
    if not (protocols <= {"http", "https"} or protocols <= {"ws", "wss"}):
        problems.append((("protocols",), "'http'/'https' and 'ws'/'wss' cannot be mixed "
                                         "in one route"))
    secure = bool(protocols & set(_SNI_PROTOCOLS))
    if route.snis and not secure:
        problems.append((("snis",), "'snis' can only be set when 'protocols' contains "
                                    "'https' or 'wss'"))
    needed = ["methods", "hosts", "headers", "paths"] + (["snis"] if secure else [])
    if not any(getattr(route, name) for name in needed):
        shown = ", ".join(f"'{name}'" for name in needed)
        which = "https" if "https" in protocols else "wss" if "wss" in protocols else (
            "ws" if "ws" in protocols else "http")
        problems.append(((), f"must set one of {shown} when 'protocols' is '{which}'"))
    seen: dict[str, str] = {}
    for name, values in route.headers.items():
        lowered = name.lower()
        if lowered == "host":
            problems.append((("headers", name), "cannot contain 'host' header, which must be "
                                                "specified in the 'hosts' attribute"))
        if lowered in seen:
            problems.append((("headers", name), f"header '{name}' is also given as "
                                                f"'{seen[lowered]}' (names are case-insensitive)"))
        seen[lowered] = name
        if not values:
            problems.append((("headers", name), "must have at least one value"))
        for index, value in enumerate(values):
            if value.startswith("~*"):
                try:
                    rules.check_regex(value[2:])
                except ValueError as exc:
                    problems.append((("headers", name, index), str(exc)))
    return problems


def upstream_algorithm(upstream: schema.Upstream) -> str:
    """Kong's shorthand: an explicit ``hash_on`` decides between round-robin and hashing."""
    given = upstream.model_fields_set
    if "hash_on" not in given or upstream.algorithm == "least-connections" and (
            "algorithm" in given):
        return upstream.algorithm
    return "round-robin" if upstream.hash_on == "none" else "consistent-hashing"


_NO_REPEAT = {"consumer": "consumer", "ip": "ip", "path": "path"}


def check_upstream(up: schema.Upstream) -> Problems:
    problems: Problems = []
    given = up.model_fields_set
    if ("algorithm" in given and up.algorithm == "least-connections"
            and up.hash_on != "none"):
        problems.append((("hash_on",), "cannot be used with algorithm 'least-connections' "
                                       "(Kong would ignore it); use 'consistent-hashing'"))
    required = {
        ("hash_on", "header"): "hash_on_header",
        ("hash_fallback", "header"): "hash_fallback_header",
        ("hash_on", "cookie"): "hash_on_cookie",
        ("hash_fallback", "cookie"): "hash_on_cookie",
        ("hash_on", "query_arg"): "hash_on_query_arg",
        ("hash_fallback", "query_arg"): "hash_fallback_query_arg",
        ("hash_on", "uri_capture"): "hash_on_uri_capture",
        ("hash_fallback", "uri_capture"): "hash_fallback_uri_capture",
    }
    for (field, value), needed in required.items():
        if getattr(up, field) == value and getattr(up, needed) is None:
            problems.append(((needed,), f"required field missing (needed when {field} "
                                        f"is '{value}')"))
    if up.hash_on in ("none", "cookie") and up.hash_fallback != "none":
        problems.append((("hash_fallback",), f"must be 'none' when hash_on is "
                                             f"'{up.hash_on}'"))
    elif _NO_REPEAT.get(up.hash_on) == up.hash_fallback:
        problems.append((("hash_fallback",), f"must differ from hash_on ('{up.hash_on}')"))
    for first, second in (("hash_on_header", "hash_fallback_header"),
                          ("hash_on_query_arg", "hash_fallback_query_arg"),
                          ("hash_on_uri_capture", "hash_fallback_uri_capture")):
        a, b = getattr(up, first), getattr(up, second)
        if a is not None and b is not None and a.lower() == b.lower():
            problems.append(((second,), f"must differ from {first}"))
    return problems


def check_consumer(consumer: schema.Consumer) -> Problems:
    if consumer.username is None and consumer.custom_id is None:
        return [((), "at least one of these fields must be non-empty: 'custom_id', "
                     "'username'")]
    return []


_EC_CURVES = {"ES256": ("secp256r1", "P-256"), "ES384": ("secp384r1", "P-384"),
              "ES512": ("secp521r1", "P-521")}


def _jwt_key_mismatch(algorithm: str, key: Any) -> str | None:
    """What the key of ``algorithm`` must be, when ``key`` is not that; else None."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if algorithm[:2] in ("RS", "PS"):
        return None if isinstance(key, rsa.RSAPublicKey) else "an RSA public key"
    if algorithm in _EC_CURVES:
        curve, shown = _EC_CURVES[algorithm]
        fits = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == curve
        return None if fits else f"an EC {shown} public key"
    fits = isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return None if fits else "an Ed25519 or Ed448 public key"


def check_jwt_secret(secret: schema.JwtSecret) -> Problems:
    if secret.algorithm.startswith("HS"):
        return []
    if secret.rsa_public_key is None:
        return [(("rsa_public_key",), f"required field missing (needed when algorithm is "
                                      f"'{secret.algorithm}')")]
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    pem = secret.rsa_public_key
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        hint = "it is a private key: give its public key" if "PRIVATE KEY" in pem else \
            "expected a PEM public key (-----BEGIN PUBLIC KEY-----)"
        return [(("rsa_public_key",), f"invalid key: {hint}")]
    wanted = _jwt_key_mismatch(secret.algorithm, key)
    if wanted is not None:
        return [(("rsa_public_key",), f"invalid key: algorithm '{secret.algorithm}' needs "
                                      f"{wanted}")]
    return []


_KONG_SHA1_HASH = re.compile(r"[0-9a-f]{40}")


def check_basicauth_password(credential: schema.BasicAuthCredential, *,
                             transform: bool) -> Problems:
    password = credential.password
    if transform:
        if len(password.encode("utf-8")) > passwords.BCRYPT_MAX_PASSWORD_BYTES:
            return [(("password",), f"longer than {passwords.BCRYPT_MAX_PASSWORD_BYTES} "
                                    "bytes, the most bcrypt can use")]
        return []
    if passwords.is_password_hash(password):
        return []
    if _KONG_SHA1_HASH.fullmatch(password):
        return [(("password",), "with _transform: false the password must be a bcrypt or "
                                "argon2 hash; Kong's unsalted SHA-1 hashes are not accepted "
                                "(write the plaintext with _transform: true instead)")]
    return [(("password",), "with _transform: false the password must already be a "
                            "bcrypt ($2b$...) or argon2 ($argon2id$...) hash")]


def check_certificate(cert: schema.Certificate) -> Problems:
    problems: Problems = []
    if (cert.cert_alt is None) != (cert.key_alt is None):
        missing = "key_alt" if cert.key_alt is None else "cert_alt"
        problems.append(((missing,), "all or none of these fields must be set: "
                                     "'cert_alt', 'key_alt'"))
    pairs = [("cert", "key", "certificate does not match key")]
    if cert.cert_alt is not None and cert.key_alt is not None:
        pairs.append(("cert_alt", "key_alt", "alternative certificate does not match key"))
    key_types = []
    for cert_field, key_field, mismatch in pairs:
        found = _pem_pair(getattr(cert, cert_field), getattr(cert, key_field))
        if isinstance(found, tuple):
            problems.append(((found[0] and key_field or cert_field,), found[1]))
            continue
        if found is not None and not found.matches:
            problems.append(((), mismatch))
        key_types.append(found.key_type if found is not None else None)
    if len(key_types) == 2 and key_types[0] is not None and key_types[0] == key_types[1]:
        problems.append((("cert_alt",), "certificate and alternative certificate need to "
                                        "have different type (e.g. RSA and ECDSA), the "
                                        "provided certificates were both of the same type"))
    return problems


class _Pair:
    __slots__ = ("matches", "key_type")

    def __init__(self, matches: bool, key_type: str) -> None:
        self.matches, self.key_type = matches, key_type


def _pem_pair(cert_pem: str, key_pem: str) -> _Pair | tuple[bool, str] | None:
    """Parse a certificate and its key: a _Pair, (is_key_problem, message) or None."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
    except ImportError:  # without cryptography: check the PEM armour only
        if "-----BEGIN CERTIFICATE-----" not in cert_pem:
            return False, "invalid certificate: not a PEM certificate"
        if "PRIVATE KEY-----" not in key_pem:
            return True, "invalid key: not a PEM private key"
        return None
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        return False, f"invalid certificate: {exc}"
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return True, f"invalid key: {exc}"
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    matches = certificate.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    return _Pair(matches, type(key).__name__)
