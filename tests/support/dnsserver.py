"""A tiny authoritative-style DNS server for tests (UDP, 127.0.0.1, a free port).

Records and TTLs can be changed while it runs; ``mode`` makes it misbehave:
``"answer"`` (default), ``"drop"`` (never replies: the client times out) and
``"servfail"``. Names without any record get NXDOMAIN; a name with records of other
types gets an empty NOERROR answer. A CNAME is answered for any type, followed by the
target's records of the asked type (as a recursive resolver would), and SRV answers
carry the targets' A/AAAA records in the additional section when ``glue`` is on.

Usage::

    with DNSServer() as server:
        server.set("svc.test", "A", ["10.0.0.1", "10.0.0.2"], ttl=1)
        resolver = Resolver(nameservers=[server.address], resolv_conf=None, ...)
"""

from __future__ import annotations

import socket
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DNSServer:
    def __init__(self, glue: bool = False) -> None:
        self._records: dict[tuple[str, str], tuple[int, list[str]]] = {}
        self._lock = threading.Lock()
        self.mode = "answer"
        self.glue = glue
        self.queries: list[tuple[str, str]] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    # -- record management -------------------------------------------------------------

    def set(self, name: str, rdtype: str, values: list[str], ttl: int = 1) -> None:
        """Replace ``name``'s records of ``rdtype`` (values in zone-file text form)."""
        with self._lock:
            self._records[(name.lower().rstrip("."), rdtype.upper())] = (ttl, list(values))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        name = name.lower().rstrip(".")
        with self._lock:
            for key in [k for k in self._records if k[0] == name and rdtype in (None, k[1])]:
                del self._records[key]

    def count(self, name: str, rdtype: str) -> int:
        """How many questions for (name, type) were received so far."""
        with self._lock:
            return self.queries.count((name.lower().rstrip("."), rdtype.upper()))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> DNSServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
            except Exception:
                continue
            question = query.question[0]
            qname = question.name.to_text(omit_final_dot=True).lower()
            qtype = dns.rdatatype.to_text(question.rdtype)
            with self._lock:
                self.queries.append((qname, qtype))
                mode = self.mode
            if mode == "drop":
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA | dns.flags.RA
            if mode == "servfail":
                response.set_rcode(dns.rcode.SERVFAIL)
            else:
                self._answer(response, qname, qtype)
            self._sock.sendto(response.to_wire(), peer)

    def _rrset(self, name: str, rdtype: str) -> dns.rrset.RRset | None:
        found = self._records.get((name, rdtype))
        if not found:
            return None
        ttl, values = found
        return dns.rrset.from_text_list(name + ".", ttl, "IN", rdtype, values)

    def _answer(self, response: dns.message.Message, qname: str, qtype: str) -> None:
        with self._lock:
            if not any(k[0] == qname for k in self._records):
                response.set_rcode(dns.rcode.NXDOMAIN)
                return
            name = qname
            for _ in range(8):  # follow CNAMEs, as a recursive server would
                rrset = self._rrset(name, qtype)
                if rrset is not None:
                    response.answer.append(rrset)
                    if qtype == "SRV" and self.glue:
                        self._add_glue(response, rrset)
                    return
                cname = self._rrset(name, "CNAME") if qtype != "CNAME" else None
                if cname is None:
                    return
                response.answer.append(cname)
                name = cname[0].target.to_text(omit_final_dot=True).lower()

    def _add_glue(self, response: dns.message.Message, srv: dns.rrset.RRset) -> None:
        for rd in srv:
            target = rd.target.to_text(omit_final_dot=True).lower()
            for kind in ("A", "AAAA"):
                rrset = self._rrset(target, kind)
                if rrset is not None:
                    response.additional.append(rrset)
