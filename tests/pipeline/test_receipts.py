"""``receipt verify`` accepts only the canonical encoding and says why it refuses (issue 12, item 5)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from regiongate.pipeline import receipts

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
