"""Live state behind small interfaces: the fleet, capacity (in process and Redis), outlier, TTFT."""
