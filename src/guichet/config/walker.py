"""Walks the document's entities in file order and validates each one on its own.

Rules, for every entity met (top level or nested, in the order the file lists them):

* an entity is a mapping (a nested SNI may also be a plain string: its name);
* ``_comment`` (a string) and ``_ignore`` (an array) are accepted and ignored on every
  entity, as in Kong; a key with a null value counts as absent (Kong's ``null``);
* nested collections the entity may hold (``routes`` in a service, ``plugins`` in a
  service, route or consumer, credentials in a consumer, ``targets`` in an upstream,
  ``snis`` in a certificate) are walked after the entity, with the entity as their parent;
* reference fields (``service:``, ``upstream:`` ...) are set aside for
  ``guichet.config.references``; Kong fields guichet does not implement are refused unless
  they hold Kong's default; the rest is validated by the kind's pydantic model and then by
  the kind's cross-field checks;
* a service's ``url`` is Kong's shorthand for protocol, host, port and path;
* a usage plan's ``consumers``, ``services`` and ``routes`` are lists of references
  (``Kind.list_references``), validated as lists of strings here and resolved by
  ``guichet.config.references``; the ``usage-plans`` plugin is never written by hand;
* a plugin's name must be one of the given ``plugin_schemas``, whose ``validate`` then
  checks and defaults its ``config`` (a disabled plugin is checked too); a plugin whose
  schema says ``no_consumer`` (authentication plugins) cannot be nested in a consumer nor
  name one (Kong's "value must be null");
* a basic-auth password must fit bcrypt (72 bytes) when it is to be hashed, and must
  already be a bcrypt or argon2 hash when the root says ``_transform: false``.

Every problem is reported and the walk goes on, so one load reports every error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import ValidationError

from guichet.config import checks, schema
from guichet.config.report import Reporter
from guichet.config.yamlmarks import Path, parse_path

_URL_FIELDS = ("protocol", "host", "port", "path")
_NESTED_RECORDS = ("healthchecks",)  # nulls inside these records also mean "absent"
_CHECKS: dict[str, Any] = {
    "services": checks.check_service, "routes": checks.check_route,
    "upstreams": checks.check_upstream, "consumers": checks.check_consumer,
    "certificates": checks.check_certificate, "jwt_secrets": checks.check_jwt_secret,
}


@dataclass(slots=True, eq=False)
class Item:
    """One entity as found in the file, validated or not."""

    kind: str
    path: Path
    raw: dict[str, Any]
    model: schema.Entity | None
    parent: Item | None
    refs: dict[str, tuple[Any, Path]] = field(default_factory=dict)
    plugin_config: dict[str, Any] | None = None
    order: int = 0
    id: str | None = None
    resolved: dict[str, str | None] = field(default_factory=dict)
    resolved_lists: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def parent_field(self) -> str | None:
        """The reference field that nesting under ``parent`` implies (``service``)."""
        return None if self.parent is None else self.parent.kind[:-1]


class Walker:
    def __init__(self, report: Reporter, plugin_schemas: Mapping[str, Any], *,
                 transform: bool = True) -> None:
        self.report = report
        self.plugin_schemas = plugin_schemas
        self.transform = transform  # the root's _transform: hash plaintext secrets
        self.items: list[Item] = []
        self.route_count = 0

    def collection(self, kind: schema.Kind, value: Any, path: Path,
                   parent: Item | None = None) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.report.add(path, "expected an array")
            return
        for index, raw in enumerate(value):
            self.entity(kind, raw, path + (index,), parent)

    def entity(self, kind: schema.Kind, raw: Any, path: Path, parent: Item | None) -> None:
        sugar = kind.name == "snis" and parent is not None and isinstance(raw, str)
        if sugar:
            raw = {"name": raw}
        if not isinstance(raw, dict):
            self.report.add(path, "expected a record")
            return
        fields: dict[str, Any] = {}
        children: list[tuple[str, Any]] = []
        item = Item(kind.name, path, raw, None, parent)
        for key, value in raw.items():
            key_path = path + (key,)
            if key in ("_comment", "_ignore"):
                self._meta_key(key, value, key_path)
            elif key in kind.children:
                children.append((key, value))
            elif key in kind.references:
                if value is not None:
                    item.refs[key] = (value, key_path)
            elif not self._refused(kind, key, value, key_path) and value is not None:
                fields[key] = _drop_nulls(value) if key in _NESTED_RECORDS else value
        url_used = kind.name == "services" and "url" in fields
        url_failed = url_used and not self._expand_url(fields, path)
        item.model = self._validate(kind, fields, path, url_used, url_failed, sugar)
        if kind.name == "plugins":
            self._plugin(item)
        if kind.name == "routes":
            item.order = self.route_count
            self.route_count += 1
        self.items.append(item)
        for key, value in children:
            self.collection(schema.KINDS[key], value, path + (key,), item)

    def _meta_key(self, key: str, value: Any, path: Path) -> None:
        if key == "_comment" and value is not None and not isinstance(value, str):
            self.report.add(path, "expected a string")
        if key == "_ignore" and value is not None and not isinstance(value, list):
            self.report.add(path, "expected an array")

    def _refused(self, kind: schema.Kind, key: str, value: Any, path: Path) -> bool:
        """Report Kong features guichet lacks; True when ``key`` was handled here."""
        accepted = schema.UNSUPPORTED_FIELDS.get(kind.name, {})
        if key in accepted:
            if value is not None and value not in accepted[key]:
                self.report.add(path, f"'{key}' is not supported by guichet yet", at_key=True)
            return True
        if key in schema.UNSUPPORTED_COLLECTIONS or (
                kind.name == "certificates" and key in schema.CLIENT_CERTIFICATE_NESTING):
            if value not in (None, []):
                what = schema.UNSUPPORTED_COLLECTIONS.get(key) or f"{key} using this " \
                    "certificate as client_certificate"
                self.report.add(path, f"'{key}' ({what}) is not supported by guichet yet",
                                at_key=True)
            return True
        return False

    def _expand_url(self, fields: dict[str, Any], path: Path) -> bool:
        """Replace ``url`` by the fields it stands for; False (reported) when it cannot."""
        url = fields.pop("url")
        clash = [name for name in _URL_FIELDS if name in fields]
        if clash:
            self.report.add(path + ("url",), "'url' cannot be combined with " +
                            ", ".join(f"'{name}'" for name in clash), at_key=True)
            return False
        if not isinstance(url, str):
            self.report.add(path + ("url",), "expected a string")
            return False
        try:
            fields.update(checks.parse_service_url(url))
        except ValueError as exc:
            self.report.add(path + ("url",), str(exc))
            return False
        return True

    def _validate(self, kind: schema.Kind, fields: dict[str, Any], path: Path,
                  url_used: bool, url_failed: bool, sugar: bool) -> schema.Entity | None:
        def relocate(loc: Path, message: str) -> tuple[Path, str] | None:
            if url_used and loc and loc[0] in _URL_FIELDS:
                if url_failed:
                    return None  # the url itself was reported
                return ("url",), f"{loc[0]} from url: {message}"
            if sugar and loc == ("name",):
                return (), message
            return loc, message

        try:
            model = kind.model.model_validate(fields)
        except ValidationError as exc:
            self.report.add_validation_error(path, exc, relocate)
            return None
        check = _CHECKS.get(kind.name)
        problems = check(model) if check else []
        if isinstance(model, schema.BasicAuthCredential):
            problems += checks.check_basicauth_password(model, transform=self.transform)
        for loc, message in problems:
            self.report.add(path + loc, message)
        return None if problems else model

    def _plugin(self, item: Item) -> None:
        name = item.raw.get("name")
        if not isinstance(name, str) or not name:
            return  # the model reported it
        plugin_schema = self.plugin_schemas.get(name)
        if name == schema.USAGE_PLANS_PLUGIN:
            self.report.add(item.path + ("name",), f"plugin '{name}' is added by guichet "
                            "when usage_plans are configured: write usage_plans instead")
            item.model = None
            return
        if plugin_schema is None:
            self.report.add(item.path + ("name",),
                            f"plugin '{name}' is not implemented by guichet yet")
            item.model = None
            return
        if isinstance(item.model, schema.Plugin):
            config = item.model.config or {}
            defaulted, problems = plugin_schema.validate(config)
            for sub_path, message in problems:
                self.report.add(item.path + ("config",) + parse_path(sub_path), message)
            item.plugin_config = None if problems else defaulted
            if problems:
                item.model = None
        if getattr(plugin_schema, "no_consumer", False):
            self._no_consumer(item, name)

    def _no_consumer(self, item: Item, name: str) -> None:
        """Kong's ``typedefs.no_consumer``: the plugin's ``consumer`` must stay null."""
        message = f"value must be null (plugin '{name}' cannot be configured on a consumer)"
        if "consumer" in item.refs:
            self.report.add(item.refs["consumer"][1], message)
        elif item.parent is not None and item.parent.kind == "consumers":
            self.report.add(item.path + ("consumer",), message)
        else:
            return
        item.model = None


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v if k == "headers" else _drop_nulls(v)
                for k, v in value.items() if v is not None}
    return value
