"""Load-balancing internals: peers, the three Kong algorithms, resolver helpers.

The public entry points are :mod:`guichet.balancer` (``Balancer``, ``build_balancer``) and
:mod:`guichet.dns` (``Resolver``); the modules of this package are their building blocks:

- ``peers``: ``Peer``, ``Selection`` and the ``HashInput`` protocol;
- ``round_robin``, ``least_connections``, ``consistent_hashing``: one picker each;
- ``hashing``: turning a request into the value consistent hashing hashes;
- ``dns_files``: ``/etc/resolv.conf`` and hosts-file parsing;
- ``dns_query``: one question to the nameservers, classified (answer, not found, error).
"""
