"""Processing receipts: Ed25519 JWS compact tokens, the JWK Set, rotation, and offline verification."""

from __future__ import annotations

import io
import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from regiongate.app.cli import main
from regiongate.pipeline import receipts
from regiongate.pipeline.receipts import (
    KeyRing,
    ReceiptError,
    SigningKey,
    b64url,
    b64url_decode,
    sign,
    verify,
)
from tests.support.control import chat, control_config, http, poll
from tests.support.procs import DEMO_KEY

CLAIMS = {
    "rid": "req_1",
    "team": "acme",
    "model": "grok-4",
    "endpoint": "region:eu-west-1",
    "region": "eu-west-1",
}


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037, appendix A.2/A.3: the example Ed25519 public key and its JWK thumbprint.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    jwk = receipts.public_jwk(Ed25519PublicKey.from_public_bytes(b64url_decode(x)))
    assert jwk["kid"] == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["x"]) == ("OKP", "Ed25519", "EdDSA", x)


def test_sign_and_verify_and_every_way_to_fail() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    jwks = {"keys": [key.jwk]}
    token = sign(key, CLAIMS)
    head = json.loads(b64url_decode(token.split(".")[0]))
    assert head == {"alg": "EdDSA", "kid": key.kid, "typ": receipts.TYP}
    assert verify(token, jwks) == CLAIMS
    assert verify(token + "\n", [key.jwk]) == CLAIMS  # a list of keys works too; whitespace is ignored

    h, p, s = token.split(".")
    edited = b64url(json.dumps({**CLAIMS, "region": "us-east-1"}).encode())
    cases = {
        f"{h}.{edited}.{s}": "altered or forged",
        sign(other, CLAIMS): "unknown key",
        "a.b": "three dot-separated parts",
        f"{b64url(b'{not json')}.{p}.{s}": "header is not JSON",
        f"{b64url(json.dumps({'alg': 'none', 'kid': key.kid}).encode())}.{p}.": "alg EdDSA",
        f"{h}.{p}.{s[:-4]}AAAA": "altered or forged",
    }
    for bad, reason in cases.items():
        with pytest.raises(ReceiptError, match=reason):
            verify(bad, jwks)


def test_rotation_keeps_earlier_receipts_verifiable(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    first = ring.load_or_create()
    assert ring.load_or_create().kid == first.kid  # stable across restarts
    assert oct((tmp_path / "keys" / f"{first.kid}.key").stat().st_mode & 0o777) == "0o600"
    old_receipt = sign(first, CLAIMS)
    second = ring.rotate()
    assert second.kid != first.kid and ring.current_kid() == second.kid
    assert not (tmp_path / "keys" / f"{first.kid}.key").exists()  # the old private key is gone
    jwks = {"keys": ring.public_keys()}
    assert {k["kid"] for k in jwks["keys"]} == {first.kid, second.kid}
    assert verify(old_receipt, jwks) == CLAIMS
    assert verify(sign(second, CLAIMS), jwks) == CLAIMS
    assert KeyRing(tmp_path / "keys").load_or_create().kid == second.kid


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    kids: list[str] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        kids.append(KeyRing(tmp_path / "keys").load_or_create().kid)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(kids) == 4 and len(set(kids)) == 1
    assert len(list((tmp_path / "keys").glob("*.key"))) == 1


def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, stdin: str = ""
) -> tuple[int, str, str]:
    """``regiongate <args>`` in-process, as a shell runs it (stdin included)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_gateway_receipts_survive_rotation_and_verify_offline(
    start_gateway: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = control_config(refresh_s=0.3)
    gw = start_gateway(text)
    config = tmp_path / "cli.toml"
    config.write_text(text)
    monkeypatch.setenv("REGIONGATE_DATA_DIR", str(tmp_path / "data"))  # the gateway's data dir (see conftest)

    before = chat(gw, DEMO_KEY, "grok-4", host="eu-west-1.localhost", stream=True)
    old_receipt = before.headers[receipts.HEADER]
    old_kid = json.loads(b64url_decode(old_receipt.split(".")[0]))["kid"]

    code, _, err = cli(capsys, monkeypatch, "receipt", "rotate", "--config", str(config))
    assert code == 0, err
    new_kid = KeyRing(tmp_path / "data" / "receipt-keys").current_kid()
    assert new_kid and new_kid != old_kid

    def signed_with_new_key() -> bool:
        token = chat(gw, DEMO_KEY, "grok-4").headers[receipts.HEADER]
        return json.loads(b64url_decode(token.split(".")[0]))["kid"] == new_kid

    poll(signed_with_new_key, timeout=10)  # the running gateway switched without a restart
    jwks = http().get(gw.url + receipts.JWKS_PATH).json()
    assert {k["kid"] for k in jwks["keys"]} == {old_kid, new_kid}
    assert verify(old_receipt, jwks)["region"] == "eu-west-1"

    # Offline, with a saved copy of the key set: valid, and a forged copy is refused.
    saved = tmp_path / "keys.json"
    saved.write_text(json.dumps(jwks))
    code, out, err = cli(capsys, monkeypatch, "receipt", "verify", old_receipt, "--jwks", str(saved))
    assert code == 0, err
    assert f"signed by key {old_kid}" in out and "eu-west-1 (data zone eu)" in out
    assert "region:eu-west-1" in out and "pinned" in out
    # Without --jwks: the public keys in the local key directory; the token read from stdin.
    code, out, _ = cli(
        capsys, monkeypatch, "receipt", "verify", "--json", "--config", str(config), stdin=old_receipt
    )
    assert code == 0 and json.loads(out)["team"] == "demo"
    h, p, s = old_receipt.split(".")
    forged = b64url(b64url_decode(p).replace(b"eu-west-1", b"us-east-1"))
    code, _, err = cli(capsys, monkeypatch, "receipt", "verify", f"{h}.{forged}.{s}", "--jwks", str(saved))
    assert code == 1 and "altered or forged" in err
    code, _, err = cli(
        capsys, monkeypatch, "receipt", "verify", old_receipt, "--jwks", str(tmp_path / "nope")
    )
    assert code == 2 and "cannot read a JWK Set" in err
