"""Child processes Parley starts when nothing external is configured: Redis and llama-server."""
