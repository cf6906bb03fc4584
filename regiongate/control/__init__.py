"""The control plane: teams, API keys, model grants, usage metering and the store behind them.

Nothing here is on a request's hot path: keys and grants are served from memory (``keys.CachedKeys``)
and usage is written in batches (``metering.BatchUsageWriter``). Import submodules directly; this
package's ``__init__`` stays empty so ``regiongate.config`` can import ``control.settings`` cheaply.
"""
