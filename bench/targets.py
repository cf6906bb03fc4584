"""The processes a benchmark run starts: the fake upstream and each proxy in front of it (regiongate,
nginx, LiteLLM), and what /proc says about them (CPU time, peak RSS) over their whole process tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "sk-bench-0123456789abcdef"
MODELS = ("bench-0ms", "bench-50ms")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LITELLM_ENV = "REGIONGATE_BENCH_LITELLM"  # path of a `litellm` executable (default: /tmp/litellm-venv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers, the multiprocessing resource tracker, ...)."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process (/proc/<pid>/stat fields 14 and 15), summed."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def peak_rss_mb(pids: list[int]) -> tuple[float, float]:
    """(largest VmHWM of one process, sum of VmHWM) in MiB: per worker and for the whole proxy."""
    peaks = []
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) / 1024.0)
                        break
        except OSError:
            continue
    return (max(peaks), sum(peaks)) if peaks else (0.0, 0.0)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up within {timeout:g}s:\n{log.read_text()[-3000:]}")


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    proxy: bool = True  # False for the upstream itself (the limit)
    note: str = ""
    pids: list[int] = field(default_factory=list)
    redis: Redis | None = None  # the Redis this target keeps its shared state in
    grpc_port: int = 0  # its gRPC listener (regiongate only)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def refresh(self) -> None:
        if self.proc is not None:
            self.pids = tree(self.proc.pid)

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            for pid in reversed(tree(p.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            p.wait(5)


def spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cpus: str | None = None
) -> subprocess.Popen[bytes]:
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT
        )


def start_upstream(work: Path, gap: str, cpus: str | None) -> Target:
    port = free_port()
    log = work / "upstream.log"
    cmd = [sys.executable, "-m", "bench.upstream", "--port", str(port), "--gap", gap]
    t = Target("direct", port, spawn(cmd, log, cpus=cpus), log, proxy=False, note="fake upstream, no proxy")
    wait_ready(f"http://127.0.0.1:{port}/health", t.proc, log, 15)  # type: ignore[arg-type]
    return t


@dataclass
class Redis:
    """A private redis-server for the production-configuration rows: its command counters
    (``INFO commandstats``) then count only what the gateway under test sent."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def counts(self) -> tuple[int, int]:
        """(commands executed, counting those run inside Lua scripts; scripts called)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"INFO commandstats\r\n")
            data = b""
            while not data.endswith(b"\r\n\r\n") and len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        total = scripts = 0
        for line in data.decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line.partition(":")
                calls = int(rest.split(",")[0].split("=")[1])
                if name in ("cmdstat_info",):
                    continue
                total += calls
                if name in ("cmdstat_evalsha", "cmdstat_eval"):
                    scripts += calls
        return total, scripts

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def redis_path() -> str | None:
    return shutil.which("redis-server")


def start_redis(work: Path, cpus: str | None) -> Redis:
    exe = redis_path()
    assert exe is not None
    port = free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = spawn(cmd, work / "redis.log", cpus=cpus)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return Redis(port, proc)
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"redis-server did not come up on port {port}")


# The demo world's geography (6 regions, 3 zones), every deployment an http backend on the fake upstream:
# each request takes the whole routing path (key lookup, Host -> endpoint, policy ranking 6 regions,
# capacity lease, upstream call, usage record, receipt) with the defaults of a plain config.
REGIONS = {
    "us-east-1": (39.04, -77.49, "us"),
    "us-west-2": (45.84, -119.70, "us"),
    "eu-west-1": (53.35, -6.26, "eu"),
    "eu-central-1": (50.11, 8.68, "eu"),
    "ap-northeast-1": (35.68, 139.69, "apac"),
    "ap-southeast-2": (-33.87, 151.21, "apac"),
}


def regiongate_toml(upstream: int, models: tuple[str, ...] = MODELS, redis: str | None = None) -> str:
    out = ["[gateway]", "lat = 39.04", "lon = -77.49", "", "[control]", "console = false", ""]
    if redis is not None:  # the production configuration: leases and a team rate limit in Redis
        # A loaded 2-core box can stall a reply past the 250 ms production default: the run must not take
        # that for an outage (it would go on in fail-open, without Redis).
        out += ["[shared]", f'redis = "{redis}"', 'key_prefix = "bench:"', "timeout_ms = 5000", ""]
        out += ["[limits.team]", "requests_per_minute = 1000000000", ""]  # taken on every request, never binds
    for rid, (lat, lon, zone) in REGIONS.items():
        out += ["[[regions]]", f'id = "{rid}"', f"lat = {lat}", f"lon = {lon}", f'zone = "{zone}"', ""]
    names = ", ".join(f'"{m}"' for m in models)
    for rid in REGIONS:
        out += [
            "[[deployments]]",
            f'region = "{rid}"',
            f"models = [{names}]",
            "limit = 1000000",  # never refuses: the lease is taken and released, the limit never binds
            f'backends = [{{ kind = "http", url = "http://127.0.0.1:{upstream}/v1" }}]',
            "",
        ]
    out += ["[[teams]]", 'name = "bench"', 'keys = [{ id = "bench", env = "REGIONGATE_BENCH_KEY" }]', ""]
    return "\n".join(out)


def start_regiongate(
    work: Path,
    upstream: int,
    workers: int,
    cpus: str | None,
    extra: list[str],
    redis: Redis | None = None,
    ready_s: float = 60.0,
) -> Target:
    port = free_port()
    name = f"regiongate-w{workers}" + ("-redis" if redis else "")
    cfg = work / f"{name}.toml"
    cfg.write_text(regiongate_toml(upstream, redis=redis.url if redis else None))
    log = work / f"{name}.log"
    data = work / f"rg-data-{name}"
    data.mkdir(exist_ok=True)
    exe = shutil.which("regiongate", path=str(Path(sys.executable).parent)) or "regiongate"
    grpc = free_port()
    cmd = [exe, "serve", "--config", str(cfg), "--port", str(port), "--grpc-port", str(grpc)]
    cmd += ["--workers", str(workers), "--log-level", "warning", *extra]
    env = {"REGIONGATE_BENCH_KEY": BENCH_KEY, "REGIONGATE_DATA_DIR": str(data)}
    note = f"--workers {workers}" + (", [shared] redis + team rate limit" if redis else "")
    t = Target(name, port, spawn(cmd, log, env, cpus), log, note=note)
    t.redis = redis
    t.grpc_port = grpc
    wait_ready(f"http://127.0.0.1:{port}/healthz", t.proc, log, ready_s)  # type: ignore[arg-type]
    if workers > 1:  # every worker must be listening before load starts, or one takes it all
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(tree(t.proc.pid)) < workers + 1:  # type: ignore[union-attr]
            time.sleep(0.1)
        time.sleep(1.0)
    return t


NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  upstream fake {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def nginx_path() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def start_nginx(work: Path, upstream: int, cpus: str | None, workers: int = 1) -> Target:
    exe = nginx_path()
    assert exe is not None
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, work=work, up=upstream, port=port))
    log = work / "nginx.log"
    t = Target("nginx", port, spawn([exe, "-c", str(conf), "-p", str(work)], log, cpus=cpus), log)
    t.note = f"proxy_pass, {workers} worker, keepalive upstream"
    wait_ready(f"http://127.0.0.1:{port}/health", t.proc, log, 15)  # type: ignore[arg-type]
    return t


LITELLM_YAML = """\
model_list:
{entries}
general_settings:
  master_key: {key}
litellm_settings:
  drop_params: true
"""


def litellm_path() -> str | None:
    env = os.environ.get(LITELLM_ENV)
    for cand in (env, "/tmp/litellm-venv/bin/litellm", shutil.which("litellm")):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def start_litellm(work: Path, upstream: int, cpus: str | None, workers: int = 1) -> Target:
    exe = litellm_path()
    assert exe is not None
    port = free_port()
    entries = "\n".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n      api_key: sk-fake"
        for m in MODELS
    )
    cfg = work / "litellm.yaml"
    cfg.write_text(LITELLM_YAML.format(entries=entries, key=BENCH_KEY))
    log = work / f"litellm-w{workers}.log"
    cmd = [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", str(workers)]
    env = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"}
    t = Target(f"litellm-w{workers}", port, spawn(cmd, log, env, cpus), log, note=f"{workers} worker")
    wait_ready(f"http://127.0.0.1:{port}/health/liveliness", t.proc, log, 180)  # type: ignore[arg-type]
    return t
