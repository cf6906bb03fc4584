"""docs/grafana/regiongate.json and deploy/prometheus/alerts.yaml cannot drift from what the gateway exports.

A real gateway (REST + gRPC, Redis, rate limits, one failing backend, one healthy HTTP and one simulated
backend) serves a few requests; its /metrics is scraped; every PromQL expression of every panel and
template variable is parsed (promql-parser) and walked: each metric it selects must be exported, each
label it filters, groups or matches by must be on that metric's samples, and the two sides of a binary
operation without on()/ignoring() must carry the same labels (otherwise the panel is silently empty)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import promql_parser as pq
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import scale as ss
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http, wait_until
from tests.support.worlds import http_backend

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "regiongate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
SYNTHETIC = {"up": set()}
LIMITED_ENV, LIMITED_KEY = (
    "RG_TEST_LIMITED_KEY",
    "rg-test-limited-key-0123456789",
)  # series Prometheus itself records per target
Exported = dict[str, set[str]]


def expressions(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows included) and every query variable."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for p in panels:
            for t in p.get("targets", []):
                yield p["title"], t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
            assert m, var["query"]
            yield f"variable {var['name']}", f"count by ({m.group(2)}) ({m.group(1)})"


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced the way Grafana does before the query reaches Prometheus."""
    return expr.replace("$__rate_interval", "1m").replace('"$region"', '".*"')


def labels_of(node: Any, exported: Exported, where: str) -> set[str]:
    """The labels on the series ``node`` yields; asserts every label it names exists below it."""
    if isinstance(node, pq.VectorSelector):
        assert node.name in exported, f"{where}: {node.name} is not exported by /metrics"
        have = exported[node.name] | TARGET_LABELS
        for m in node.matchers.matchers:
            assert m.name in have, f"{where}: {node.name} has no label '{m.name}' (has {sorted(have)})"
        return have
    if isinstance(node, pq.MatrixSelector):
        return labels_of(node.vector_selector, exported, where)
    if isinstance(node, pq.ParenExpr | pq.UnaryExpr | pq.SubqueryExpr):
        return labels_of(node.expr, exported, where)
    if isinstance(node, pq.NumberLiteral | pq.StringLiteral):
        return set()
    if isinstance(node, pq.Call):
        vectors = [labels_of(a, exported, where) for a in node.args]
        have = max(vectors, key=len, default=set())
        if node.func.name == "histogram_quantile":
            assert "le" in have, f"{where}: histogram_quantile over series without 'le'"
            return have - {"le"}
        return have
    if isinstance(node, pq.AggregateExpr):
        inner = labels_of(node.expr, exported, where)
        if node.modifier is None:
            return set()
        named = set(node.modifier.labels)
        assert named <= inner, (
            f"{where}: {node.op} by/without {sorted(named - inner)}: not on {sorted(inner)}"
        )
        return named if node.modifier.type == pq.AggModifierType.By else inner - named
    if isinstance(node, pq.BinaryExpr):
        lhs, rhs = labels_of(node.lhs, exported, where), labels_of(node.rhs, exported, where)
        scalar = isinstance(node.lhs, pq.NumberLiteral) or isinstance(node.rhs, pq.NumberLiteral)
        matching = node.modifier.matching if node.modifier is not None else None
        if matching is not None:
            on = set(matching.labels)
            if matching.type == pq.LabelModifierType.Include:
                assert on <= lhs and on <= rhs, f"{where}: on({sorted(on)}) not on both sides"
        elif not scalar:
            assert lhs == rhs, f"{where}: sides carry different labels {sorted(lhs)} vs {sorted(rhs)}"
        return lhs if not isinstance(node.lhs, pq.NumberLiteral) else rhs
    raise AssertionError(f"{where}: unhandled PromQL node {type(node).__name__}")


def alert_expressions() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["alert"], rule["expr"]


def check(exprs: Iterator[tuple[str, str]], exported: Exported) -> int:
    n = 0
    known = {**exported, **SYNTHETIC}
    for where, expr in exprs:
        tree = pq.parse(grafana_to_promql(expr))
        labels_of(tree, known, f"{where}: {expr}")
        n += 1
    return n


def check_dashboard(dash: dict[str, Any], exported: Exported) -> int:
    return check(expressions(dash), exported)


