"""An example guichet plugin: ``tenant-header``.

It shows every part of the plugin API on something a platform team actually writes:

* the request must name its tenant in a header (``X-Tenant`` by default); a request
  without one, or naming a tenant not in ``tenants``, is refused with 400 / 403;
* the tenant is passed upstream in a normalised header and kept in ``req.ctx`` for the
  plugins that run after this one;
* a per-tenant request counter lives in a worker store (it survives reloads);
* the response carries ``X-Tenant`` and the tenant's request count;
* the log phase writes one line per request to the ``guichet.example`` logger.

Load it with the ``plugins`` setting (``GUICHET_PLUGINS=bundled,tenant_header`` with this
directory on ``PYTHONPATH``) and attach it in the declarative file like any plugin; see
``examples/plugins/kong.yml`` and ``docs/plugins/writing-plugins.md``.
"""

from __future__ import annotations

import logging

from pydantic import Field, field_validator

from guichet.plugins import Plugin, PluginConfig, Request, Response, ResponseHead, error

log = logging.getLogger("guichet.example")


class TenantHeaderConfig(PluginConfig):
    header_name: str = "X-Tenant"
    tenants: list[str] = Field(min_length=1)
    upstream_header: str = "X-Tenant-Id"

    @field_validator("tenants")
    @classmethod
    def _simple_names(cls, value: list[str]) -> list[str]:
        for tenant in value:
            if not tenant.isidentifier():
                raise ValueError(f"tenant {tenant!r} is not a simple name")
        return value


class TenantHeader(Plugin):
    name = "tenant-header"
    priority = 1500  # after cors (2000), before key-auth (1250)
    version = "1.0.0"
    Config = TenantHeaderConfig

    def __init__(self, config: TenantHeaderConfig, env) -> None:
        super().__init__(config, env)
        # Build-time work: done once per configuration, never per request.
        self.allowed = frozenset(t.lower() for t in config.tenants)
        self.counts = env.store("tenant-header.counts")

    def access(self, req: Request) -> Response | None:
        tenant = req.header(self.config.header_name)
        if not tenant:
            return error(400, f"missing {self.config.header_name} header")
        tenant = tenant.strip().lower()
        if tenant not in self.allowed:
            return error(403, "unknown tenant")
        req.ctx["tenant"] = tenant
        req.set_header(self.config.upstream_header, tenant)
        req.ctx["tenant_count"] = self.counts.incr(tenant)
        return None

    def response_headers(self, req: Request, resp: ResponseHead) -> None:
        tenant = req.ctx.get("tenant")
        if tenant is not None:
            resp.set("X-Tenant", tenant)
            resp.set("X-Tenant-Requests", str(req.ctx["tenant_count"]))

    def log(self, req: Request, resp: ResponseHead) -> None:
        log.info("tenant=%s route=%s status=%d", req.ctx.get("tenant", "-"),
                 req.route.name, resp.status)


PLUGIN = TenantHeader  # lets the settings name the module alone: "tenant_header"
