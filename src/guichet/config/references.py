"""Ids, uniqueness and references between entities, after every entity was walked.

Ids. An ``id`` written in the file is used (lower-cased). A missing id is generated as
Kong 3.x generates it in ``declarative_config.lua``:
``uuid5(uuid5(fd02801f-0957-4a15-a55a-c8d9606f30b5, kind), key)`` where key is

* services, routes, upstreams, SNIs: the name; consumers: the username;
* targets: ``targets:*:<upstream id>:<target>`` and plugins:
  ``plugins:*:<name>:<route id>:<service id>:<consumer id>`` (empty when unset);
* basic-auth and hmac-auth credentials: ``<kind>:*:<username>``; ACLs:
  ``acls:*:<consumer id>:<group>``; JWT secrets: ``jwt_secrets:*:<key>`` when the key is
  written; key-auth credentials and JWT secrets without a key:
  ``<kind>:*:<consumer id>:#<n>``, n counting the consumer's earlier credentials of that
  kind in load order (Kong draws random ids for both, their key being generated).

Kong puts the reference as written in the keys holding a reference (an id when nested,
the text of ``service: name`` otherwise); guichet always puts the resolved id, so a nested
and a flat file give the same ids, equal to Kong's for nested entities. Where Kong would
draw a random id (certificates, entities without a name) guichet uses the entity's
position instead (key ``#services[3]``), so reloading the same file always yields the
same ids. A key-auth credential's id never derives from its key: a uuid5 of the key
would be an unsalted hash of a secret, and the id is sent upstream
(``X-Credential-Identifier``).

Uniqueness (errors at the second occurrence): ids per kind; names of services, routes and
upstreams; consumers' username and custom_id; SNI names across all certificates; plugin
instance names; key-auth keys, basic-auth and hmac-auth usernames and JWT keys across all
consumers (as in Kong); one ACL group per consumer; one plugin of a given name per
(route, service, consumer) scope; one target per (upstream, host, port). A message about
a secret field (a key-auth key) never shows its value.

Usage plans list references (``consumers``, ``services``, ``routes``): each entry is a
name (a username for consumers) or an id; a consumer may be in one usage plan only (an
error at the second listing, naming the first plan and its line).

References. ``service: x`` names the entity whose name (username for consumers) is x,
else whose id is x; ``service: {id: <uuid>}`` names an id and ``service: {name: x}``
(``{username: x}`` for consumers) a name: decK writes that form, Kong itself refuses it.
Certificates have no name: only their id works. A reference to nothing is an error at
the reference. An entity nested in another refers to it implicitly; writing the reference
anyway is accepted only when it names that same enclosing entity. Targets, SNIs and
credentials written at top level must name their upstream, certificate or consumer.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from guichet.config import rules
from guichet.config.report import Reporter
from guichet.config.schema import CREDENTIALS, KINDS
from guichet.config.walker import Item
from guichet.config.yamlmarks import Path, format_path

KONG_NAMESPACE = uuid.UUID("fd02801f-0957-4a15-a55a-c8d9606f30b5")
_NAMESPACES: dict[str, uuid.UUID] = {}


def entity_uuid(kind: str, key: str) -> str:
    """Kong's deterministic id for an entity of ``kind`` identified by ``key``."""
    namespace = _NAMESPACES.get(kind)
    if namespace is None:
        namespace = _NAMESPACES[kind] = uuid.uuid5(KONG_NAMESPACE, kind)
    return str(uuid.uuid5(namespace, key))


def link(items: list[Item], report: Reporter) -> None:
    """Give every item an id, check uniqueness, resolve references into ``item.resolved``."""
    indexes = {kind: _Index() for kind in KINDS}
    uniques: dict[tuple[str, str], dict[str, Item]] = {}
    referenced = [i for i in items if i.kind not in _UNREFERENCED]
    for item in referenced:
        item.id = _explicit_id(item) or _named_id(item)
        _index(item, indexes[item.kind], uniques, report)
    members: dict[str, tuple[Item, Path]] = {}  # consumer id -> the plan listing it, where
    for item in items:
        _resolve(item, indexes, report)
        if KINDS[item.kind].list_references:
            _resolve_lists(item, indexes, report, members)
    ordinals: dict[tuple[str, str | None], int] = {}
    for item in items:
        if item.kind in _UNREFERENCED:
            explicit = _explicit_id(item)
            owner = (item.kind, item.resolved.get("consumer"))
            ordinal = ordinals[owner] = ordinals.get(owner, -1) + 1
            item.id = explicit or _late_id(item, ordinal)
            # a generated id repeats only when its key repeats, and that is reported as
            # a scope or a field uniqueness violation
            _index(item, indexes[item.kind], uniques, report, report_id=bool(explicit))
    _check_scopes(items, report)


