"""The request head the gateway sends upstream, built from the client's (GUARANTEES §4, §7, §8).

Rules, in order: the request line carries the path the route computed (strip_path,
path_handling) and the client's query, unless a plugin set others; Host is the client's
(``preserve_host``) or the upstream's; client header fields are copied except hop-by-hop
ones, the fields the gateway rewrites itself, identity fields (and their look-alikes with
underscores), and those a plugin replaced; then the identity block of the authenticated
consumer and the plugins' header edits; then X-Forwarded-For (the peer appended),
X-Real-IP, X-Forwarded-Proto/-Host/-Port/-Path (the client's only from a trusted peer),
X-Forwarded-Prefix, Via; then the framing the gateway chose (Content-Length, chunked, or
the WebSocket upgrade).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guichet.server import headers as H

if TYPE_CHECKING:
    from guichet.plugins.request import Request
    from guichet.server.exchange import Exchange
    from guichet.server.protocol import ClientProtocol


def build_upstream_head(client: "ClientProtocol", ex: "Exchange") -> bytes:
    """The request head sent upstream (the rules are in the module docstring)."""
    svc = ex.service
    match = ex.match
    route = match.route
    path = svc.upstream_path(match, ex.path)  # type: ignore[union-attr]
    target = path.encode("latin-1")
    if ex.query:
        target += b"?" + ex.query.encode("latin-1")
    host = ex.host if route.preserve_host else svc.host_header(ex.peer)  # type: ignore[union-attr]
    req = ex.req
    edits = identity = None
    if req is not None:
        if req.lines or req.upstream_path is not None or req.upstream_query is not None:
            target, host, edits = _plugin_edits(req, target, host)
        identity = req.identity
        if identity is not None and edits and not identity[1].isdisjoint(edits):
            # a plugin set an identity header itself after authentication: merge
            merged = dict(identity[2])
            merged.update(edits)
            edits, identity = merged, None
    parts = [ex.method, b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]  # type: ignore[list-item]
    xff = via = None
    kept: dict[bytes, bytes] | None = None
    named = H.connection_tokens(ex.conn_names) if ex.conn_names else ()
    for lname, name, value in ex.headers:
        if lname in H.REWRITTEN_UPSTREAM:
            if lname == b"x-forwarded-for":
                xff = xff + b", " + value if xff else value
            elif lname == b"via":
                via = via + b", " + value if via else value
            elif client.trusted and lname in H.FORWARDED:
                if kept is None:
                    kept = {}
                kept[lname] = value
            continue
        if lname in named or lname.startswith(H.IDENTITY_PREFIXES):
            continue
        if b"_" in lname and H.underscore_lookalike(lname):
            continue  # X_Consumer_ID: the same variable as X-Consumer-ID to CGI/WSGI
        if edits is not None and lname in edits:
            continue
        parts.append(name + b": " + value + b"\r\n")
    if identity is not None:
        parts.append(identity[0])  # client-sent identity headers were dropped above
    if edits:
        for lines in edits.values():
            parts.extend(lines)
    if xff is None and kept is None and via is None:
        # The common case: nothing to merge. The block depends only on this connection
        # and the Host header, so it is rendered once per connection and Host value.
        if ex.host != client.block_host:
            client.block_host = ex.host
            client.block = (client.forwarded_block + b"X-Forwarded-Host: "
                          + _host_without_port(ex.host) + b"\r\nVia: 1.1 guichet\r\n")  # type: ignore[arg-type]
        parts.append(client.block)
        parts.append(b"X-Forwarded-Path: " + ex.raw_path.encode("latin-1") + b"\r\n")
    else:
        peer = client.peer_b
        kept = kept or {}
        parts.append(
            b"X-Forwarded-For: " + (xff + b", " + peer if xff else peer)
            + b"\r\nX-Real-IP: " + (kept.get(b"x-real-ip") or peer)
            + b"\r\nX-Forwarded-Proto: " + (kept.get(b"x-forwarded-proto") or client.scheme_b)
            + b"\r\nX-Forwarded-Port: " + (kept.get(b"x-forwarded-port") or client.port_b)
            + b"\r\nX-Forwarded-Host: " + (kept.get(b"x-forwarded-host") or _host_without_port(ex.host))  # type: ignore[arg-type]
            + b"\r\nX-Forwarded-Path: " + (kept.get(b"x-forwarded-path") or ex.raw_path.encode("latin-1"))
            + (b"\r\nVia: " + via + b", 1.1 guichet\r\n" if via else b"\r\nVia: 1.1 guichet\r\n"))
    prefix = kept.get(b"x-forwarded-prefix") if kept else None
    if prefix is None and route.strip_path and match.matched_path and match.matched_path != "/":
        prefix = match.matched_path.encode("latin-1")
    if prefix:
        parts.append(b"X-Forwarded-Prefix: " + prefix + b"\r\n")
    if ex.ws_key is not None:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    elif ex.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif ex.has_body:
        parts.append(b"Content-Length: %d\r\n\r\n" % ex.content_length)  # type: ignore[str-format]
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def _plugin_edits(req: "Request", target: bytes, host: bytes) -> tuple[bytes, bytes, dict[bytes, list[bytes]] | None]:
    """Apply what plugins changed in the upstream request: path, query, headers (and
    Host, which Kong's ``set_header("Host", ...)`` changes too)."""
    if req.upstream_path is not None or req.upstream_query is not None:
        path, _, query = target.partition(b"?")
        if req.upstream_path is not None:
            path = req.upstream_path.encode("latin-1")
        if req.upstream_query is not None:
            query = req.upstream_query.encode("latin-1")
        target = path + b"?" + query if query else path
    edits = req.lines
    if not edits:
        return target, host, None
    if b"host" in edits:
        lines = edits[b"host"]
        if lines:
            host = lines[-1].partition(b": ")[2][:-2]
        edits = {k: v for k, v in edits.items() if k != b"host"}
    return target, host, edits


def _host_without_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.split(b":", 1)[0]
