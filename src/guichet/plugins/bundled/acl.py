"""acl: let a request through or refuse it by the groups of its consumer (Kong's ``acl``,
priority 950, access phase; it runs after the authentication plugins, which set the
consumer).

Rules (Kong 3.x's handler):

* Exactly one of ``allow`` and ``deny`` is a non-empty list of group names.
* The groups come from the consumer the authentication plugin identified: its ``acls``
  entries (``env.consumers.groups``). A plugin that authenticates without a consumer (an
  LDAP-style plugin) may instead put a list of group names in
  ``req.ctx["authenticated_groups"]``; those are used when there is no consumer, when the
  consumer is the ``anonymous`` one (no credential), or always when
  ``always_use_authenticated_groups`` is true.
* No consumer and no authenticated groups: 401 ``Unauthorized`` (403 ``You cannot consume
  this service`` if a credential was accepted anyway).
* A consumer with no groups: with ``allow``, 401 ``Unauthorized`` for the anonymous
  consumer and 403 ``You cannot consume this service`` for an authenticated one; with
  ``deny``, the request goes on.
* With ``allow``, a consumer in none of the groups is refused; with ``deny``, a consumer in
  any of them is refused: 403 ``You cannot consume this service``.
* Let through, the upstream request carries ``X-Consumer-Groups`` (the consumer's groups
  joined with ", "), or ``X-Authenticated-Groups`` when authenticated groups were used,
  unless ``hide_groups_header``. (Kong sends an empty header for a consumer with no
  groups; guichet sends none.) A client-sent ``X-Consumer-Groups`` never reaches the
  upstream either way (identity headers are stripped).

Cost: the verdict for each consumer is computed once per instance (consumers and their
groups are fixed for a configuration snapshot), so a request costs one dict lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from pydantic import model_validator

from guichet.plugins.api import Plugin, PluginConfig, Response, error

if TYPE_CHECKING:
    from guichet.plugins.env import BuildEnv
    from guichet.plugins.request import Request

NOT_ALLOWED = "You cannot consume this service"
CONSUMER_GROUPS_HEADER = "X-Consumer-Groups"
AUTHENTICATED_GROUPS_HEADER = "X-Authenticated-Groups"
AUTHENTICATED_GROUPS_CTX = "authenticated_groups"


class AclConfig(PluginConfig):
    allow: list[str] | None = None
    deny: list[str] | None = None
    hide_groups_header: bool = False
    always_use_authenticated_groups: bool = False

    @model_validator(mode="after")
    def _exactly_one_list(self) -> "AclConfig":
        if self.allow and self.deny:
            raise ValueError("only one of these fields can be non-empty: "
                             "'config.allow', 'config.deny'")
        if not self.allow and not self.deny:
            raise ValueError("at least one of these fields must be non-empty: "
                             "'config.allow', 'config.deny'")
        return self


class GroupRule:
    """``allow`` or ``deny`` over a set of group names."""

    __slots__ = ("deny", "groups")

    def __init__(self, groups: Iterable[str], deny: bool) -> None:
        self.groups = frozenset(groups)
        self.deny = deny

    def blocks(self, member_of: Iterable[str]) -> bool:
        in_group = not self.groups.isdisjoint(member_of)
        return in_group if self.deny else not in_group


class Acl(Plugin):
    name = "acl"
    priority = 950
    Config = AclConfig
    no_consumer = True

    def __init__(self, config: AclConfig, env: "BuildEnv") -> None:
        super().__init__(config, env)
        deny = bool(config.deny)
        self.rule = GroupRule(config.deny if deny else config.allow or (), deny)
        self.hide_groups_header = config.hide_groups_header
        self.always_use_authenticated_groups = config.always_use_authenticated_groups
        # consumer id -> None (refused) or the X-Consumer-Groups value ("" for no header)
        self._by_consumer: dict[str, str | None] = {}

    def access(self, req: "Request") -> Response | None:
        consumer = req.consumer
        credential = req.credential
        consumer_id = (consumer.id if consumer is not None
                       else getattr(credential, "consumer_id", None))

        authenticated_groups = None
        if consumer_id is None or credential is None or self.always_use_authenticated_groups:
            authenticated_groups = _authenticated_groups(req)

        if authenticated_groups is not None:
            if self.rule.blocks(authenticated_groups):
                return error(403, NOT_ALLOWED)
            if not self.hide_groups_header and authenticated_groups:
                req.set_header(AUTHENTICATED_GROUPS_HEADER, ", ".join(authenticated_groups))
            return None

        if consumer_id is None:
            if credential is not None:
                return error(403, NOT_ALLOWED)
            return error(401, "Unauthorized")

        try:
            header = self._by_consumer[consumer_id]
        except KeyError:
            groups = self.env.consumers.groups(consumer_id)
            if not groups and not self.rule.deny:
                # a consumer without groups cannot be in an allowed one
                if credential is not None:
                    return error(403, NOT_ALLOWED)
                return error(401, "Unauthorized")
            header = None if self.rule.blocks(groups) else ", ".join(groups)
            self._by_consumer[consumer_id] = header
        if header is None:
            return error(403, NOT_ALLOWED)
        if header and not self.hide_groups_header:
            req.set_header(CONSUMER_GROUPS_HEADER, header)
        return None


def _authenticated_groups(req: "Request") -> list[str] | None:
    """Groups an authentication plugin put in ``req.ctx`` (a list of names), or None."""
    groups = req.ctx.get(AUTHENTICATED_GROUPS_CTX)
    if isinstance(groups, (list, tuple)) and all(isinstance(g, str) for g in groups):
        return list(groups)
    return None
