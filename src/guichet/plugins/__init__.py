"""guichet's plugin system: the API plugins are written against, and the bundled plugins.

What a plugin author imports::

    from guichet.plugins import Plugin, PluginConfig, Request, Response, ResponseHead, error

See ``docs/plugins/writing-plugins.md`` for the tutorial and ``guichet.plugins.api`` for
the rules of each phase.
"""

from guichet.plugins.api import PHASES, ErrorResponse, Plugin, PluginConfig, Response, error
from guichet.plugins.request import Request, ResponseHead

__all__ = ["PHASES", "ErrorResponse", "Plugin", "PluginConfig", "Request", "Response",
           "ResponseHead", "error"]
