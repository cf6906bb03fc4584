"""Hot reload: SIGHUP (or ``regiongate reload``) re-reads the config file and swaps it in.

A new config is validated first; an invalid one is rejected with its error logged and the running
config keeps serving. A valid one is applied in one step on the event loop (no await in between, so no
request sees half of it): a new fleet is built and swapped into the gateway. Requests already in flight
keep the deployment and backend objects they started with and finish on them. A backend whose spec did
not change is carried over as the same object (its connections, in-flight count, health and RTT kept);
one that was removed or changed is closed once its last request has ended.

``[shared]`` (the Redis URL and key prefix) and the listeners cannot change while running: a reload
keeps the running values and logs that a restart is needed for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from regiongate.app.logs import register_secrets
from regiongate.app.runtime import Runtime, build_fleet, build_keys
from regiongate.app.scaleout import fit_fleet
from regiongate.config import Config, ConfigError, HttpBackend, SimulatedBackend, load_config
from regiongate.pipeline.auth import StaticKeys, hash_key
from regiongate.pipeline.hedge import hedge_policy
from regiongate.state.fleet import Backend, Fleet

log = logging.getLogger("regiongate.reload")


def _specs(cfg: Config) -> dict[str, object]:
    """Backend id -> everything that shapes its upstream (ids as ``runtime.build_fleet`` makes them)."""
    out: dict[str, object] = {}
    for d in cfg.deployments:
        for model in d.models:
            for i, spec in enumerate(d.backends):
                shape: object = d.limit if isinstance(spec, SimulatedBackend) else None
                if isinstance(spec, HttpBackend) and spec.timeouts is None:
                    shape = cfg.timeouts
                out[f"{d.region}/{model}/{spec.id or i}"] = (spec, shape)
    return out


def _carry(old: Fleet, new: Fleet, old_cfg: Config, new_cfg: Config) -> list[Backend]:
    """Reuse unchanged backends and measured TTFTs; return the old backends to retire."""
    before, after = _specs(old_cfg), _specs(new_cfg)
    kept: set[str] = set()
    for d in new.deployments.values():
        prev = old.deployments.get((d.model, d.region))
        if prev is not None:
            d.ttft = prev.ttft
        for i, b in enumerate(d.backends):
            ob = old.backends.get(b.id)
            if ob is not None and before.get(b.id) == after.get(b.id):
                d.backends[i] = ob
                new.backends[b.id] = ob
                kept.add(b.id)
    return [b for bid, b in old.backends.items() if bid not in kept]


async def _retire(backends: list[Backend], deadline_s: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    # Polled: in-flight counts are plain integers with no event to wait on; a retirement is rare.
    while any(b.in_flight for b in backends) and loop.time() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    for b in backends:
        await b.upstream.aclose()


def _keys(rt: Runtime, cfg: Config) -> StaticKeys:
    """The config's keys again (a control-plane store refreshes its own)."""
    keys, generated = build_keys(cfg)
    # A key generated at start-up was shown once; keep accepting it rather than minting a new one.
    for t in cfg.teams:
        old = rt.generated_keys.get(t.name)
        if t.name in generated and old:
            fresh = keys.by_hash(hash_key(generated[t.name]))  # the new one's principal: same team, grants
            if fresh is not None:
                keys.add(hash_key(old), fresh)
    return keys


def apply(rt: Runtime, cfg: Config) -> None:
    """Swap ``cfg`` into a running runtime (validated already)."""
    old_cfg = rt.config
    if cfg.shared != old_cfg.shared:
        log.warning("[shared] changed: it applies after a restart; the running [shared] is kept")
        cfg = cfg.model_copy(update={"shared": old_cfg.shared})
    old = rt.fleet
    new = build_fleet(cfg, old.capacity)
    retired = _carry(old, new, old_cfg, cfg)
    in_force = rt.in_force(cfg, new, _keys(rt, cfg))
    # From here on nothing awaits: the swap is atomic for every request on this loop.
    fit_fleet(new, cfg, rt.shared)  # per-worker limits, outlier thresholds, rate-limit table
    if rt.control is not None:
        rt.control.reconfigure(cfg)  # teams and grants for the admin operations, zones for receipts
    rt.live.swap(in_force)  # the one reference: config, fleet and keys are read through it
    rt.gateway.hedging = hedge_policy(cfg.hedging)  # the next request's first byte is hedged (or not) by it
    if retired:
        task = asyncio.get_running_loop().create_task(_retire(retired, cfg.timeouts.total_s + 5))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


_tasks: set[asyncio.Task[None]] = set()  # retirements in progress (kept referenced until done)


def reload_from(rt: Runtime, path: str | os.PathLike[str]) -> bool:
    """Load ``path`` and apply it; False (old config kept) when it is invalid."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        log.error("config reload rejected; the running config keeps serving", extra={"error": str(e)})
        return False
    register_secrets(cfg, os.environ)  # before anything of the new config can be logged
    try:
        apply(rt, cfg)
    except Exception as e:  # a config that validates but cannot be built (nothing was swapped in)
        log.error(
            "config reload rejected; the running config keeps serving",
            extra={"error": f"{path}: {type(e).__name__}: {e}"},
        )
        return False
    deps = sum(len(d.models) for d in cfg.deployments)
    log.info("config reloaded", extra={"regions": len(cfg.regions), "deployments": deps, "path": str(path)})
    return True


def install_sighup(rt: Runtime, path: str | None) -> None:
    """Reload from ``path`` on SIGHUP (the demo world, with no file, cannot change)."""
    loop = asyncio.get_running_loop()
    if path is None:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("SIGHUP ignored: serving the built-in demo config")
        )
        return
    loop.add_signal_handler(signal.SIGHUP, reload_from, rt, path)


def signal_reload(pid_file: str | os.PathLike[str]) -> int:
    """Send SIGHUP to the gateway whose pid is in ``pid_file``; returns that pid."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read a pid from {pid_file}: {e}") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise RuntimeError(f"no process {pid} (from {pid_file}): is the gateway running?") from None
    return pid
