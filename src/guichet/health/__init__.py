"""Upstream resilience: health checks, circuit breakers, retry backoff.

- ``state``: Kong's health counters for one target and the compiled ``healthchecks``
  (pure);
- ``breaker``: the circuit breaker of one target (pure, clock passed in);
- ``backoff``: the wait before a retry (pure);
- ``registry``: per worker, which target is usable, fed by the proxy's outcomes, the
  probes and the leader's messages; tells balancers when that changes;
- ``probes``: active probes (run by worker 0 only: once per node);
- ``relay``: the master's side (keeps worker 0's states for ``/status``, relays them).
"""
