"""TLS for proxy listeners: a default certificate plus per-host ones chosen by SNI.

* The default certificate comes from the node settings (``--cert``/``--key`` or
  ``ssl_cert``/``ssl_cert_key``); without it, the first certificate of the configuration
  is the default. An ``ssl`` listener with neither is a start-up error.
* Kong's ``certificates`` and ``snis``: a client's SNI selects the certificate whose SNI
  names it exactly, else one with a matching wildcard (``*.example.com`` — one label —, or
  ``example.*``), else the default. ``cert_alt``/``key_alt`` (an ECDSA pair beside an RSA
  one) are loaded in the same context so OpenSSL picks what the client supports.
* The SNI a client sent is remembered on its SSL object (``guichet_sni``) so the router
  can match ``snis`` on routes.
* Reloads replace the SNI map; the listener's context object stays the same.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Any, Iterable

from guichet.config.model import Certificate
from guichet.settings import Settings


def _context_from_pem(pairs: Iterable[tuple[str, str]]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    with tempfile.TemporaryDirectory(prefix="guichet-tls-") as tmp:
        for i, (cert, key) in enumerate(pairs):
            cert_path = os.path.join(tmp, f"c{i}.pem")
            key_path = os.path.join(tmp, f"k{i}.pem")
            for path, data in ((cert_path, cert), (key_path, key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(data)
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


def _pairs(cert: Certificate) -> list[tuple[str, str]]:
    pairs = [(cert.cert, cert.key)]
    if cert.cert_alt and cert.key_alt:
        pairs.append((cert.cert_alt, cert.key_alt))
    return pairs


class CertificateStore:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wild_prefix: dict[str, ssl.SSLContext] = {}  # "*.example.com" -> key "example.com"
        self._wild_suffix: dict[str, ssl.SSLContext] = {}  # "example.*" -> key "example"
        self._default: ssl.SSLContext | None = None
        self._config_default: ssl.SSLContext | None = None
        self._by_id: dict[str, tuple[str, ssl.SSLContext]] = {}
        if settings.ssl_cert and settings.ssl_cert_key:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_alpn_protocols(["http/1.1"])
            ctx.load_cert_chain(settings.ssl_cert, settings.ssl_cert_key)
            self._default = ctx

    def update(self, certificates: Iterable[Certificate]) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        prefix: dict[str, ssl.SSLContext] = {}
        suffix: dict[str, ssl.SSLContext] = {}
        by_id: dict[str, tuple[str, ssl.SSLContext]] = {}
        first: ssl.SSLContext | None = None
        for cert in certificates:
            fingerprint = cert.cert + (cert.cert_alt or "")
            cached = self._by_id.get(cert.id)
            ctx = cached[1] if cached and cached[0] == fingerprint else _context_from_pem(_pairs(cert))
            by_id[cert.id] = (fingerprint, ctx)
            first = first or ctx
            for name in cert.snis:
                name = name.lower()
                if name.startswith("*."):
                    prefix[name[2:]] = ctx
                elif name.endswith(".*"):
                    suffix[name[:-2]] = ctx
                else:
                    exact[name] = ctx
        self._exact, self._wild_prefix, self._wild_suffix = exact, prefix, suffix
        self._by_id = by_id
        self._config_default = first

    def lookup(self, server_name: str | None) -> ssl.SSLContext | None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        ctx = self._exact.get(name)
        if ctx is not None:
            return ctx
        _, dot, rest = name.partition(".")
        if dot:
            ctx = self._wild_prefix.get(rest)
            if ctx is not None:
                return ctx
            head = name.rpartition(".")[0]
            return self._wild_suffix.get(head)
        return None

    def server_context(self) -> ssl.SSLContext:
        base = self._default or self._config_default
        if base is None:
            raise OSError("an ssl listener needs --cert/--key (ssl_cert, ssl_cert_key) "
                          "or at least one entry in the configuration's certificates")

        def on_sni(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            sslobj.guichet_sni = server_name
            chosen = self.lookup(server_name)
            if chosen is not None:
                sslobj.context = chosen
            elif self._default is None and self._config_default is not None:
                sslobj.context = self._config_default

        base.sni_callback = on_sni
        return base
