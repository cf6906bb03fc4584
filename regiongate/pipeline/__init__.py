"""One request between a listener and an upstream: caller, auth, limits, failover, SSE, receipts, usage."""
