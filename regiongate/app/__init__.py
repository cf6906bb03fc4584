"""The composition root: runtime, serve, reload, command line, logs."""
