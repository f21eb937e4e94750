"""Which plugins a node knows: the bundled ones, plus custom ones named in the settings.

The ``plugins`` setting is Kong's: a list whose entries are ``bundled`` (every plugin
shipped with guichet) or the module path of a custom plugin, ``package.module:Class`` or
``package.module`` (the module's ``PLUGIN`` attribute is then the class). Classes are
imported lazily: a bundled plugin's module is imported the first time a configuration
uses it, so a node pays nothing for plugins it does not use.

Rules checked when the registry is built (a failure stops the node with the reason):
a class is a :class:`~guichet.plugins.api.Plugin` subclass with a non-empty ``name``, a
``Config`` that is a :class:`~guichet.plugins.api.PluginConfig`; two plugins never share a
name; a custom plugin may not reuse a bundled plugin's name nor its priority.

The registry also is what the configuration loader asks to validate a plugin's
``config`` (:meth:`Registry.schemas`): errors carry the path inside ``config`` and so get
their line in the file.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from pydantic import ValidationError

from guichet.plugins.api import Plugin, PluginConfig

BUNDLED: dict[str, str] = {
    "correlation-id": "guichet.plugins.bundled.correlation_id:CorrelationId",
    "bot-detection": "guichet.plugins.bundled.bot_detection:BotDetection",
    "cors": "guichet.plugins.bundled.cors:Cors",
    "oauth2-introspection": "guichet.plugins.bundled.oauth2_introspection:OAuth2Introspection",
    "jwt": "guichet.plugins.bundled.jwt_auth:JwtAuth",
    "key-auth": "guichet.plugins.bundled.key_auth:KeyAuth",
    "basic-auth": "guichet.plugins.bundled.basic_auth:BasicAuth",
    "jwt-jwks": "guichet.plugins.bundled.jwt_jwks:JwtJwks",
    "hmac-auth": "guichet.plugins.bundled.hmac_auth:HmacAuth",
    "ip-restriction": "guichet.plugins.bundled.ip_restriction:IpRestriction",
    "request-size-limiting": "guichet.plugins.bundled.request_size_limiting:RequestSizeLimiting",
    "acl": "guichet.plugins.bundled.acl:Acl",
    "request-termination": "guichet.plugins.bundled.request_termination:RequestTermination",
    "rate-limiting": "guichet.plugins.bundled.rate_limiting:RateLimiting",
    "concurrency-limiting": "guichet.plugins.bundled.concurrency_limiting:ConcurrencyLimiting",
    "usage-plans": "guichet.plugins.bundled.usage_plans:UsagePlans",  # added by the loader
}


class PluginLoadError(Exception):
    """A plugin named in the settings cannot be used; the message says why."""


def import_plugin(spec: str) -> type[Plugin]:
    """Import ``module:Class`` (or ``module`` with a ``PLUGIN`` attribute) and check it."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
        raise PluginLoadError(f"cannot import plugin module '{module_name}': "
                              f"{type(exc).__name__}: {exc}") from exc
    cls = getattr(module, attr or "PLUGIN", None)
    if cls is None:
        raise PluginLoadError(f"module '{module_name}' has no attribute "
                              f"'{attr or 'PLUGIN'}' (write 'module:Class')")
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginLoadError(f"'{spec}' is not a subclass of guichet.plugins.Plugin")
    if not cls.name:
        raise PluginLoadError(f"'{spec}' has no name")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, PluginConfig)):
        raise PluginLoadError(f"'{spec}'.Config is not a subclass of guichet.plugins.PluginConfig")
    if not isinstance(cls.priority, int):
        raise PluginLoadError(f"'{spec}'.priority is not an integer")
    return cls


class PluginSchemaAdapter:
    """What the configuration loader needs from one plugin (``config.schema.PluginSchema``)."""

    def __init__(self, registry: "Registry", name: str) -> None:
        self._registry = registry
        self.name = name

    @property
    def no_consumer(self) -> bool:
        return self._registry.plugin_class(self.name).no_consumer

    def validate(self, config: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        cls = self._registry.plugin_class(self.name)
        try:
            model = cls.Config.model_validate(config)
        except ValidationError as exc:
            return config, [(_loc(err["loc"]), _message(err)) for err in exc.errors()]
        return model.model_dump(mode="python"), []


def _loc(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: Any) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field missing"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


class Registry:
    """Plugin name → class, resolved lazily for bundled plugins."""

    def __init__(self, entries: Iterable[str] = ("bundled",)) -> None:
        self._specs: dict[str, str] = {}
        self._classes: dict[str, type[Plugin]] = {}
        for entry in entries:
            entry = entry.strip()
            if not entry or entry == "off":
                continue
            if entry == "bundled":
                for name, spec in BUNDLED.items():
                    self._specs.setdefault(name, spec)
                continue
            cls = import_plugin(entry)
            if cls.name in BUNDLED:
                raise PluginLoadError(f"custom plugin '{entry}' is named '{cls.name}', "
                                      "the name of a bundled plugin")
            if cls.name in self._classes:
                raise PluginLoadError(f"two custom plugins are named '{cls.name}'")
            self._specs[cls.name] = entry
            self._classes[cls.name] = cls
        if self._classes:
            self._check_priorities()

    def _check_priorities(self) -> None:
        """A custom plugin's priority ties with no other plugin's: a tie would make the
        order depend on names. (Bundled priorities are pinned by a test.)"""
        seen: dict[int, str] = {}
        for name in sorted(self._specs, key=lambda n: n not in BUNDLED):
            try:
                cls = self.plugin_class(name)
            except PluginLoadError:
                continue  # a bundled module not written yet cannot tie
            if cls.priority in seen and name not in BUNDLED:
                raise PluginLoadError(f"plugins '{seen[cls.priority]}' and '{name}' have the "
                                      f"same priority {cls.priority}: give '{name}' another")
            seen.setdefault(cls.priority, name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def plugin_class(self, name: str) -> type[Plugin]:
        cls = self._classes.get(name)
        if cls is None:
            spec = self._specs.get(name)
            if spec is None:
                raise KeyError(name)
            cls = self._classes[name] = import_plugin(spec)
        return cls

    def schemas(self) -> dict[str, PluginSchemaAdapter]:
        """The mapping the configuration loader takes as ``plugin_schemas``."""
        return {name: PluginSchemaAdapter(self, name) for name in self._specs}


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry of bundled plugins only (for tools and tests)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry(("bundled",))
    return _DEFAULT