# Kinds nothing refers to: their ids may derive from their references (Kong's cache_key),
# so they wait until every reference is resolved.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNREFERENCED = frozenset(("targets", "plugins", *CREDENTIALS))


def _explicit_id(item: Item) -> str | None:
    value = item.raw.get("id")
    if isinstance(value, str):
        try:
            return rules.check_uuid(value)
        except ValueError:
            return None  # reported by the model
    return None


def _named_id(item: Item) -> str:
    endpoint = KINDS[item.kind].endpoint_key
    name = item.raw.get(endpoint) if endpoint else None
    if isinstance(name, str) and name:
        return entity_uuid(item.kind, name)
    return entity_uuid(item.kind, "#" + format_path(item.path))


def _late_id(item: Item, ordinal: int) -> str:
    """The generated id of a target, plugin or credential (see the module docstring);
    ``ordinal`` counts the earlier credentials of the same kind and consumer."""
    r, raw = item.resolved, item.raw
    if item.kind == "targets":
        parts = ["targets", "*", r["upstream"] or "", str(raw.get("target"))]
    elif item.kind == "plugins":
        parts = ["plugins", "*", str(raw.get("name")), r["route"] or "", r["service"] or "",
                 r["consumer"] or ""]
    elif item.kind == "acls":
        parts = ["acls", "*", r["consumer"] or "", str(raw.get("group"))]
    else:
        field = {"basicauth_credentials": "username", "hmacauth_credentials": "username",
                 "jwt_secrets": "key"}.get(item.kind)  # never a key-auth key: a secret
        value = raw.get(field) if field else None
        if isinstance(value, str) and value:
            parts = [item.kind, "*", value]
        elif r["consumer"] is not None:
            parts = [item.kind, "*", r["consumer"], f"#{ordinal}"]
        else:  # the missing consumer is reported
            return entity_uuid(item.kind, "#" + format_path(item.path))
    return entity_uuid(item.kind, ":".join(parts))


class _Index:
    def __init__(self) -> None:
        self.by_id: dict[str, Item] = {}
        self.by_key: dict[str, Item] = {}


def _index(item: Item, index: _Index, uniques: dict[tuple[str, str], dict[str, Item]],
           report: Reporter, *, report_id: bool = True) -> None:
    kind = KINDS[item.kind]
    unique_fields = ([kind.endpoint_key] if kind.endpoint_key else []) + list(kind.unique)
    failed = False
    for name in unique_fields:
        value = item.raw.get(name)
        if not isinstance(value, str):
            continue
        seen = uniques.setdefault((item.kind, name), {})
        if value in seen:
            shown = "the same value" if name in kind.secrets else f"'{_printable(value)}'"
            report.add(item.path + (name,), f"uniqueness violation: '{item.kind}' entity "
                       f"with {name} set to {shown} already declared"
                       f"{_first(seen[value], report)}")
            failed = True
        else:
            seen[value] = item
            if name == kind.endpoint_key:
                index.by_key[value] = item
    assert item.id is not None
    if item.id not in index.by_id:
        index.by_id[item.id] = item
    elif report_id and not failed:
        report.add(item.path + (("id",) if "id" in item.raw else ()),
                   f"uniqueness violation: '{item.kind}' entity with primary key set to "
                   f"'{item.id}' already declared{_first(index.by_id[item.id], report)}")


