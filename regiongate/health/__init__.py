"""What the gateway learns of its backends: active probes, scraped load, Prometheus metrics."""
