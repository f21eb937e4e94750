"""Loads a Kong 3.x declarative configuration (``kong.yml``) into a ``Config``.

Pipeline: read (UTF-8, optional BOM) -> parse with marks (``yamlmarks``) -> check the root
(``_format_version`` is required and one of "1.1", "2.1", "3.0") -> migrate 1.1/2.1 to 3.0
(``migrate``) -> walk and validate every entity (``walker``) -> ids, uniqueness and
references (``references``) -> build the frozen ``Config`` (``build``).

Root keys: ``_format_version``, ``_transform`` (a boolean, true by default: plaintext
basic-auth passwords are hashed on load; false means the file's passwords are already
hashes), ``_comment`` (a string), ``_ignore`` (an array), and the entity collections
``services``, ``routes``, ``consumers``, ``plugins``, ``upstreams``, ``targets``,
``certificates``, ``snis`` and the consumers' credentials ``keyauth_credentials``,
``basicauth_credentials``, ``jwt_secrets``, ``hmacauth_credentials``, ``acls``, and
guichet's own ``usage_plans`` (enforced by the bundled ``usage-plans`` plugin, which
the node's plugins must therefore include when there are plans). Kong
collections guichet does not implement (the oauth2 plugin's among them) and decK's own
keys (``_info``, ``_workspace`` ...) are errors; any other key is unknown.

Nothing stops at the first problem: every issue of the file is collected, sorted by line,
and raised together as one ``ConfigError``. ``Config.hash`` is the sha256 of the canonical
JSON (sorted keys) of the migrated document, so the same content always has the same hash
whatever its formatting, comments or format version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import orjson

from guichet.config import references
from guichet.config.build import build_config
from guichet.config.migrate import CURRENT_VERSION, FORMAT_VERSIONS, migrate_document
from guichet.config.model import Config, ConfigIssue
from guichet.config.report import Reporter
from guichet.config.schema import (DECK_KEYS, KINDS, UNSUPPORTED_COLLECTIONS,
                                   USAGE_PLANS_PLUGIN, PluginSchema)
from guichet.config.walker import Walker
from guichet.config.yamlmarks import parse_yaml
from guichet.errors import ConfigError

__all__ = ["load_config_file", "load_config_text"]


def load_config_file(path: str, *,
                     plugin_schemas: Mapping[str, PluginSchema] | None = None) -> Config:
    """Load the declarative configuration at ``path``; raise ``ConfigError`` with every issue."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, None, None, "",
                                       f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue(path, line, None, "",
                                       "the file is not valid UTF-8")]) from None
    return load_config_text(text, path, plugin_schemas=plugin_schemas)


def load_config_text(text: str, source: str = "<string>", *,
                     plugin_schemas: Mapping[str, PluginSchema] | None = None) -> Config:
    """Load a declarative configuration given as text; ``source`` names it in issues."""
    parsed = parse_yaml(text.removeprefix("\ufeff"), source)
    report = Reporter(source, parsed.marks, parsed.issues)
    doc = parsed.data
    if doc is None:
        raise ConfigError(report.sorted())
    if not isinstance(doc, dict):
        report.add((), "expected a mapping at the top level, with _format_version and the "
                       "entity collections")
        raise ConfigError(report.sorted())
    _check_version(doc, report)
    migrate_document(doc)
    transform = doc.get("_transform") is not False  # a non-boolean is reported below
    walker = Walker(report, {} if plugin_schemas is None else plugin_schemas,
                    transform=transform)
    for key, value in doc.items():
        _root_key(key, value, walker, report)
    references.link(walker.items, report)
    if plugin_schemas and doc.get("usage_plans") and USAGE_PLANS_PLUGIN not in plugin_schemas:
        report.add(("usage_plans",), f"usage plans are enforced by the bundled plugin "
                   f"'{USAGE_PLANS_PLUGIN}', which the node's plugins setting leaves out "
                   "(add 'bundled')", at_key=True)
    if report.issues:
        raise ConfigError(report.sorted())
    return build_config(walker.items, format_version=CURRENT_VERSION,
                        hash_=document_hash(doc), source=source, transform=transform)


def _check_version(doc: dict[str, Any], report: Reporter) -> None:
    if "_format_version" not in doc:
        report.add(("_format_version",), 'required field missing: add _format_version: "3.0" '
                                         'at the top of the file')
        return
    version = doc["_format_version"]
    if not isinstance(version, str):
        report.add(("_format_version",), f"expected a string: write it quoted, e.g. "
                                         f'"{version}"')
    elif version not in FORMAT_VERSIONS:
        report.add(("_format_version",), f"unsupported format version '{version}': expected "
                                         'one of "1.1", "2.1", "3.0"')


def _root_key(key: str, value: Any, walker: Walker, report: Reporter) -> None:
    path = (key,)
    if key in KINDS:
        walker.collection(KINDS[key], value, path)
    elif key == "_format_version":
        return
    elif key == "_transform":
        if not isinstance(value, bool):
            report.add(path, "expected a boolean")
    elif key == "_comment":
        if value is not None and not isinstance(value, str):
            report.add(path, "expected a string")
    elif key == "_ignore":
        if value is not None and not isinstance(value, list):
            report.add(path, "expected an array")
    elif key in UNSUPPORTED_COLLECTIONS:
        if value not in (None, []):
            report.add(path, f"'{key}' ({UNSUPPORTED_COLLECTIONS[key]}) is not supported "
                             "by guichet yet", at_key=True)
    elif key in DECK_KEYS:
        report.add(path, f"'{key}' belongs to decK's file format, not to Kong's declarative "
                         "configuration (Kong refuses it too)", at_key=True)
    else:
        report.add(path, "unknown field", at_key=True)


def document_hash(doc: Any) -> str:
    """sha256 hex of the canonical JSON of ``doc`` (sorted keys, no whitespace)."""
    try:
        canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits: fall back to the standard library
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()
