"""One module per peer system bench/peers.py runs: each builds that system's app from $REDIS_URL
with its default settings and registers the two jobs of bench/peer_mark.py. A worker imports only
its own system's module."""
