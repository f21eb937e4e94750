"""``guichet usage``: each consumer's plan and how much of its quota the current window
has used, read from the node's quota store.

Rules: one row per (consumer, plan) of the configuration, in the file's order of plans,
then of their consumers; ``--consumer`` keeps the consumer with that username or id. The
window is the one ``now`` falls in (UTC, ``guichet.quotas.periods``). The store is read,
never written: an SQLite file that does not exist yet reads as zero everywhere (the file
is not created), and it can be read while the gateway runs (WAL lets readers in). A plan
without a quota shows ``-`` in the quota columns; one without a throttle in the throttle
column. The JSON form is a list of objects (:func:`rows`); the table is for people.
"""

from __future__ import annotations

import time
from typing import Any

from guichet.config.model import Config, Consumer, UsagePlan
from guichet.quotas import QuotaKey, open_store
from guichet.quotas.periods import window


def plan_members(config: Config, consumer: str | None = None) -> list[tuple[UsagePlan, Consumer]]:
    by_id = {c.id: c for c in config.consumers}
    out = []
    for plan in config.usage_plans:
        for consumer_id in plan.consumer_ids:
            found = by_id.get(consumer_id)
            if found is None:
                continue
            if consumer is not None and consumer not in (found.username, found.id):
                continue
            out.append((plan, found))
    return out


async def rows(config: Config, url: str, *, consumer: str | None = None,
               now: float | None = None, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The usage rows (JSON-able), reading the store at ``url``."""
    now = time.time() if now is None else now
    members = plan_members(config, consumer)
    keys = [(i, QuotaKey(plan.id, member.id, window(plan.quota_period, now)))
            for i, (plan, member) in enumerate(members) if plan.quota_period]
    used: dict[int, int] = {}
    if keys:
        store = open_store(url, timeout, read_only=True)
        await store.start()
        try:
            counts = await store.read([key for _, key in keys])
        finally:
            await store.close()
        used = {i: count for (i, _), count in zip(keys, counts)}
    key_by_index = dict(keys)
    out = []
    for i, (plan, member) in enumerate(members):
        quota = None
        if plan.quota_limit is not None and i in key_by_index:
            w = key_by_index[i].window
            count = used.get(i, 0)
            quota = {"limit": plan.quota_limit, "period": plan.quota_period, "used": count,
                     "remaining": max(0, plan.quota_limit - count),
                     "period_start": w.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "resets_at": w.resets_at}
        throttle = None if plan.throttle_rate is None else \
            {"rate": plan.throttle_rate, "burst": plan.throttle_burst}
        out.append({"consumer": {"id": member.id, "username": member.username,
                                 "custom_id": member.custom_id},
                    "plan": {"id": plan.id, "name": plan.name},
                    "quota": quota, "throttle": throttle})
    return out


def table(items: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    header = ("CONSUMER", "PLAN", "QUOTA", "USED", "REMAINING", "RESETS AT", "THROTTLE")
    lines = [header]
    for row in items:
        quota, throttle = row["quota"], row["throttle"]
        who = row["consumer"]["username"] or row["consumer"]["custom_id"] or row["consumer"]["id"]
        lines.append((
            who, row["plan"]["name"],
            f"{quota['limit']}/{quota['period']}" if quota else "-",
            str(quota["used"]) if quota else "-",
            str(quota["remaining"]) if quota else "-",
            quota["resets_at"] if quota else "-",
            f"{throttle['rate']:g}/s burst {throttle['burst']}" if throttle else "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)
