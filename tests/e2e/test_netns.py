"""Measured round trips beat geography, across real network namespaces with real added delay.

Two simulated regional backends run in network namespaces of their own, each behind a veth pair with a
private /30 used only between this machine and that namespace. The geographically nearest region to the
Ashburn gateway, us-east-1, sits behind 150 ms; us-west-2, farther away, behind 20 ms. Once the probes have
measured both, the global endpoint serves from us-west-2; when its delay is raised at run time to 400 ms,
routing moves back to us-east-1.

The delay is ``tc qdisc ... netem delay`` when the kernel has netem; a kernel built without it (this
project's CI VMs have no ``sch_netem``) gets the same effect from ``tests/netdelay.py``, which holds every
packet the namespace receives for the delay via an iptables NFQUEUE rule inside that namespace. Either
way it is kernel-path delay on the namespace's packets, changed while the test runs.

Needs root and iproute2 (``.ci/run`` installs iproute2 and iptables): skipped without them on a developer
machine, a failure under CI. Only the namespaces and links this test creates (random suffix) are touched,
and they are removed at the end whatever happens.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.procs import DEMO_KEY, Proc, need, sh
from tests.support.worlds import http_backend, world

pytestmark = pytest.mark.timeout(180)
HERE = Path(__file__).parent
PORT = 8000
MSG = [{"role": "user", "content": "Which region is fastest from here?"}]


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = []
    for what in ("addr", "route"):
        for item in json.loads(sh("ip", "-j", "-4", what).stdout or "[]"):
            for a in item.get("addr_info", []):
                out.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
            dst = item.get("dst")
            if dst and dst != "default":
                out.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    return out


def _free_slash30() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(100):
        net = ipaddress.ip_network(
            f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30"
        )
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free private /30 found")


@dataclass
class Host:
    """One namespace with a veth pair to this machine and a delay on what it sends."""

    ns: str
    outer: str  # veth end in the root namespace
    inner: str  # veth end inside the namespace
    gateway_addr: str  # ours, on the /30
    addr: str  # the namespace's, on the /30
    delay_file: Path
    mechanism: str = ""


@dataclass
class NetLab:
    tmp: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def host(self, tag: str, delay_ms: float) -> Host:
        net = _free_slash30()
        ours, theirs = (str(a) for a in net.hosts())
        h = Host(
            f"rg-lat-{self.suffix}-{tag}",
            f"rgl{self.suffix}{tag[:3]}o",
            f"rgl{self.suffix}{tag[:3]}i",
            ours,
            theirs,
            self.tmp / f"{tag}.delay",
        )
        sh("ip", "netns", "add", h.ns)
        self.hosts.append(h)  # from here on teardown removes it
        sh("ip", "link", "add", h.outer, "type", "veth", "peer", "name", h.inner)
        sh("ip", "link", "set", h.inner, "netns", h.ns)
        sh("ip", "addr", "add", f"{ours}/30", "dev", h.outer)
        sh("ip", "link", "set", h.outer, "up")
        self.exec(h, "ip", "link", "set", "lo", "up")
        self.exec(h, "ip", "addr", "add", f"{theirs}/30", "dev", h.inner)
        self.exec(h, "ip", "link", "set", h.inner, "up")
        self._delay(h, delay_ms)
        return h

    def exec(self, h: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", h.ns, *args, check=check)

    def spawn(self, h: Host, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            p = subprocess.Popen(["ip", "netns", "exec", h.ns, *args], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def _delay(self, h: Host, ms: float) -> None:
        netem = self.exec(
            h, "tc", "qdisc", "add", "dev", h.inner, "root", "netem", "delay", f"{ms:g}ms", check=False
        )
        if netem.returncode == 0:
            h.mechanism = "netem"
            return
        # No netem in this kernel ("Specified qdisc kind is unknown"): hold packets in user space instead.
        need(
            shutil.which("iptables") is not None,
            f"netem unavailable ({netem.stderr.strip()}) and no iptables",
        )
        h.mechanism = "nfqueue"
        h.delay_file.write_text(f"{ms:g}")
        log = self.tmp / f"{h.ns}-delay.log"
        p = self.spawn(h, [sys.executable, str(HERE.parent / "support" / "netdelay.py"), "0", str(h.delay_file)], log)
        deadline = time.monotonic() + 15
        while "ready" not in log.read_text():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"packet delayer did not start: {log.read_text()}")
            time.sleep(0.02)
        # On what the namespace receives: held outgoing packets would still count against their socket's
        # TCP Small Queues budget and hold back the next segment, doubling the delay of a response.
        self.exec(
            h, "iptables", "-A", "INPUT", "-i", h.inner, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"
        )

    def set_delay(self, h: Host, ms: float) -> None:
        if h.mechanism == "netem":
            self.exec(h, "tc", "qdisc", "change", "dev", h.inner, "root", "netem", "delay", f"{ms:g}ms")
        else:
            tmp = h.delay_file.with_suffix(".new")
            tmp.write_text(f"{ms:g}")
            os.replace(tmp, h.delay_file)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for h in self.hosts:
            sh("ip", "link", "del", h.outer, check=False)  # takes its peer inside the namespace along
            sh("ip", "netns", "del", h.ns, check=False)


@pytest.fixture
def netlab(tmp_path: Path) -> Iterator[NetLab]:
    need(os.geteuid() == 0, "network namespaces need root")
    need(shutil.which("ip") is not None and shutil.which("tc") is not None, "iproute2 (ip, tc) is missing")
    probe = f"rg-lat-check-{secrets.token_hex(3)}"
    made = sh("ip", "netns", "add", probe, check=False)
    need(made.returncode == 0, f"'ip netns add' fails here: {made.stderr.strip()}")
    sh("ip", "netns", "del", probe)
    lab = NetLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        left = sh("ip", "netns", "list").stdout
        assert lab.suffix not in left, f"namespaces left behind: {left}"


def start_backend(lab: NetLab, h: Host, region: str) -> None:
    cmd = [sys.executable, "-m", "regiongate", "sim-backend", "--region", region, "--host", h.addr]
    cmd += ["--port", str(PORT), "--model", "grok-4", "--ttft-ms", "20", "--tokens-per-s", "2000"]
    lab.spawn(h, cmd, lab.tmp / f"{region}.log")


def wait_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.05)


def measured_rtt(gw: Proc) -> dict[str, float]:
    """region -> the gateway's smoothed probe RTT (regiongate_backend_rtt_ms), for the measured ones."""
    out = {}
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith("regiongate_backend_rtt_ms{"):
            region = line.split('region="', 1)[1].split('"', 1)[0]
            out[region] = float(line.rsplit(" ", 1)[1])
    return out


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ask(api: openai.OpenAI) -> tuple[str, dict[str, dict[str, object]]]:
    raw = api.chat.completions.with_raw_response.create(
        model="grok-4", messages=MSG, max_tokens=4, extra_headers={"x-regiongate-explain": "1"}
    )
    rows = {r["region"]: r for r in json.loads(raw.headers["x-regiongate-explain"])}
    return raw.headers["x-regiongate-region"], rows


