"""One DNS question (name, type) asked of the nameservers, with the answer classified.

Rules:

- The question is sent over UDP with recursion desired; a truncated answer is asked again
  over TCP (dnspython's ``udp_with_fallback``), as Kong's client does.
- Nameservers are tried in order, ``attempts`` rounds, each try bounded by ``timeout``.
  An unanswered try (timeout, network error, malformed reply) and an answer with an error
  rcode other than NXDOMAIN (SERVFAIL, REFUSED, ...) both move on to the next try.
- Classification, which the resolver's caching builds on:

  - ``OK``: records of the asked type, found directly or through the CNAME chain the
    server returned; ``ttl`` is the smallest TTL along that chain.
  - ``NOT_FOUND``: a definitive "no": NXDOMAIN, or NOERROR without records of the type.
  - ``SERVER_ERROR``: every try that got an answer got an error rcode.
  - ``NO_ANSWER``: no try got any answer (timeouts, unreachable nameservers).

- Record values: A/AAAA give IP strings; SRV gives ``(priority, weight, port, target)``
  with the target lower-cased and without its final dot; CNAME gives the target name.
  A/AAAA records of the additional section are returned as ``glue`` (SRV targets).
"""

from __future__ import annotations

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

OK = "ok"
NOT_FOUND = "not_found"
SERVER_ERROR = "server_error"
NO_ANSWER = "no_answer"

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


class Answer:
    __slots__ = ("status", "rdtype", "records", "ttl", "glue", "error")

    def __init__(
        self,
        status: str,
        rdtype: str,
        records: tuple = (),
        ttl: float = 0.0,
        glue: tuple[tuple[str, str, float, tuple[str, ...]], ...] = (),
        error: str = "",
    ) -> None:
        self.status = status
        self.rdtype = rdtype
        self.records = records
        self.ttl = ttl
        self.glue = glue  # (name, "A" | "AAAA", ttl, ips)
        self.error = error

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.rdtype}, {self.records!r}, ttl={self.ttl})"


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _records(rdtype: str, rrset) -> tuple:
    if rdtype in ("A", "AAAA"):
        return tuple(sorted({rd.address for rd in rrset}))
    if rdtype == "SRV":
        return tuple(
            sorted(
                {(rd.priority, rd.weight, rd.port, _name_text(rd.target)) for rd in rrset}
            )
        )
    return tuple(_name_text(rd.target) for rd in rrset)  # CNAME


def _glue(response: dns.message.Message) -> tuple:
    glue = []
    for rrset in response.additional:
        if rrset.rdtype in _ADDRESS_TYPES:
            kind = dns.rdatatype.to_text(rrset.rdtype)
            ips = tuple(sorted({rd.address for rd in rrset}))
            glue.append((_name_text(rrset.name), kind, float(rrset.ttl), ips))
    return tuple(glue)


def classify(response: dns.message.Message, rdtype: str) -> Answer | None:
    """The Answer a response carries, or None for an error rcode (try another server)."""
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(NOT_FOUND, rdtype, error="name error (NXDOMAIN)")
    if rcode != dns.rcode.NOERROR:
        return None
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as exc:
        return Answer(NOT_FOUND, rdtype, error=f"bad answer chain: {exc}")
    if chain.answer is None or not len(chain.answer):
        return Answer(NOT_FOUND, rdtype, error="empty answer")
    ttl = min(float(chain.minimum_ttl), float(chain.answer.ttl))
    glue = _glue(response) if rdtype == "SRV" else ()
    return Answer(OK, rdtype, _records(rdtype, chain.answer), ttl, glue)


async def query(
    name: str,
    rdtype: str,
    nameservers: list[tuple[str, int]],
    timeout: float,
    attempts: int,
) -> Answer:
    """Ask ``name``/``rdtype`` (an absolute name, no trailing dot needed)."""
    question = dns.message.make_query(name + ".", rdtype)
    last_error = "no nameserver configured"
    status = NO_ANSWER
    for _ in range(attempts):
        for ip, port in nameservers:
            try:
                response, _tcp = await dns.asyncquery.udp_with_fallback(
                    question, ip, timeout=timeout, port=port
                )
            except dns.exception.Timeout:
                last_error = f"timeout asking {ip}:{port}"
                continue
            except (OSError, EOFError, dns.exception.DNSException) as exc:
                last_error = f"{type(exc).__name__} asking {ip}:{port}: {exc}"
                continue
            answer = classify(response, rdtype)
            if answer is not None:
                return answer
            status = SERVER_ERROR
            last_error = f"{dns.rcode.to_text(response.rcode())} from {ip}:{port}"
    return Answer(status, rdtype, error=last_error)
