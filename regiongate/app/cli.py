"""The ``regiongate`` command."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from regiongate.config import Config, ConfigError, load_config


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU quota
    (a container's ``cpu.max``), at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(n, 1)


def workers_arg(text: str) -> int:
    if text == "auto":
        return available_cpus()
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1 worker")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    from regiongate.app.serve import ServeOptions, serve
    from regiongate.app.sockets import PortInUse

    if bool(args.tls_cert) != bool(args.tls_key):
        print("regiongate: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    opts = ServeOptions(
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        access_log=args.access_log,
        log_level=args.log_level,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        config_path=args.config,
        pid_file=args.pid_file,
        region_ports=None if args.region_ports is None else args.region_ports or args.port + 1,
        admin_listen=args.admin_listen,
        listen=args.listen,
    )
    if args.admin_listen:
        from regiongate.app.sites import split_listen

        try:
            split_listen(args.admin_listen)
        except ValueError as e:
            print(f"regiongate: {e}", file=sys.stderr)
            return 2
    try:
        serve(_config(args.config), opts)
    except PortInUse as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from regiongate.app.reload import signal_reload

    if args.config:
        _config(args.config)  # refuse an invalid file here, with its errors, before signalling
    try:
        pid = signal_reload(args.pid_file)
    except RuntimeError as e:
        print(f"regiongate: {e}", file=sys.stderr)
        return 1
    print(f"regiongate: sent SIGHUP to {pid}; the gateway logs 'config reloaded' or why it kept the old one")
    return 0


def cmd_sim_backend(args: argparse.Namespace) -> int:
    import uvicorn

    from regiongate.upstream.sim_server import SimServer
    from regiongate.upstream.simulated import SimulatedEngine

    engine = SimulatedEngine(
        f"sim-{args.region}",
        args.region,
        args.region_name or args.region,
        ttft_ms=args.ttft_ms,
        tokens_per_s=args.tokens_per_s,
        slots=args.slots,
        rtt_ms=args.rtt_ms,
    )
    app = SimServer(engine, args.model or [], args.mode, hold=args.hold)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _config(args.config)
    deps = sum(len(d.models) for d in cfg.deployments)
    print(f"ok: {len(cfg.regions)} regions, {deps} deployments, {len(cfg.teams)} teams")
    return 0


def cmd_route_explain(args: argparse.Namespace) -> int:
    from regiongate.app.explain import explain

    cfg = _config(args.config)
    try:
        text, refused = explain(
            cfg,
            args.model,
            args.origin,
            args.endpoint,
            client_ip=args.client_ip,
            live=args.measure,
            prompt_tokens=args.prompt_tokens,
            tier=args.tier,
            affinity=args.affinity,
        )
    except ValueError as e:
        print(f"regiongate: {e}", file=sys.stderr)
        return 2
    print(text)
    return 1 if refused else 0  # scripts can tell "would be refused" from "would be served"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="regiongate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve",
        help="run the gateway (REST and gRPC listeners)",
        description="Run the gateway: the OpenAI-compatible REST API and the xAI gRPC API.",
    )
    s.add_argument("--config", help="TOML config file (default: the demo world shipped in the package)")
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the listeners bind (default: %(default)s; 0.0.0.0 for every interface)",
    )
    s.add_argument(
        "--port",
        type=int,
        default=8000,
        help="REST port, endpoint chosen by the Host header (default: %(default)s)",
    )
    s.add_argument(
        "--grpc-port", type=int, default=50051, help="gRPC port, 0 disables it (default: %(default)s)"
    )
    s.add_argument(
        "--workers",
        type=workers_arg,
        default=1,
        help="processes sharing the ports (SO_REUSEPORT), one event loop each; 'auto': one per CPU this "
        "process may use, the production default (default: %(default)s)",
    )
    s.add_argument(
        "--region-ports",
        type=int,
        nargs="?",
        const=0,
        metavar="FIRST",
        help="also serve each regional and zone endpoint on its own port, from FIRST (default: --port + 1) "
        "up, printed at start; the port fixes the endpoint, whatever the Host header says",
    )
    s.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="serve REST (HTTP/1.1, HTTP/2) and gRPC on this one port (:PORT for every IPv4 address), instead "
        "of --port and --grpc-port; with --tls-cert: TLS with ALPN h2 and http/1.1, else cleartext h2c and HTTP/1.1",
    )
    s.add_argument("--tls-cert", help="PEM certificate (with --tls-key): serve REST and gRPC over TLS")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert")
    s.add_argument("--access-log", action="store_true", help="one JSON line per request (no bodies)")
    s.add_argument("--log-level", default="info", help="debug, info, warning or error (default: %(default)s)")
    s.add_argument("--pid-file", help="write the server's pid here (for `regiongate reload`)")
    s.add_argument(
        "--admin-listen",
        metavar="HOST:PORT",
        help="serve the admin API and /metrics on this address only (not on the public port)",
    )
    s.set_defaults(func=cmd_serve)

    rl = sub.add_parser("reload", help="make a running gateway re-read its config file (SIGHUP)")
    rl.add_argument("--pid-file", required=True, help="the --pid-file the gateway was started with")
    rl.add_argument("--config", help="validate this file first and do nothing if it is invalid")
    rl.set_defaults(func=cmd_reload)

    b = sub.add_parser("sim-backend", help="serve one simulated regional cluster over OpenAI-compatible HTTP")
    b.add_argument("--region", required=True)
    b.add_argument("--region-name")
    b.add_argument("--model", action="append", help="model names to list (repeatable)")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=9000)
    b.add_argument("--ttft-ms", type=float, default=80.0)
    b.add_argument("--tokens-per-s", type=float, default=100.0)
    b.add_argument("--slots", type=int, default=8)
    b.add_argument("--rtt-ms", type=float, default=0.0)
    b.add_argument(
        "--mode", default="ok", choices=["ok", "hang", "error500", "garbage", "hang-stream", "stall-stream"]
    )
    b.add_argument(
        "--hold", action="store_true", help="hold requests before their first byte until POST /sim/release"
    )
    b.set_defaults(func=cmd_sim_backend)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("--config")
    c.set_defaults(func=cmd_check_config)

    r = sub.add_parser("route", help="routing tools")
    rsub = r.add_subparsers(dest="route_command", required=True)
    e = rsub.add_parser("explain", help="print the ranked plan for a model from a place")
    e.add_argument("--model", required=True)
    e.add_argument("--from", dest="origin", help="client location LAT,LON (default: the gateway's)")
    e.add_argument(
        "--endpoint", default="localhost", help="host the client addresses, e.g. us-east-1.localhost"
    )
    e.add_argument("--client-ip", help="locate the client with [gateway].geoip_database")
    e.add_argument(
        "--prompt-tokens",
        type=int,
        default=0,
        help="the request's prompt length: its own prefill is predicted",
    )
    e.add_argument(
        "--measure", action="store_true", help="probe the HTTP backends and read their load metrics first"
    )
    e.add_argument("--tier", choices=["default", "flex", "priority"], default="default", help="service tier")
    e.add_argument(
        "--affinity",
        metavar="REGION[:TOKENS]",
        help="the region that served this request's prefix (and how many tokens of it): prompt-cache affinity",
    )
    e.add_argument("--config")
    e.set_defaults(func=cmd_route_explain)
    from regiongate.control.cli import register as register_control

    register_control(sub)  # teams, keys, models, usage, receipt
    from regiongate.simulate.command import register as register_simulate

    register_simulate(sub)  # simulate: a day of global traffic through the policy
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
