"""``receipt verify`` accepts only the canonical encoding and says why it refuses (issue 12, item 5)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from regiongate.core.labels import Route
from regiongate.core.tiers import Tier
from regiongate.pipeline import receipts
from regiongate.pipeline.exchange import Routed

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture
def signed() -> tuple[str, dict[str, object]]:
    key = receipts.SigningKey.generate()
    return receipts.sign(key, {"iss": "regiongate", "rid": "req_1"}), {"keys": [key.jwk]}


def _same_bytes_other_spelling(part: str) -> str:
    """The part with its last character swapped for one that decodes to the same bytes."""
    want = receipts.b64url_decode(part)
    for c in ALPHABET:
        alt = part[:-1] + c
        if alt != part and base64.urlsafe_b64decode(alt + "=" * (-len(alt) % 4)) == want:
            return alt
    raise AssertionError("every spelling differs")


def _respelled(token: str, part: int) -> str:
    parts = token.split(".")
    parts[part] = _same_bytes_other_spelling(parts[part])
    return ".".join(parts)


def test_verify_accepts_the_canonical_token(signed: tuple[str, dict[str, object]]) -> None:
    token, jwks = signed
    assert receipts.verify(token, jwks)["rid"] == "req_1"


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda t: t + "=", "padded"),
        (lambda t: t + "==", "padded"),
        (lambda t: _respelled(t, 2), "canonical"),  # the g -> h in the signature's last character
        (lambda t: t[:-1] + "+", "alphabet"),
        (lambda t: t + "AAA", "length"),
        (lambda t: _respelled(t, 0), "canonical"),
    ],
)
def test_verify_refuses_other_spellings_and_says_why(
    signed: tuple[str, dict[str, object]], mutate: Callable[[str], str], why: str
) -> None:
    token, jwks = signed
    bad = mutate(token)
    assert bad != token
    with pytest.raises(receipts.ReceiptError, match=why):
        receipts.verify(bad, jwks)


def test_the_cli_says_why_it_refuses(signed: tuple[str, dict[str, object]], tmp_path: Path) -> None:
    token, jwks = signed
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    cmd = [sys.executable, "-m", "regiongate", "receipt", "verify", "--jwks", str(path)]
    ok = subprocess.run([*cmd, token], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*cmd, token + "="], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "padded" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


# --- v2: the receipts of one loop iteration under one signature ---------------------------------------
def _claims(i: int) -> dict[str, object]:
    return {"iss": "regiongate", "rid": f"req_{i}", "region": "eu-west-1"}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 9, 33])
def test_every_receipt_of_a_batch_verifies_alone_to_its_own_claims(n: int) -> None:
    key = receipts.SigningKey.generate()
    tokens = receipts.sign_batch(key, [orjson.dumps(_claims(i)) for i in range(n)])
    assert len({t.split(".")[-1] for t in tokens}) == 1  # one signature
    for i, token in enumerate(tokens):
        assert token.count(".") == 3
        assert receipts.verify(token, {"keys": [key.jwk]}) == _claims(i)
        assert receipts.receipt_kid(token) == key.kid
    (one,) = receipts.sign_batch(key, [orjson.dumps(_claims(0))])
    assert one.count(".") == 2 and receipts.verify(one, [key.jwk]) == _claims(0)  # a batch of one is v1


def test_a_batched_receipt_refuses_every_edit_and_says_why() -> None:
    key = receipts.SigningKey.generate()
    jwks = {"keys": [key.jwk]}
    a, b, c = receipts.sign_batch(key, [orjson.dumps(_claims(i)) for i in range(3)])
    h, p, x, s = a.split(".")
    proof = receipts.b64url_decode(x)
    flipped = bytes([1 - proof[0]]) + proof[1:]
    edited = receipts.b64url(orjson.dumps({**_claims(0), "region": "us-east-1"}))
    root_h = receipts.merkle([receipts._leaf(orjson.dumps(_claims(i))) for i in range(3)])[0]
    cases = {
        f"{h}.{edited}.{x}.{s}": "altered or forged",  # other claims
        f"{h}.{p}.{b.split('.')[2]}.{s}": "altered or forged",  # another receipt's proof
        f"{h}.{p}.{receipts.b64url(flipped)}.{s}": "altered or forged",  # the sibling on the other side
        f"{h}.{p}.{receipts.b64url(proof[:-1])}.{s}": "33-byte steps",
        f"{h}.{p}.{receipts.b64url(bytes([2]) + proof[1:])}.{s}": "other than 0",
        f"{h}.{p}.{receipts.b64url(proof * 17)}.{s}": "at most 32",
        f"{receipts._protected(key.kid)}.{p}.{x}.{s}": "typ",  # a proof under a v1 header
        # the batch's signature is a valid JWS over the root: never a v1 receipt
        f"{h}.{receipts.b64url(root_h)}.{s}": "typ",
        f"{h}.{p}.{x}.{s}.{s}": "four",
    }
    for bad, why in cases.items():
        with pytest.raises(receipts.ReceiptError, match=why):
            receipts.verify(bad, jwks)
    assert receipts.verify(c, jwks) == _claims(2)


def _inbound(i: int, window: bool = False) -> Any:
    principal = SimpleNamespace(team="acme", key_id="k1")
    return SimpleNamespace(
        request_id=f"req_{i}",
        principal=principal,
        model="grok-4",
        endpoint="global",
        tier=Tier.DEFAULT,
        client_request_id=None,
        receipt_window=window,
    )


async def test_the_hook_signs_one_loop_iterations_receipts_once_and_a_lone_one_as_v1() -> None:
    key = receipts.SigningKey.generate()
    hook = receipts.ReceiptHook(key, {"eu-west-1": "eu"})
    started = asyncio.Event()

    async def respond(i: int) -> str:
        await started.wait()  # every task resumes in the same loop iteration
        routed = Routed(200, "application/json", "eu-west-1", Route.NEAREST, "b1")
        hook.after(_inbound(i), routed)
        assert routed.ready is not None and not routed.headers  # waits for the end of the iteration
        await routed.ready
        (token,) = [v for k, v in routed.headers if k == receipts.HEADER]
        return token

    tasks = [asyncio.create_task(respond(i)) for i in range(6)]
    await asyncio.sleep(0)
    started.set()
    tokens = await asyncio.gather(*tasks)
    assert (hook.signatures, hook.receipts) == (1, 6)
    assert [receipts.verify(t, [key.jwk])["rid"] for t in tokens] == [f"req_{i}" for i in range(6)]
    assert all(t.count(".") == 3 for t in tokens)
    assert (await respond(9)).count(".") == 2  # alone in its iteration: v1
    assert (hook.signatures, hook.receipts) == (2, 7)


async def test_a_request_cancelled_while_its_batch_is_signed_leaves_the_others_theirs() -> None:
    key = receipts.SigningKey.generate()
    hook = receipts.ReceiptHook(key, {})
    routed = [Routed(200, "application/json", "eu-west-1", Route.NEAREST, "b1") for _ in range(3)]
    for i, r in enumerate(routed):
        hook.after(_inbound(i), r)
    assert routed[1].ready is not None
    routed[1].ready.cancel()  # its client went away
    await asyncio.sleep(0)  # the end of this iteration: the batch is signed
    for r in (routed[0], routed[2]):
        assert r.ready is not None and r.ready.done() and not r.ready.cancelled()
        (token,) = [v for k, v in r.headers if k == receipts.HEADER]
        receipts.verify(token, [key.jwk])
    assert (hook.signatures, hook.receipts) == (1, 3)


class _Clock:
    """The running loop's clock, moved by the test: a window's timer fires only when the test says so."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.now = loop.time()
        self.loop = loop

    def __enter__(self) -> _Clock:
        self.real = self.loop.time
        self.loop.time = lambda: self.now  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.time = self.real  # type: ignore[method-assign]


