"""The declarative configuration: Kong 3.x ``kong.yml`` in, a frozen ``Config`` out.

Entry points: ``guichet.config.loader.load_config_file`` and ``load_config_text``; the
result is described in ``guichet.config.model``. The modules, in pipeline order:

* ``yamlmarks``  YAML/JSON parsed into plain values plus the line and column of each one.
* ``migrate``    ``_format_version`` 1.1 and 2.1 brought to 3.0 (route regex paths).
* ``schema``     the entities as pydantic models; ``rules`` their field rules, ``pcre``
  Kong's regex syntax, ``checks`` the rules relating several fields.
* ``walker``     every entity validated in file order; ``report`` locates each issue.
* ``references`` ids, uniqueness and references between entities.
* ``build``      the normalised, flat ``Config``.

The reference for users is ``docs/configuration.md``.
"""
