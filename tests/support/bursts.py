"""Many concurrent one-request connections at once, for the rate-limit and concurrency
tests.

``burst(port, target, n)`` opens ``n`` connections to 127.0.0.1:``port`` first, then
sends one ``GET target`` with ``Connection: close`` on each of them at the same moment,
and returns what came back on each (a :class:`~support.rawhttp.RawResponse`, or the
exception that connection met), in connection order. ``spread`` does the same over
several ports (gateways) at once, the connections dealt round-robin.
"""

from __future__ import annotations

import asyncio
from typing import Iterable, Sequence

from support.rawhttp import RawResponse, parse_responses


def request_bytes(target: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: ratelimit.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _exchanges(ports: Sequence[int], payload: bytes, n: int,
                     timeout: float) -> list[RawResponse | BaseException]:
    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)

    conns = await asyncio.gather(*(connect(ports[i % len(ports)]) for i in range(n)),
                                 return_exceptions=True)
    go = asyncio.Event()

    async def one(conn) -> RawResponse:
        if isinstance(conn, BaseException):
            raise conn
        reader, writer = conn
        try:
            await go.wait()
            writer.write(payload)
            data = await asyncio.wait_for(reader.read(-1), timeout)
        finally:
            writer.close()
        responses = parse_responses(data)
        if not responses:
            raise ConnectionError(f"no response; received {data[:200]!r}")
        return responses[0]

    tasks = [asyncio.ensure_future(one(conn)) for conn in conns]
    await asyncio.sleep(0)
    go.set()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def spread(ports: Sequence[int], target: str, n: int, headers: Iterable[tuple[str, str]] = (),
           timeout: float = 15.0) -> list[RawResponse | BaseException]:
    return asyncio.run(_exchanges(list(ports), request_bytes(target, headers), n, timeout))


def burst(port: int, target: str, n: int, headers: Iterable[tuple[str, str]] = (),
          timeout: float = 15.0) -> list[RawResponse | BaseException]:
    return spread([port], target, n, headers, timeout)


def statuses(results: Sequence[RawResponse | BaseException]) -> dict[object, int]:
    """How many of each status (an exception counts under its type's name)."""
    counts: dict[object, int] = {}
    for r in results:
        key = r.status if isinstance(r, RawResponse) else type(r).__name__
        counts[key] = counts.get(key, 0) + 1
    return counts
