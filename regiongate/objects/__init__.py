"""Stored objects with a residency: deferred completions and stored responses, each kept in the store of
the region that processed it (``store``), addressed by an id that names that region (``ids``)."""
