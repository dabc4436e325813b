"""driftline services: the pure core, the runtime shell and each streaming service."""
