"""Test support: a misbehaving upstream (``upstream``), the gateway as a subprocess
(``gateway``), raw-socket HTTP (``rawhttp``), and ``declarative`` to write a Kong 3.0
declarative configuration from plain Python values.

``declarative`` emits JSON, which is valid YAML, so a test states its configuration as
dicts and lists and never fights YAML indentation.
"""

from __future__ import annotations

import json
from typing import Any


def declarative(services: list[dict[str, Any]] = (), upstreams: list[dict[str, Any]] = (),
                **entities: Any) -> str:
    """A ``_format_version: "3.0"`` document with these services, upstreams and others."""
    document: dict[str, Any] = {"_format_version": "3.0"}
    if services:
        document["services"] = list(services)
    if upstreams:
        document["upstreams"] = list(upstreams)
    document.update(entities)
    return json.dumps(document, indent=2)