def _printable(value: str) -> str:
    """``value`` for a message: control characters written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def _first(item: Item, report: Reporter) -> str:
    mark = report.marks.locate(item.path)
    return f" (first at line {mark.line})" if mark else ""


_REQUIRED_REFERENCE = {"targets": "upstream", "snis": "certificate",
                       **{kind: "consumer" for kind in CREDENTIALS}}


def _resolve(item: Item, indexes: dict[str, _Index], report: Reporter) -> None:
    refs = KINDS[item.kind].references
    for name in refs:
        item.resolved[name] = None
    parent_field = item.parent_field
    if item.parent is not None and parent_field is not None:
        item.resolved[parent_field] = item.parent.id
    elif item.kind in _REQUIRED_REFERENCE and _REQUIRED_REFERENCE[item.kind] not in item.refs:
        report.add(item.path + (_REQUIRED_REFERENCE[item.kind],), "required field missing")
    for name, (value, path) in item.refs.items():
        target_kind = refs[name]
        index = indexes[target_kind]
        key_field = KINDS[target_kind].endpoint_key
        if isinstance(value, str) and value:
            found = index.by_key.get(value) or index.by_id.get(value.lower())
        elif _reference_mapping(value, "id"):
            found = index.by_id.get(value["id"].lower())
        elif key_field and _reference_mapping(value, key_field):
            found = index.by_key.get(value[key_field])
        else:
            forms = "{id: <uuid>}" + (f" or {{{key_field}: <{key_field}>}}" if key_field else "")
            report.add(path, f"a reference is a name or an id, or a mapping {forms}")
            continue
        if found is None:
            shown = value if isinstance(value, str) else "{%s: %s}" % next(iter(value.items()))
            report.add(path, f"invalid reference '{name}: {shown}' (no such entry in "
                             f"'{target_kind}')")
            continue
        if item.parent is not None and name == item.parent_field and found is not item.parent:
            report.add(path, f"'{name}' must be omitted inside {item.parent.kind} "
                             f"(it is implied) or name the enclosing one")
            continue
        item.resolved[name] = found.id


def _resolve_lists(item: Item, indexes: dict[str, _Index], report: Reporter,
                   members: dict[str, tuple[Item, Path]]) -> None:
    """A usage plan's ``consumers``, ``services`` and ``routes``: names (usernames for
    consumers) or ids; a name repeated in one list counts once; a consumer may belong to
    one usage plan only."""
    for name, target_kind in KINDS[item.kind].list_references:
        values = item.raw.get(name)
        found: list[str] = []
        if isinstance(values, list):
            index = indexes[target_kind]
            for position, value in enumerate(values):
                if not isinstance(value, str) or not value:
                    continue  # reported by the model
                target = index.by_key.get(value) or index.by_id.get(value.lower())
                path = item.path + (name, position)
                if target is None or target.id is None:
                    report.add(path, f"invalid reference '{name}: {_printable(value)}' (no "
                                     f"such entry in '{target_kind}')")
                    continue
                if target.id in found:
                    continue
                found.append(target.id)
                if target_kind == "consumers":
                    other, first = members.setdefault(target.id, (item, path))
                    if other is not item:
                        mark = report.marks.locate(first)
                        report.add(path, f"consumer '{_printable(value)}' is already in usage "
                                         f"plan '{_printable(str(other.raw.get('name')))}'"
                                         f"{f' (line {mark.line})' if mark else ''}: a "
                                         "consumer belongs to one plan at most")
        item.resolved_lists[name] = tuple(found)


def _reference_mapping(value: Any, key: str) -> bool:
    return (isinstance(value, dict) and len(value) == 1 and isinstance(value.get(key), str)
            and bool(value[key]))


def _check_scopes(items: list[Item], report: Reporter) -> None:
    plugins: dict[tuple[Any, ...], Item] = {}
    targets: dict[tuple[Any, ...], Item] = {}
    groups: dict[tuple[Any, ...], Item] = {}
    for item in items:
        if item.model is None:
            continue
        if item.kind == "acls" and item.resolved["consumer"] is not None:
            scope = (item.resolved["consumer"], item.raw["group"])
            if scope in groups:
                report.add(item.path + ("group",), f"uniqueness violation: 'acls' entity "
                           f"with group set to '{_printable(scope[1])}' already declared "
                           f"for this consumer{_first(groups[scope], report)}")
            else:
                groups[scope] = item
        elif item.kind == "plugins":
            r = item.resolved
            scope = (item.raw["name"], r["route"], r["service"], r["consumer"])
            if scope in plugins:
                report.add(item.path + ("name",), f"plugin '{scope[0]}' is already configured "
                           "for this same route, service and consumer"
                           f"{_first(plugins[scope], report)}")
            else:
                plugins[scope] = item
        elif item.kind == "targets":
            parsed = rules.parse_host(item.raw["target"])
            scope = (item.resolved["upstream"], parsed.host.lower(), parsed.port or 8000)
            if scope in targets:
                report.add(item.path + ("target",), f"target '{item.raw['target']}' is "
                           f"already declared for this upstream{_first(targets[scope], report)}")
            else:
                targets[scope] = item