def scrape(url: str) -> Exported:
    out: Exported = {}
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def _world(failing: str, healthy: str, redis: str) -> str:
    return ss.world(
        {
            "us-east-1": [http_backend(failing)],
            "us-west-2": [http_backend(healthy)],
            "eu-west-1": [ss.FAST_SIM],
        },
        gateway='base_domains = ["api.regiongate.test"]',
        extra="\n".join(
            [
                ss.shared_section(redis, ss.unique_prefix()),
                # A prompt larger than this team's tokens-per-minute limit is refused whatever the clock says.
                "[[teams]]",
                'name = "limited"',
                f'keys = [{{ id = "limited", env = "{LIMITED_ENV}" }}]',
                "[limits.teams.limited]",
                "team = { tokens_per_minute = 10 }",
                "[load]",
                "scrape_interval_s = 0.2",
                "[health]",
                "probe_interval_s = 0.2",
                "consecutive_failures = 2",
            ]
        ),
    )


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exported]:
    # Module scope: one gateway for all the tests here; built by hand since the shared fixtures are per test.
    tmp = tmp_path_factory.mktemp("dash")
    redis = ss.shared_redis()
    procs: list[Proc] = []
    try:
        for i, mode in enumerate(("error500", "ok")):
            port = free_port()
            log = tmp / f"sim-{i}.log"
            region = ("us-east-1", "us-west-2")[i]
            args = ["sim-backend", "--region", region, "--port", str(port), "--mode", mode]
            p = Proc(spawn([*args, "--model", "grok-4", "--ttft-ms", "1"], log), port, log)
            procs.append(p)
            wait_http(p.url + "/health", p.proc, log=log)
        cfg = tmp / "gateway.toml"
        cfg.write_text(_world(procs[0].url + "/v1", procs[1].url + "/v1", redis))
        port = free_port()
        log = tmp / "gateway.log"
        cmd = ["serve", "--config", str(cfg), "--port", str(port), "--grpc-port", str(free_port())]
        env = {
            "REGIONGATE_DEMO_API_KEY": DEMO_KEY,
            LIMITED_ENV: LIMITED_KEY,
            "REGIONGATE_DATA_DIR": str(tmp / "data"),
        }
        gw = Proc(spawn(cmd, log, env), port, log)
        procs.append(gw)
        wait_http(gw.url + "/readyz", gw.proc, log=log)
        msg: Any = [{"role": "user", "content": "hi"}]

        def client(host: str, key: str = DEMO_KEY) -> openai.OpenAI:
            return openai.OpenAI(
                base_url=gw.url + "/v1", api_key=key, max_retries=0, default_headers={"Host": host}
            )

        for _ in range(3):
            for _chunk in client("api.regiongate.test").chat.completions.create(
                model="grok-4", messages=msg, stream=True
            ):
                pass
        for _ in range(2):  # us-east-1's only backend answers 500: refused, counted, then ejected
            with pytest.raises(openai.InternalServerError):
                client("us-east-1.api.regiongate.test").chat.completions.create(model="grok-4", messages=msg)
        for _ in range(3):
            client("eu-west-1.api.regiongate.test").chat.completions.create(
                model="grok-4", messages=msg, max_tokens=4
            )
        big: Any = [{"role": "user", "content": "tell me about load balancers " * 20}]
        with pytest.raises(openai.RateLimitError):  # more prompt tokens than the team's whole minute
            client("api.regiongate.test", LIMITED_KEY).chat.completions.create(model="grok-4", messages=big)

        def complete() -> bool:
            return "regiongate_backend_rtt_ms" in scrape(gw.url)

        wait_until(complete, timeout=60, what="probe round trips in /metrics")
        yield scrape(gw.url)
    finally:
        for p in procs:
            p.stop()


def test_every_dashboard_query_uses_exported_metrics_and_labels(exported: Exported) -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert check_dashboard(dash, exported) >= 30
    # The families the issue names are on the dashboard at all.
    text = DASHBOARD.read_text()
    for name in (
        "regiongate_requests_total",
        "regiongate_upstream_failures_total",
        "regiongate_capacity_in_use",
        "regiongate_ttft_seconds_bucket",
        "regiongate_refusals_total",
        "regiongate_backend_ejected",
        "regiongate_shared_state_up",
    ):
        assert name in text


def test_every_alert_uses_exported_metrics_and_labels(exported: Exported) -> None:
    assert check(alert_expressions(), exported) >= 10


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("regiongate_upstream_failures_total", "regiongate_upstream_failure_total", "not exported"),
        (
            "sum by (region, backend) (rate(regiongate_upstream",
            "sum by (zone) (rate(regiongate_upstream",
            "zone",
        ),
        ('regiongate_refusals_total{code="rate', 'regiongate_refusals_total{team="rate', "no label 'team'"),
        (
            "/ max by (model, region) (regiongate_capacity_limit",
            "/ max by (model) (regiongate_capacity_limit",
            "different labels",
        ),
    ],
)
def test_the_check_catches_a_drifted_dashboard(exported: Exported, old: str, new: str, why: str) -> None:
    dash = json.loads(DASHBOARD.read_text())
    targets = [t for p in dash["panels"] for t in p.get("targets", []) if old in t["expr"]]
    assert targets, old
    targets[0]["expr"] = targets[0]["expr"].replace(old, new, 1)
    with pytest.raises(AssertionError, match=why):
        check_dashboard(dash, exported)


def test_dashboard_is_importable_as_is() -> None:
    """What Grafana's import needs without editing: no __inputs placeholders, a datasource variable that
    every query uses, unique panel ids, and panels laid out on the 24-column grid."""
    dash = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dash and dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    ids: list[int] = []
    for p in dash["panels"]:
        ids.append(p["id"])
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["datasource"] == p["datasource"] for t in p["targets"])
    assert len(ids) == len(set(ids))


def test_the_docs_show_the_alert_rules() -> None:
    """docs/production.md's alert table is the rule file's, expression for expression."""
    doc = (ROOT / "docs" / "production.md").read_text().replace("\\|", "|")
    for name, expr in alert_expressions():
        assert f"| {name} |" in doc and f"`{expr}`" in doc, name
