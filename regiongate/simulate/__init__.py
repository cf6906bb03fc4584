"""``regiongate simulate``: a discrete-event simulation of a day of global traffic, routed by the same
pure policy the gateway runs (``regiongate.core.policy.decide``) and by baselines, on one trace.

scenario (TOML) -> traffic (metros, diurnal curve, mixes) -> engine (one per policy: fleet state,
snapshots, the policy per request, events) -> stats (fixed-size) -> report (markdown, PNG charts).
"""
