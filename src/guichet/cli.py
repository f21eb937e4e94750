"""The ``guichet`` command.

::

    guichet run   --config FILE [--listen HOST:PORT [ssl]]... [--admin-listen HOST:PORT]
                  [--workers N] [--cert F --key F] [--settings FILE] [--log-level L]
    guichet check --config FILE [--settings FILE]
                                         exit 0, or print every error and exit 1
    guichet usage --config FILE [--settings FILE] [--consumer NAME] [--json]
                                         usage plans: each consumer's quota used in the
                                         current window, read from the usage store
    guichet demo  [--port P] [--admin-port P]
                                         the gateway on an example config, in front of a
                                         built-in upstream; Ctrl-C stops everything
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from guichet import __version__
from guichet.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guichet", description="An API gateway with a Kong-compatible declarative configuration.")
    p.add_argument("--version", action="version", version=f"guichet {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve the proxy and the admin listener")
    run.add_argument("--config", "-c", required=True, help="declarative configuration (kong.yml format)")
    run.add_argument("--listen", action="append", metavar="HOST:PORT",
                     help="proxy listener (repeatable; default 127.0.0.1:8000); an HTTPS listener "
                          "is given with --cert/--key or as 'HOST:PORT ssl'")
    run.add_argument("--admin-listen", metavar="HOST:PORT", help="admin/status listener (default 127.0.0.1:8001)")
    run.add_argument("--workers", type=int, help="worker processes (default: the number of cores)")
    run.add_argument("--cert", help="PEM certificate for HTTPS listeners")
    run.add_argument("--key", help="PEM private key for HTTPS listeners")
    run.add_argument("--settings", help="node settings file (YAML); GUICHET_* variables override it")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("--config", "-c", required=True)
    check.add_argument("--settings", help="node settings file (for its custom plugins)")

    usage = sub.add_parser("usage", help="show usage plans' quota use per consumer")
    usage.add_argument("--config", "-c", required=True)
    usage.add_argument("--settings", help="node settings file (its usage_store is read)")
    usage.add_argument("--consumer", help="only this consumer (username or id)")
    usage.add_argument("--json", action="store_true", help="machine-readable output")

    demo = sub.add_parser("demo", help="run the gateway on an example in front of a built-in upstream")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--admin-port", type=int, default=8001)
    return p


def _run(args: argparse.Namespace) -> int:
    from guichet.master import run_master
    from guichet.settings import load_settings

    listen = args.listen
    if listen and args.cert and not any(_is_tls(item) for item in listen):
        # --cert/--key with no listener marked: the listeners given are HTTPS ones.
        listen = [f"{item} ssl" for item in listen]
    overrides = {
        "listen": tuple(listen) if listen else None,
        "admin_listen": args.admin_listen,
        "workers": args.workers,
        "ssl_cert": args.cert,
        "ssl_cert_key": args.key,
    }
    try:
        settings = load_settings(args.settings, overrides)
    except ConfigError as exc:
        print(f"guichet: invalid settings:\n{exc}", file=sys.stderr)
        return 1
    settings = _with_usage_store(settings, args.config)
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s master %(levelname)s %(name)s: %(message)s")
    try:
        return run_master(settings, args.config, level)
    except ConfigError as exc:
        print(f"guichet: {args.config} is not valid:\n{exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"guichet: {exc}", file=sys.stderr)
        return 1


def _is_tls(listener: str) -> bool:
    return listener.startswith("https://") or "ssl" in listener.split()[1:]


def _check(args: argparse.Namespace) -> int:
    from guichet.config.loader import load_config_file
    from guichet.plugins.registry import PluginLoadError, Registry
    from guichet.settings import load_settings

    try:
        registry = Registry(load_settings(args.settings).plugins)
    except ConfigError as exc:
        print(f"guichet: invalid settings:\n{exc}", file=sys.stderr)
        return 1
    except PluginLoadError as exc:
        print(f"guichet: plugins setting: {exc}", file=sys.stderr)
        return 1
    try:
        config = load_config_file(args.config, plugin_schemas=registry.schemas())
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"{len(exc.issues)} error(s) in {args.config}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.config}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{args.config}: ok ({len(config.services)} services, {len(config.routes)} routes, "
          f"{len(config.upstreams)} upstreams, {len(config.consumers)} consumers, "
          f"{len(config.plugins)} plugins, hash {config.hash[:12]})")
    return 0


def _with_usage_store(settings: Any, config_path: str) -> Any:
    """A relative sqlite usage_store is relative to the declarative config's directory."""
    from guichet.quotas import resolve_store_url

    url = resolve_store_url(settings.usage_store, os.path.dirname(config_path) or ".")
    return settings.model_copy(update={"usage_store": url})


def _usage(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from guichet.config.loader import load_config_file
    from guichet.plugins.registry import PluginLoadError, Registry
    from guichet.quotas import QuotaStoreUnavailable, redact
    from guichet.quotas.usage import rows, table
    from guichet.settings import load_settings

    try:
        settings = _with_usage_store(load_settings(args.settings), args.config)
        registry = Registry(settings.plugins)
        config = load_config_file(args.config, plugin_schemas=registry.schemas())
    except ConfigError as exc:
        print(f"guichet: {exc}", file=sys.stderr)
        return 1
    except PluginLoadError as exc:
        print(f"guichet: plugins setting: {exc}", file=sys.stderr)
        return 1
    try:
        found = asyncio.run(rows(config, settings.usage_store, consumer=args.consumer,
                                 timeout=settings.usage_store_timeout))
    except QuotaStoreUnavailable as exc:
        print(f"guichet: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a store client's own error, shown redacted
        print(f"guichet: cannot read {redact(settings.usage_store)}: {type(exc).__name__}",
              file=sys.stderr)
        return 1
    if args.consumer is not None and not found:
        print(f"guichet: consumer '{args.consumer}' is in no usage plan", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(found))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "check":
        return _check(args)
    if args.command == "usage":
        return _usage(args)
    from guichet.demo import run_demo

    return run_demo(args.port, args.admin_port)
