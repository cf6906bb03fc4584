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


def _inbound(i: int) -> Any:
    principal = SimpleNamespace(team="acme", key_id="k1")
    return SimpleNamespace(
        request_id=f"req_{i}",
        principal=principal,
        model="grok-4",
        endpoint="global",
        tier=Tier.DEFAULT,
        client_request_id=None,
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
