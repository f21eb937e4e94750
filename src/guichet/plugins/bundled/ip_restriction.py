"""ip-restriction: let a request through or refuse it by the client's IP address (Kong's
``ip-restriction``, priority 990, access phase).

Rules:

* ``allow`` and ``deny`` are lists of IPv4/IPv6 addresses and CIDR blocks; at least one of
  them is non-empty. Each entry is checked when the file loads (an address, or an address
  and a decimal prefix length); host bits after the prefix are ignored (``10.0.0.1/8`` is
  ``10.0.0.0/8``), as Kong's matcher does.
* The address checked is ``req.client_ip``: the peer, or what a trusted proxy says in the
  real-IP header (Kong's realip rules).
* ``deny`` is checked first: a listed address is refused even when ``allow`` lists it too.
  Then, when ``allow`` is non-empty, an address it does not list is refused.
* A refusal is ``status`` (default 403) with ``message`` (default Kong 3.4+'s
  ``IP address not allowed: <address>``).
* An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what a dual-stack listener reports for
  an IPv4 client) is checked as the IPv4 address it carries, so an IPv4 deny entry cannot
  be sidestepped through the mapped form. A zone index (``fe80::1%eth0``) is ignored.
* A client address that is not an IP address (a Unix socket) is refused with 403 and
  Kong's message for that case.

Cost: the lists become sorted integer ranges per address family at build time, checked by
binary search; each instance also remembers the verdict for the last few thousand client
addresses (the memory is cleared when full), so a returning client costs one dict lookup.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, model_validator

from guichet.plugins.api import Plugin, PluginConfig, Response, error

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

UNIDENTIFIED_CLIENT = ("Cannot identify the client IP address, "
                       "unix domain sockets are not supported.")
VERDICT_CACHE_SIZE = 4096

_CIDR_SHAPE = re.compile(r"[^/]+(?:/[0-9]{1,3})?")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip_or_cidr(entry: str) -> IpNetwork:
    """An address (a /32 or /128) or a CIDR block; ``ValueError`` with Kong's wording."""
    if not _CIDR_SHAPE.fullmatch(entry):
        raise ValueError(f"invalid ip or cidr range: '{entry}'")
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"invalid ip or cidr range: '{entry}'") from None


def _check_entry(entry: str) -> str:
    parse_ip_or_cidr(entry)
    return entry


IpOrCidr = Annotated[str, AfterValidator(_check_entry)]


class IpRestrictionConfig(PluginConfig):
    allow: list[IpOrCidr] | None = None
    deny: list[IpOrCidr] | None = None
    status: int | None = Field(default=None, ge=100, le=599)
    message: str | None = None

    @model_validator(mode="after")
    def _one_list_at_least(self) -> "IpRestrictionConfig":
        if not self.allow and not self.deny:
            raise ValueError("at least one of these fields must be non-empty: "
                             "'config.allow', 'config.deny'")
        return self


class AddressRanges:
    """A set of IP networks as sorted, merged integer ranges, one list per family."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, networks: list[IpNetwork]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for version in (4, 6):
            family = [n for n in networks if n.version == version]
            for net in ipaddress.collapse_addresses(family):  # sorted, merged
                self._starts[version].append(int(net.network_address))
                self._ends[version].append(int(net.broadcast_address))

    def __bool__(self) -> bool:
        return bool(self._starts[4] or self._starts[6])

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        starts = self._starts[address.version]
        if not starts:
            return False
        value = int(address)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= self._ends[address.version][i]


def parse_client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address, an IPv4-mapped IPv6 address as IPv4; None when not an IP."""
    if "%" in text:
        text = text.split("%", 1)[0]
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:  # type: ignore[union-attr]
        return address.ipv4_mapped  # type: ignore[union-attr]
    return address


class IpRestriction(Plugin):
    name = "ip-restriction"
    priority = 990
    Config = IpRestrictionConfig

    def __init__(self, config: IpRestrictionConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.allow = AddressRanges([parse_ip_or_cidr(e) for e in config.allow or ()])
        self.deny = AddressRanges([parse_ip_or_cidr(e) for e in config.deny or ()])
        self.status = config.status if config.status is not None else 403
        self.message = config.message
        # client address text -> True (refused) / False (allowed); cleared when full
        self._verdicts: dict[str, bool] = {}

    def refuses(self, client_ip: str) -> bool:
        """Whether a request from ``client_ip`` is refused (deny first, then allow)."""
        verdict = self._verdicts.get(client_ip)
        if verdict is None:
            verdict = self._decide(client_ip)
            if len(self._verdicts) >= VERDICT_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[client_ip] = verdict
        return verdict

    def _decide(self, client_ip: str) -> bool:
        address = parse_client_address(client_ip)
        if address is None:
            return True
        if self.deny and self.deny.contains(address):
            return True
        if self.allow and not self.allow.contains(address):
            return True
        return False

    def access(self, req: "Request") -> Response | None:
        client_ip = req.client_ip
        if not self.refuses(client_ip):
            return None
        if parse_client_address(client_ip) is None:
            return error(403, UNIDENTIFIED_CLIENT)
        message = self.message
        if message is None:
            message = f"IP address not allowed: {client_ip}"
        return error(self.status, message)

