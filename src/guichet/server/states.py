"""The states of an exchange (see the diagram in ``guichet.server.exchange``)."""

HEAD, QUEUED, CONNECTING, SENT, RESPONDING, DONE = range(6)