def _routed() -> Routed:
    return Routed(200, "application/json", "eu-west-1", Route.NEAREST, "b1")


def _token(routed: Routed) -> str:
    (token,) = [v for k, v in routed.headers if k == receipts.HEADER]
    return token


async def _iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_grpc_unary_receipts_near_in_time_share_a_signature_and_far_apart_do_not_wait() -> None:
    key = receipts.SigningKey.generate()
    hook = receipts.ReceiptHook(key, {"eu-west-1": "eu"}, window_s=0.002)
    with _Clock(asyncio.get_running_loop()) as clock:
        alone = _routed()
        hook.after(_inbound(0, window=True), alone)  # none came before it: no reason to wait
        await _iterations(1)
        assert alone.ready is not None and alone.ready.done() and _token(alone).count(".") == 2
        first, second = _routed(), _routed()
        clock.now += 0.0005
        hook.after(_inbound(1, window=True), first)  # 0.5 ms after the last: the next is likely near
        await _iterations(3)  # grpc.aio's next call arrives a few loop wake-ups later
        clock.now += 0.0015
        hook.after(_inbound(2, window=True), second)
        await _iterations(3)
        assert first.ready is not None and not first.ready.done()  # still inside its 2 ms
        clock.now += 0.0005  # the window of the batch's first response is over: signed now
        await first.ready
        assert second.ready is not None and second.ready.done()
        assert (hook.signatures, hook.receipts) == (2, 3)
        clock.now += 0.010  # quiet for longer than the window: signed at the end of its iteration
        late = _routed()
        hook.after(_inbound(3, window=True), late)
        await _iterations(1)
        assert late.ready is not None and late.ready.done() and _token(late).count(".") == 2
    tokens = [_token(first), _token(second)]
    assert [receipts.verify(t, [key.jwk])["rid"] for t in tokens] == ["req_1", "req_2"]
    assert tokens[0].split(".")[-1] == tokens[1].split(".")[-1]
    assert receipts.verify(_token(late), [key.jwk])["rid"] == "req_3"


