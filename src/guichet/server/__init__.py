"""The data plane: client connections, the proxy exchange, upstream pools, tunnels."""
