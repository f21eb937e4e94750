"""usage-plans: each consumer's throttle and quota, from the configuration's
``usage_plans`` (AWS API Gateway's usage plans; priority 905, access and
response_headers phases).

The loader adds this plugin, globally, as soon as the configuration has a usage plan
(``guichet.config.build``); its config is the plans with their references resolved. It
is never written by hand. Rules:

* A request without a consumer, or whose consumer is in no plan, passes untouched. A
  plan restricted to ``services`` / ``routes`` applies only to requests routed to one of
  them (route or service listed). The plan follows the consumer the authentication
  plugins set, the ``anonymous`` consumer included.
* Order: the throttle first, then the quota, after authentication and after
  ``rate-limiting`` (910) and ``concurrency-limiting`` (907): a request refused by the
  throttle uses no quota.
* Throttle: a token bucket (GCRA) of ``burst`` requests refilled at ``rate`` per second,
  per (plan, consumer), in the node's ``local`` rate-limit counters
  (``guichet.limits``): exact across the node's workers, per node (N nodes admit up to N
  times the rate). Refused: 429 ``{"message": "API rate limit exceeded", "throttle":
  {"plan", "rate", "burst"}, "request_id"}`` with ``Retry-After``.
* Quota: at most ``limit`` requests per window (``guichet.quotas.periods``) per (plan,
  consumer), counted in the node's ``usage_store`` (``guichet.quotas``): exact across
  workers and across nodes sharing the store; a request goes on only once its count is
  stored. Refused: 429 ``{"message": "API quota exceeded", "quota": {"plan", "limit",
  "period", "used", "resets_at"}, "request_id"}`` with ``Retry-After`` (seconds until
  the reset). A consumer over its quota is then refused by this worker without asking
  the store again for ``RECHECK`` seconds (counts only grow within a window; the
  re-check sees a count an operator lowered by hand), nor after the window ended.
* Headers, unless the plan says ``hide_client_headers``: ``X-Quota-Limit``,
  ``X-Quota-Remaining`` and ``X-Quota-Reset`` (seconds until the window ends) on the
  answer to an admitted request and on the quota's 429. Retry-After is always sent on a
  429.
* Store (or throttle counters) unavailable: the plan's ``fault_tolerant`` (true by
  default) lets the request through, false answers 500 "An unexpected error occurred"
  (as ``rate-limiting`` does). Each decision is counted in the worker's tally
  (``TALLY``) and logged at most once per 10 s, without secrets.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Awaitable, Literal

from guichet.limits import CountersUnavailable, Decision, Limit
from guichet.plugins.api import Plugin, PluginConfig, Response, error
from guichet.plugins.bundled.rate_limiting import set_headers
from guichet.plugins.faultlog import FaultLog
from guichet.quotas import (DEFAULT_STORE, Consumed, QuotaKey, QuotaStore,
                            QuotaStoreUnavailable, SharedStores, parse_store_url)
from guichet.quotas.periods import WindowClock

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request, ResponseHead

log = logging.getLogger("guichet.plugins.usage_plans")

CTX_HEADERS = "usage-plans:headers"
STORE_NAME = "usage-plans"  # the worker store holding the shared quota stores and tally
UNEXPECTED = "An unexpected error occurred"
THROTTLED = "API rate limit exceeded"
OVER_QUOTA = "API quota exceeded"
EXHAUSTED_CACHE_SIZE = 65536
RECHECK = 60.0  # seconds a worker trusts its memory of a consumer over quota


class PlanSpec(PluginConfig):
    id: str
    name: str
    throttle_rate: float | None = None
    throttle_burst: int | None = None
    quota_limit: int | None = None
    quota_period: Literal["day", "week", "month"] | None = None
    consumer_ids: list[str] = []
    service_ids: list[str] = []
    route_ids: list[str] = []
    fault_tolerant: bool = True
    hide_client_headers: bool = False


class UsagePlansConfig(PluginConfig):
    plans: list[PlanSpec] = []


class CompiledPlan:
    """One plan, ready for the hot path."""

    __slots__ = ("spec", "name", "id", "limit", "period", "clock", "rate", "burst",
                 "services", "routes", "restricted", "hide", "fault_tolerant",
                 "throttle_body", "_limits")

    def __init__(self, spec: PlanSpec) -> None:
        self.spec = spec
        self.id, self.name = spec.id, spec.name
        self.limit = spec.quota_limit
        self.period = spec.quota_period
        self.clock = WindowClock(spec.quota_period) if spec.quota_period else None
        self.rate, self.burst = spec.throttle_rate, spec.throttle_burst
        if self.rate is not None and self.burst is None:
            self.burst = max(1, math.ceil(self.rate))
        self.services = frozenset(spec.service_ids)
        self.routes = frozenset(spec.route_ids)
        self.restricted = bool(self.services or self.routes)
        self.hide = spec.hide_client_headers
        self.fault_tolerant = spec.fault_tolerant
        self.throttle_body = {"plan": self.name, "rate": self.rate, "burst": self.burst}
        self._limits: dict[str, tuple[Limit, ...]] = {}

    def applies(self, req: "Request") -> bool:
        if not self.restricted:
            return True
        if req.route.id in self.routes:
            return True
        service = req.service
        return service is not None and service.id in self.services

    def throttle(self, consumer_id: str) -> tuple[Limit, ...]:
        found = self._limits.get(consumer_id)
        if found is None:
            assert self.rate is not None and self.burst is not None
            found = (Limit(key=f"up:{self.id}:{consumer_id}", limit=self.burst,
                           algorithm="gcra", rate=self.rate),)
            if len(self._limits) >= EXHAUSTED_CACHE_SIZE:
                self._limits.clear()
            self._limits[consumer_id] = found
        return found


class UsagePlans(Plugin):
    name = "usage-plans"
    priority = 905
    Config = UsagePlansConfig

    def __init__(self, config: UsagePlansConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        self.plans: dict[str, CompiledPlan] = {}
        compiled = [CompiledPlan(spec) for spec in config.plans]
        for plan in compiled:
            for consumer_id in plan.spec.consumer_ids:
                self.plans.setdefault(consumer_id, plan)
        self.counters = env.counters.local() if any(p.rate for p in compiled) else None
        self.quotas = any(p.limit for p in compiled)
        settings = env.settings
        self.url = getattr(settings, "usage_store", None) or DEFAULT_STORE
        self.timeout = getattr(settings, "usage_store_timeout", None) or 2.0
        parse_store_url(self.url)  # a bad URL fails the build, not the first request
        holder = env.store(STORE_NAME)
        self.shared: SharedStores = holder.get("stores") or SharedStores()
        holder.set("stores", self.shared)
        self.tally: dict[str, int] = holder.get("tally")
        if self.tally is None:
            self.tally = {}
            holder.set("tally", self.tally)
        self.store: QuotaStore | None = None
        self.faults = FaultLog(log, "usage plans")
        self._show_headers = self.quotas and any(not p.hide for p in compiled if p.limit)
        # (plan id, consumer id) -> (window end, count, trusted until) of consumers over
        # their quota
        self._exhausted: dict[tuple[str, str], tuple[float, int, float]] = {}

    def active_phases(self) -> tuple[str, ...]:
        return ("access", "response_headers") if self._show_headers else ("access",)

    async def start(self) -> None:
        if not self.quotas or self.store is not None:
            return
        self.store = self.shared.acquire(self.url, self.timeout)
        try:
            await self.store.start()
        except Exception as exc:  # noqa: BLE001 - requests get fault_tolerant's answer
            log.error("usage plans: the quota store %s cannot start: %s", self.store.url, exc)

    async def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            await self.shared.release(store)

    # ------------------------------------------------------------------ access
    def access(self, req: "Request") -> "Response | Awaitable[Response | None] | None":
        consumer = req.consumer
        if consumer is None:
            return None
        plan = self.plans.get(consumer.id)
        if plan is None or not plan.applies(req):
            return None
        if plan.rate is not None:
            try:
                result = self.counters.hit(plan.throttle(consumer.id))  # type: ignore[union-attr]
            except CountersUnavailable as exc:
                refusal = self.unavailable(plan, "throttle counters", exc)
                if refusal is not None:
                    return refusal
            else:
                if not isinstance(result, Decision):
                    return self._throttle_later(req, plan, consumer.id, result)
                if not result.allowed:
                    return self.throttled(req, plan, result)
        if plan.limit is None:
            return None
        return self.quota(req, plan, consumer.id)

    async def _throttle_later(self, req: "Request", plan: CompiledPlan, consumer_id: str,
                              pending: Awaitable[Decision]) -> Response | None:
        try:
            decision = await pending
        except CountersUnavailable as exc:
            refusal = self.unavailable(plan, "throttle counters", exc)
            if refusal is not None:
                return refusal
        else:
            if not decision.allowed:
                return self.throttled(req, plan, decision)
        if plan.limit is None:
            return None
        result = self.quota(req, plan, consumer_id)
        return await result if result is not None and not isinstance(result, Response) \
            else result

    def throttled(self, req: "Request", plan: CompiledPlan, decision: Decision) -> Response:
        retry_after = max(1, math.ceil(decision.retry_after))
        body = {"message": THROTTLED, "throttle": plan.throttle_body,
                "request_id": req.request_id}
        return Response(429, body, [("Retry-After", str(retry_after))])

    def quota(self, req: "Request", plan: CompiledPlan,
              consumer_id: str) -> "Response | Awaitable[Response | None] | None":
        now = time.time()
        assert plan.clock is not None and plan.limit is not None
        window = plan.clock.at(now)
        exhausted = self._exhausted.get((plan.id, consumer_id))
        if exhausted is not None and exhausted[0] == window.end_ts and now < exhausted[2]:
            return self.over_quota(req, plan, Consumed(False, exhausted[1], plan.limit, window),
                                   now)
        store = self.store
        if store is None:
            return self.unavailable(plan, "quota store",
                                    QuotaStoreUnavailable("the quota store is not started"))
        try:
            pending = store.consume(QuotaKey(plan.id, consumer_id, window), plan.limit)
        except QuotaStoreUnavailable as exc:
            return self.unavailable(plan, "quota store", exc)
        return self._counted(req, plan, consumer_id, pending)

    async def _counted(self, req: "Request", plan: CompiledPlan, consumer_id: str,
                       pending: Awaitable[Consumed]) -> Response | None:
        try:
            consumed = await pending
        except QuotaStoreUnavailable as exc:
            return self.unavailable(plan, "quota store", exc)
        if self.faults.pending:
            self.faults.recovered()
        now = time.time()
        if consumed.allowed:
            if not plan.hide:
                req.ctx[CTX_HEADERS] = quota_headers(consumed, now)
            return None
        if len(self._exhausted) >= EXHAUSTED_CACHE_SIZE:
            self._exhausted.clear()
        self._exhausted[(plan.id, consumer_id)] = (consumed.window.end_ts, consumed.used,
                                                   now + RECHECK)
        return self.over_quota(req, plan, consumed, now)

    def over_quota(self, req: "Request", plan: CompiledPlan, consumed: Consumed,
                   now: float) -> Response:
        window = consumed.window
        headers = [] if plan.hide else quota_headers(consumed, now)
        headers.append(("Retry-After", str(max(1, math.ceil(window.seconds_left(now))))))
        body = {"message": OVER_QUOTA,
                "quota": {"plan": plan.name, "limit": consumed.limit, "period": window.period,
                          "used": consumed.used, "resets_at": window.resets_at},
                "request_id": req.request_id}
        return Response(429, body, headers)

    def unavailable(self, plan: CompiledPlan, what: str, exc: Exception) -> Response | None:
        """The plan's ``fault_tolerant`` decides; counted and logged."""
        tag = "quota_store" if what == "quota store" else "throttle"
        if plan.fault_tolerant:
            key = f"{tag}_unavailable_passed"
            self.tally[key] = self.tally.get(key, 0) + 1
            self.faults.record(what, exc, "let through (fault_tolerant)")
            return None
        key = f"{tag}_unavailable_failed"
        self.tally[key] = self.tally.get(key, 0) + 1
        self.faults.record(what, exc, "answered 500 (fault_tolerant is false)")
        return error(500, UNEXPECTED)

    # ------------------------------------------------------------------ response
    def response_headers(self, req: "Request", resp: "ResponseHead") -> None:
        headers = req.ctx.get(CTX_HEADERS)
        if headers is not None:
            set_headers(resp, headers, QUOTA_HEADER_NAMES)


QUOTA_HEADER_NAMES = frozenset(("x-quota-limit", "x-quota-remaining", "x-quota-reset"))


def quota_headers(consumed: Consumed, now: float) -> list[tuple[str, str]]:
    return [("X-Quota-Limit", str(consumed.limit)),
            ("X-Quota-Remaining", str(consumed.remaining)),
            ("X-Quota-Reset", str(max(1, math.ceil(consumed.window.seconds_left(now)))))]