async def test_a_response_that_may_not_wait_brings_the_windowed_ones_forward() -> None:
    key = receipts.SigningKey.generate()
    hook = receipts.ReceiptHook(key, {}, window_s=60.0)
    with _Clock(asyncio.get_running_loop()):
        hook.after(_inbound(9, window=True), _routed())  # the one before: the next waits
        await _iterations(1)
        waiting, plain = _routed(), _routed()
        hook.after(_inbound(0, window=True), waiting)
        await _iterations(3)
        hook.after(_inbound(1), plain)  # a stream or a REST response: signed at the end of its iteration
        await _iterations(1)
        assert waiting.ready is not None and waiting.ready.done()
        assert plain.ready is not None and plain.ready.done()
    assert (hook.signatures, hook.receipts) == (2, 3)
    for r in (waiting, plain):
        receipts.verify(_token(r), [key.jwk])


async def test_a_full_window_is_signed_without_waiting_for_its_clock() -> None:
    key = receipts.SigningKey.generate()
    hook = receipts.ReceiptHook(key, {}, window_s=60.0)
    with _Clock(asyncio.get_running_loop()):
        hook.after(_inbound(99, window=True), _routed())  # the one before: the next ones wait
        await _iterations(1)
        routed = [_routed() for _ in range(receipts.WINDOW_ENOUGH)]
        for i, r in enumerate(routed):
            hook.after(_inbound(i, window=True), r)
            await _iterations(1)
        assert all(r.ready is not None and r.ready.done() for r in routed)
    assert (hook.signatures, hook.receipts) == (2, 1 + receipts.WINDOW_ENOUGH)


async def test_without_a_window_the_flag_changes_nothing() -> None:
    hook = receipts.ReceiptHook(receipts.SigningKey.generate(), {})  # receipt_window_us = 0
    for i in range(2):
        routed = _routed()
        hook.after(_inbound(i, window=True), routed)
        await _iterations(1)
        assert routed.ready is not None and routed.ready.done() and _token(routed).count(".") == 2


def test_the_cli_verifies_a_batched_receipt_offline(tmp_path: Path) -> None:
    key = receipts.SigningKey.generate()
    token = receipts.sign_batch(key, [orjson.dumps(_claims(i)) for i in range(5)])[3]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [key.jwk]}))
    cmd = [sys.executable, "-m", "regiongate", "receipt", "verify", "--jwks", str(path)]
    ok = subprocess.run([*cmd, token], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and f"signed by key {key.kid} (in a batch" in ok.stdout, ok.stderr
    assert "req_3" in ok.stdout
    h, _, x, s = token.split(".")
    other = receipts.b64url(orjson.dumps(_claims(4)))
    bad = subprocess.run(
        [*cmd, f"{h}.{other}.{x}.{s}"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 1 and "altered or forged" in bad.stderr and "Traceback" not in bad.stderr


def test_libsodium_signs_what_openssl_would() -> None:
    """The signing key signs with libsodium; Ed25519 is deterministic, so the bytes are OpenSSL's own."""
    key = receipts.SigningKey.generate()
    for data in (b"", b"x", b"header.payload" * 40):
        assert key.sign(data) == key.private.sign(data)
    token = receipts.sign(key, {"rid": "r1"})
    header, payload, signature = token.split(".")
    expected = key.private.sign(f"{header}.{payload}".encode("ascii"))
    assert receipts.b64url_decode(signature) == expected