def test_measured_rtt_beats_geography_and_follows_a_delay_change(
    netlab: NetLab, start_gateway: Callable[..., Proc]
) -> None:
    east = netlab.host("use1", 150)  # near Ashburn, slow path
    west = netlab.host("usw2", 20)  # ~3,700 km away, fast path
    start_backend(netlab, east, "us-east-1")
    start_backend(netlab, west, "us-west-2")
    for h in (east, west):
        wait_up(f"http://{h.addr}:{PORT}/health")
    print(f"delay by {east.mechanism}")

    cfg = world(
        {
            "us-east-1": [http_backend(f"http://{east.addr}:{PORT}/v1")],
            "us-west-2": [http_backend(f"http://{west.addr}:{PORT}/v1")],
        },
        probes=True,
        extra="\n[health]\nprobe_interval_s = 0.2\nrtt_halflife_s = 0.5\n\n[load]\nscrape_interval_s = 0.5\n",
    )
    gw = start_gateway(cfg)
    api = openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)

    # Probes see through the geography: both measured, the near region clearly the slower one.
    wait_for(
        "both round trips measured",
        lambda: (
            (r := measured_rtt(gw)).keys() >= {"us-east-1", "us-west-2"}
            and r["us-east-1"] - r["us-west-2"] > 80
        ),
    )
    print("measured before:", measured_rtt(gw))
    for _ in range(5):
        region, rows = ask(api)
        assert region == "us-west-2"
        assert rows["us-east-1"]["rtt_source"] == rows["us-west-2"]["rtt_source"] == "measured"
        assert float(rows["us-east-1"]["rtt_ms"]) >= 150  # type: ignore[arg-type]  # no faster than the delay
        assert 20 <= float(rows["us-west-2"]["rtt_ms"]) < float(rows["us-east-1"]["rtt_ms"])  # type: ignore[arg-type]

    # The fast path gets slow while we serve: routing follows the measurement back to the near region.
    netlab.set_delay(west, 400)
    wait_for("the raised delay measured", lambda: (r := measured_rtt(gw))["us-west-2"] - r["us-east-1"] > 150)
    print("measured after raising us-west-2:", measured_rtt(gw))
    moved = [ask(api)[0] for _ in range(3)]
    assert moved == ["us-east-1"] * 3
    region, rows = ask(api)
    assert region == "us-east-1" and str(rows["us-east-1"]["reason"]).startswith("rank 1 (nearest)")
    assert float(rows["us-west-2"]["rtt_ms"]) > float(rows["us-east-1"]["rtt_ms"])  # type: ignore[arg-type]
