"""The Responses API through the official OpenAI SDK: translation to chat completions for the simulated
engine, store / previous_response_id / retrieve / input_items / delete kept by regiongate in the region
that processed each response, streaming, the residency refusals, a restart between create and retrieve."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from regiongate.pipeline.receipts import unverified_claims
from tests.support.procs import DEMO_KEY, Proc, free_port, spawn, wait_http
from tests.support.worlds import DEMO_REGIONS, world

EU_KEY = "rg-test-eu-fenced-key-0123456789"
SHORT_KEY = "rg-test-no-retention-key-012345"
FAST = '{ kind = "simulated", ttft_ms = 5, tokens_per_s = 4000 }'
TWO = {r: DEMO_REGIONS[r] for r in ("us-east-1", "eu-west-1")}
TEAMS = """
[[teams]]
name = "eu-team"
keys = [{ id = "eu", env = "REGIONGATE_TEST_EU_KEY", zone = "eu" }]

[[teams]]
name = "keeps-nothing"
retention_s = 0
keys = [{ id = "short", env = "REGIONGATE_TEST_SHORT_KEY" }]

[[deployments]]
region = "eu-west-1"
models = ["slow-model"]
backends = [{ kind = "simulated", ttft_ms = 5, tokens_per_s = 2 }]
"""


def config(us_backend: str = FAST) -> str:
    backends = {"us-east-1": [us_backend], "eu-west-1": [FAST]}
    return world(backends, regions=TWO, gateway='base_domains = ["api.x.ai"]', extra=TEAMS)


class Gw:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "gateway.toml").write_text(config())
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> None:
        port = free_port()
        cmd = ["serve", "--config", str(self.tmp / "gateway.toml"), "--port", str(port), "--grpc-port", "0"]
        env = {
            "REGIONGATE_DEMO_API_KEY": DEMO_KEY,
            "REGIONGATE_TEST_EU_KEY": EU_KEY,
            "REGIONGATE_TEST_SHORT_KEY": SHORT_KEY,
            "REGIONGATE_DATA_DIR": str(self.tmp / "data"),
        }
        log = self.tmp / f"gateway-{self.starts}.log"
        self.starts += 1
        self.proc = Proc(spawn(cmd, log, env), port, log)
        wait_http(self.proc.url + "/healthz", self.proc.proc, log=log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def client(self, region: str | None = None, key: str = DEMO_KEY) -> OpenAI:
        assert self.proc is not None
        headers = {"Host": f"{region}.localhost"} if region else None  # what a regional DNS name sends
        return OpenAI(api_key=key, base_url=self.proc.url + "/v1", default_headers=headers, max_retries=0)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    g = Gw(tmp_path_factory.mktemp("responses"))
    g.start()
    try:
        yield g
    finally:
        g.stop()


@pytest.mark.parametrize(("region", "served"), [(None, "us-east-1"), ("eu-west-1", "eu-west-1")])
def test_create_translated_and_stored(gw: Gw, region: str | None, served: str) -> None:
    c = gw.client(region)
    raw = c.responses.with_raw_response.create(model="grok-4", input="What is the meaning of life?")
    r = raw.parse()
    assert r.id.startswith(f"resp_{served}_") and r.status == "completed"
    assert f"in {served} " in r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert raw.headers["x-regiongate-region"] == served
    claims = unverified_claims(raw.headers["x-regiongate-receipt"])
    assert (claims["object"], claims["region"], claims["stored"]) == (r.id, served, served)
    got = c.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    assert r.service_tier == got.service_tier == "default"  # the tier it ran at, kept with it


def test_without_store_nothing_is_kept(gw: Gw) -> None:
    c = gw.client()
    r = c.responses.create(model="grok-4", input="hi", store=False)
    assert r.store is False and r.output_text
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="grok-4", input="hi", previous_response_id=r.id)


def test_previous_response_id_chains_in_its_region(gw: Gw) -> None:
    c = gw.client()
    first = c.responses.create(model="grok-4", input="My name is Ada.", instructions="Be brief.")
    second = c.responses.create(model="grok-4", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.id.split("_")[1] == first.id.split("_")[1]
    items = c.responses.input_items.list(second.id)
    texts = [i.content[0].text if hasattr(i, "content") and i.content else "" for i in items.data]
    assert texts[0] == "What is my name?" and "My name is Ada." in texts
    # From another region's endpoint the chain does not exist: 404, no cross-region read.
    with pytest.raises(openai.NotFoundError):
        gw.client("eu-west-1").responses.create(model="grok-4", input="again", previous_response_id=first.id)
    with pytest.raises(openai.NotFoundError):
        gw.client("eu-west-1").responses.retrieve(first.id)
    # A key fenced to the EU cannot read a US response through the global endpoint either.
    with pytest.raises(openai.NotFoundError):
        gw.client(None, EU_KEY).responses.retrieve(first.id)


def test_delete_really_deletes(gw: Gw) -> None:
    c = gw.client("eu-west-1")
    r = c.responses.create(model="grok-4", input="forget me")
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        gw.client().responses.create(model="grok-4", input="x", previous_response_id=r.id)
    db = gw.tmp / "data" / "state" / "eu-west-1.db"
    assert b"forget me" not in db.read_bytes() + (
        db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists() else b""
    )


def test_streaming_events_and_store(gw: Gw) -> None:
    c = gw.client("eu-west-1")
    kinds, text, final = [], "", None
    with c.responses.stream(model="grok-4", input="Tell me about regions.") as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert {
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.done",
        "response.output_item.done",
    } <= set(kinds)
    assert final.id.startswith("resp_eu-west-1_") and final.output_text == text and "in eu-west-1 " in text
    assert final.usage is not None and final.usage.output_tokens > 0
    kept = c.responses.retrieve(final.id)
    assert kept.output_text == text and final.service_tier == kept.service_tier == "default"
    # create(stream=True) gives the same events
    events = list(c.responses.create(model="grok-4", input="again", stream=True, store=False))
    assert events[-1].type == "response.completed" and events[-1].response.store is False


def test_function_tools_round_trip(gw: Gw) -> None:
    c = gw.client()
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    r = c.responses.create(model="grok-4", input="Weather in Paris?", tools=tools)  # type: ignore[arg-type]
    assert r.tools and r.tools[0].name == "get_weather"  # type: ignore[union-attr]
    follow = c.responses.create(
        model="grok-4",
        previous_response_id=r.id,
        tools=tools,  # type: ignore[arg-type]
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
    )
    assert follow.status == "completed"
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="grok-4", input="x", tools=[{"type": "web_search"}])  # type: ignore[list-item]
    assert "web_search" in e.value.message


def test_retention_zero_keeps_nothing(gw: Gw) -> None:
    c = gw.client(None, SHORT_KEY)
    r = c.responses.create(model="grok-4", input="hi")
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)


def test_hostile_ids_and_fields_are_4xx(gw: Gw) -> None:
    assert gw.proc is not None
    h = {"Authorization": f"Bearer {DEMO_KEY}"}
    for bad in ("x", "resp_nowhere_" + "0" * 24, "resp_us-east-1_" + "z" * 24, "%00", "a" * 5000):
        assert httpx.get(f"{gw.proc.url}/v1/responses/{bad}", headers=h).status_code == 404
    r = httpx.post(
        f"{gw.proc.url}/v1/responses", headers=h, json={"model": "grok-4", "input": "x", "store": "yes"}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "store"
    r = httpx.post(f"{gw.proc.url}/v1/responses", headers=h, json={"model": "grok-4", "input": 5})
    assert r.status_code == 400


def test_stored_response_survives_a_restart(gw: Gw) -> None:
    r = gw.client("eu-west-1").responses.create(model="grok-4", input="keep me")
    gw.stop()
    gw.start()
    assert gw.client().responses.retrieve(r.id).output_text == r.output_text


# --- pass-through: a backend that implements /v1/responses itself (llama.cpp, vLLM, providers) -------------


class NativeBackend:
    """A loopback OpenAI-compatible server that answers /v1/responses natively and records what it got."""

    def __init__(self) -> None:
        import threading

        import uvicorn

        self.seen: list[dict[str, Any]] = []
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off", interface="asgi3"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until_up(f"http://127.0.0.1:{self.port}/v1/models")

    async def app(self, scope: dict[str, object], receive: object, send: object) -> None:
        import json

        path = scope["path"]
        body = b""
        while True:
            msg = await receive()  # type: ignore[operator]
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if path != "/v1/responses":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"object": "list", "data": []}'})  # type: ignore[operator]
            return
        req = json.loads(body)
        self.seen.append(req)
        resp = {
            "id": "resp_native_1",
            "object": "response",
            "created_at": 1,
            "status": "completed",
            "model": req["model"],
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "native answer", "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": 7,
                "output_tokens": 2,
                "total_tokens": 9,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "store": False,
        }
        if not req.get("stream"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,  # type: ignore[operator]
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(resp).encode()})  # type: ignore[operator]
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,  # type: ignore[operator]
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        events = [
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**resp, "status": "in_progress", "output": []},
            },
            {
                "type": "response.output_item.added",
                "sequence_number": 1,
                "output_index": 0,
                "item": {**resp["output"][0], "status": "in_progress", "content": []},
            },  # type: ignore[index, dict-item]
            {
                "type": "response.content_part.added",
                "sequence_number": 2,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
            {
                "type": "response.output_text.delta",
                "sequence_number": 3,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "native answer",
                "logprobs": [],
            },
            {"type": "response.completed", "sequence_number": 4, "response": resp},
        ]
        for ev in events:  # no [DONE]: the Responses API's stream ends with response.completed
            data = f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode()
            await send({"type": "http.response.body", "body": data, "more_body": True})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait_until_up(url: str) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gw, NativeBackend]]:
    backend = NativeBackend()
    tmp = tmp_path_factory.mktemp("responses-native")
    g = Gw(tmp)
    native_backend = f'{{ kind = "http", url = "http://127.0.0.1:{backend.port}/v1", responses = "native" }}'
    (tmp / "gateway.toml").write_text(config(native_backend))
    g.start()
    try:
        yield g, backend
    finally:
        g.stop()
        backend.stop()


def test_native_pass_through_keeps_state_at_the_gateway(native: tuple[Gw, NativeBackend]) -> None:
    gw, backend = native
    c = gw.client("us-east-1")
    first = c.responses.create(model="grok-4", input="hello")
    assert first.id.startswith("resp_us-east-1_") and first.output_text == "native answer"
    assert backend.seen[-1]["store"] is False and backend.seen[-1]["input"] == [
        {"type": "message", "role": "user", "content": "hello"}
    ]
    second = c.responses.create(model="grok-4", input="again", previous_response_id=first.id)
    sent = backend.seen[-1]
    assert "previous_response_id" not in sent and sent["store"] is False
    assert sent["input"][0]["content"] == "hello"
    assert sent["input"][-1] == {"type": "message", "role": "user", "content": "again"}
    assert c.responses.retrieve(second.id).previous_response_id == first.id
    with c.responses.stream(model="grok-4", input="stream it") as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert (
        final.id.startswith("resp_us-east-1_")
        and c.responses.retrieve(final.id).output_text == "native answer"
    )


def _poll(c: OpenAI, oid: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = c.responses.retrieve(oid)
        if r.status not in ("queued", "in_progress"):
            return r
        time.sleep(0.05)
    raise AssertionError("still running after 60 s")


@pytest.mark.parametrize(("region", "served"), [(None, "us-east-1"), ("eu-west-1", "eu-west-1")])
def test_background_runs_and_is_retrieved(gw: Gw, region: str | None, served: str) -> None:
    c = gw.client(region)
    r = c.responses.create(model="grok-4", input="What is the meaning of life?", background=True)
    assert r.id.startswith(f"resp_{served}_") and r.status == "queued" and r.background is True
    done = _poll(c, r.id)
    assert done.status == "completed" and f"in {served} " in done.output_text and done.background is True
    raw = c.responses.with_raw_response.retrieve(r.id)
    assert raw.headers["x-regiongate-region"] == served
    claims = unverified_claims(raw.headers["x-regiongate-receipt"])
    assert (claims["object"], claims["region"], claims["stored"]) == (r.id, served, served)
    follow = c.responses.create(model="grok-4", input="and?", previous_response_id=r.id)
    assert follow.id.split("_")[1] == served
    # Cancelling a finished one answers it as it is.
    assert c.responses.cancel(r.id).status == "completed"


def test_background_cancel_while_running_and_residency(gw: Gw) -> None:
    eu = gw.client("eu-west-1")
    r = eu.responses.create(
        model="slow-model", input="Tell me a long story.", background=True, max_output_tokens=400
    )
    assert r.status == "queued"
    assert eu.responses.retrieve(r.id).status == "queued"  # retrieved while it runs (2 tokens a second)
    with pytest.raises(openai.NotFoundError):  # another region's endpoint cannot cancel or read it
        gw.client("us-east-1").responses.cancel(r.id)
    cancelled = eu.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert gw.client().responses.retrieve(r.id).status == "cancelled"  # the global endpoint finds it
    # Cancelling what was not created in the background is refused; a foreground one cannot be cancelled.
    plain = eu.responses.create(model="grok-4", input="hi")
    with pytest.raises(openai.BadRequestError):
        eu.responses.cancel(plain.id)
    with pytest.raises(openai.BadRequestError):
        eu.responses.create(model="grok-4", input="hi", background=True, store=False)
    assert gw.proc is not None
    resp = httpx.post(
        gw.proc.url + "/v1/responses",
        json={"model": "grok-4", "input": "hi", "background": "yes"},
        headers={"Authorization": f"Bearer {DEMO_KEY}"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "background"


def test_background_survives_a_graceful_restart(gw: Gw) -> None:
    r = gw.client().responses.create(model="grok-4", input="hi", background=True)
    gw.stop()  # graceful: a request still running is finished and stored before the process exits
    gw.start()
    done = _poll(gw.client(), r.id)
    assert done.status == "completed" and "in us-east-1 " in done.output_text
