"""HTTPS listeners: default certificate, per-host certificates chosen by SNI, route snis,
and Kong's https_redirect_status_code for https-only routes reached over http."""

from __future__ import annotations

import datetime
import socket
import ssl

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.gateway import free_port


def _cert(common_name: str, sans: list[str]) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def _indent(pem: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in pem.strip().splitlines())


def _served_cn(port: int, sni: str | None) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.fixture
def tls_gateway(gateway_factory, upstream, tmp_path):
    default_cert, default_key = _cert("default.test", ["default.test"])
    (tmp_path / "default.pem").write_text(default_cert)
    (tmp_path / "default.key").write_text(default_key)
    a_cert, a_key = _cert("a.example.test", ["a.example.test"])
    w_cert, w_key = _cert("wild.test", ["*.wild.test"])
    config = f"""
_format_version: "3.0"
certificates:
- cert: |
{_indent(a_cert, 4)}
  key: |
{_indent(a_key, 4)}
  snis:
  - name: a.example.test
- cert: |
{_indent(w_cert, 4)}
  key: |
{_indent(w_key, 4)}
  snis:
  - name: "*.wild.test"
services:
- name: s
  url: http://127.0.0.1:{upstream.port}
  routes:
  - name: secure-only
    protocols: [https]
    paths: ["/secure"]
  - name: by-sni
    protocols: [https]
    snis: [a.example.test]
    paths: ["/sni"]
  - name: plain
    paths: ["/plain"]
"""
    tls_port = free_port()
    gw = gateway_factory(config, extra_args=["--listen", f"127.0.0.1:{tls_port} ssl",
                                             "--cert", str(tmp_path / "default.pem"),
                                             "--key", str(tmp_path / "default.key")])
    gw.tls_port = tls_port
    return gw


def test_certificate_is_chosen_by_sni(tls_gateway):
    port = tls_gateway.tls_port
    assert _served_cn(port, "a.example.test") == "a.example.test"
    assert _served_cn(port, "x.wild.test") == "wild.test"
    assert _served_cn(port, "unknown.test") == "default.test"
    assert _served_cn(port, None) == "default.test"


def test_https_route_and_forwarded_proto(tls_gateway, upstream):
    with httpx.Client(verify=False, trust_env=False) as client:
        r = client.get(f"https://127.0.0.1:{tls_gateway.tls_port}/secure/echo")
    assert r.status_code == 200
    seen = upstream.requests[-1]
    assert seen.header("x-forwarded-proto") == "https"
    assert seen.header("x-forwarded-port") == str(tls_gateway.tls_port)


def test_https_only_route_over_http_gets_426(tls_gateway, http):
    r = http.get(tls_gateway.url + "/secure/echo")
    assert r.status_code == 426
    assert r.json()["message"] == "Please use HTTPS protocol"


def test_route_snis_match_only_that_sni(tls_gateway):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    port = tls_gateway.tls_port

    def get(sni: str) -> int:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                tls.sendall(b"GET /sni/echo HTTP/1.1\r\nHost: " + sni.encode() + b"\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        return int(data.split(b" ", 2)[1])

    assert get("a.example.test") == 200
    assert get("x.wild.test") == 404
