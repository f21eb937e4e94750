"""An identity provider for token tests: JWKS, OpenID discovery and RFC 7662 introspection.

``IdentityServer`` is an HTTP server on 127.0.0.1 (a free port) in a background thread:

- ``GET /jwks.json``: ``{"keys": [...]}`` from ``server.keys`` (``SigningKey`` objects)
  plus ``server.extra_jwks`` (raw JWK dicts); counted in ``server.jwks_fetches``.
  ``jwks_status`` (answer that status instead) and ``jwks_delay`` (seconds) simulate an
  endpoint that fails or is slow. ``rotate(*keys)`` replaces the served keys.
- ``GET /attacker/jwks.json``: the keys of ``server.attacker_keys`` (for ``jku`` tests;
  a gateway must never fetch it: ``attacker_fetches`` counts).
- ``GET /.well-known/openid-configuration``: ``{"issuer": server.issuer, "jwks_uri": ...}``,
  counted in ``discovery_fetches``.
- ``POST /introspect``: RFC 7662. Requires ``Authorization`` equal to
  ``introspection_authorization`` (else 401); answers ``server.tokens[token]`` or
  ``{"active": false}``; records each call (headers and form) in ``introspections``;
  ``introspection_status`` / ``introspection_delay`` simulate failures.

Keys: ``rsa_key``, ``ec_key`` (P-256 by default), ``ed25519_key`` make ``SigningKey``s that
sign with PyJWT (``key.sign(claims, **header)``) and give their public JWK and PEM.
``forge_hs256`` signs an HS256 token with any bytes as the secret (PyJWT refuses PEM
secrets, which is the point of the key-confusion test); ``unsigned`` makes an
``alg: none`` token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_OWN_KID = object()  # sign(): put the key's own kid in the header


def _json_segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


@dataclass
class SigningKey:
    kid: str
    alg: str
    private_key: Any
    jwk_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    @property
    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    @property
    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode("ascii")

    def public_jwk(self) -> dict[str, Any]:
        public = self.public_key
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
        jwk = {k: v for k, v in jwk.items() if k not in ("key_ops",)}
        jwk.update({"kid": self.kid, "use": "sig"})
        jwk.update(self.jwk_extra)
        return jwk

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, kid: Any = _OWN_KID,
             **header: Any) -> str:
        """A compact JWS of ``claims`` with the key's kid, another ``kid``, or none
        (``kid=None``)."""
        headers = dict(header)
        if kid is _OWN_KID:
            headers["kid"] = self.kid
        elif kid is not None:
            headers["kid"] = kid
        return jwt.encode(claims, self.private_key, algorithm=alg or self.alg, headers=headers)


def rsa_key(kid: str = "rsa-1", alg: str = "RS256", bits: int = 2048) -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_key(kid: str = "ec-1", alg: str = "ES256", curve: ec.EllipticCurve | None = None) -> SigningKey:
    return SigningKey(kid, alg, ec.generate_private_key(curve or ec.SECP256R1()))


def ed25519_key(kid: str = "ed-1") -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def forge_hs256(claims: dict[str, Any], secret: bytes, **header: Any) -> str:
    """An HS256 token signed with ``secret``, whatever it is (a PEM public key ...)."""
    head = {"alg": "HS256", "typ": "JWT", **header}
    signing_input = f"{_json_segment(head)}.{_json_segment(claims)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def unsigned(claims: dict[str, Any], alg: str = "none", **header: Any) -> str:
    """An unsecured JWS (``alg: none``, empty signature)."""
    return f"{_json_segment({'alg': alg, **header})}.{_json_segment(claims)}."


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a gateway's timeout) is expected here, not an error."""


class IdentityServer:
    def __init__(self, issuer: str | None = None) -> None:
        self._server = _QuietServer(("127.0.0.1", 0), _Handler)
        self._server.identity = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.issuer = issuer or self.url
        self.lock = threading.Lock()
        self.keys: list[SigningKey] = []
        self.extra_jwks: list[dict[str, Any]] = []
        self.attacker_keys: list[SigningKey] = []
        self.jwks_status = 200
        self.jwks_delay = 0.0
        self.jwks_fetches = 0
        self.attacker_fetches = 0
        self.discovery_fetches = 0
        self.tokens: dict[str, dict[str, Any]] = {}
        self.introspection_authorization = "Basic Y2xpZW50OnNlY3JldA=="
        self.introspection_status = 200
        self.introspection_delay = 0.0
        self.introspections: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None

    @property
    def jwks_uri(self) -> str:
        return self.url + "/jwks.json"

    @property
    def attacker_jwks_uri(self) -> str:
        return self.url + "/attacker/jwks.json"

    @property
    def introspection_url(self) -> str:
        return self.url + "/introspect"

    def start(self) -> "IdentityServer":
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"identity-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "IdentityServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rotate(self, *keys: SigningKey) -> None:
        with self.lock:
            self.keys = list(keys)

    def reset_counters(self) -> None:
        with self.lock:
            self.jwks_fetches = self.attacker_fetches = self.discovery_fetches = 0
            self.introspections.clear()

    def jwks_document(self, keys: list[SigningKey], extra: list[dict[str, Any]]) -> bytes:
        return json.dumps({"keys": [k.public_jwk() for k in keys] + list(extra)}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
        return

    @property
    def identity(self) -> IdentityServer:
        return self.server.identity  # type: ignore[attr-defined]

    def _send(self, status: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        ident = self.identity
        path = self.path.split("?", 1)[0]
        if path == "/jwks.json":
            with ident.lock:
                ident.jwks_fetches += 1
                status, delay = ident.jwks_status, ident.jwks_delay
                document = ident.jwks_document(ident.keys, ident.extra_jwks)
            if delay:
                time.sleep(delay)
            if status != 200:
                self._send(status, {"error": "unavailable"})
            else:
                self._send(200, document)
        elif path == "/attacker/jwks.json":
            with ident.lock:
                ident.attacker_fetches += 1
                document = ident.jwks_document(ident.attacker_keys, [])
            self._send(200, document)
        elif path == "/.well-known/openid-configuration":
            with ident.lock:
                ident.discovery_fetches += 1
            self._send(200, {"issuer": ident.issuer, "jwks_uri": ident.jwks_uri})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        ident = self.identity
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        if self.path.split("?", 1)[0] != "/introspect":
            self._send(404, {"error": "not found"})
            return
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        with ident.lock:
            ident.introspections.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                         "form": form})
            status, delay = ident.introspection_status, ident.introspection_delay
            answer = ident.tokens.get(form.get("token", ""), {"active": False})
            expected = ident.introspection_authorization
        if delay:
            time.sleep(delay)
        if self.headers.get("Authorization") != expected:
            self._send(401, {"error": "invalid_client"})
        elif status != 200:
            self._send(status, {"error": "server_error"})
        else:
            self._send(200, answer)
